"""Every option of every config group, declared once: its type, its allowed range and what it means.

The YAML files under ``conf/`` stay the user-facing API (defaults and longer comments); this module is where the
type, range and one-line meaning of each key live. :func:`check_options` walks a composed config, checks every
value against its declaration and rejects unknown keys (with the closest known name), before anything heavy
starts: a bad value ends in one line ``error: <option>: <problem> -> <fix>`` (exit status 2) and the config tree is
not printed first. Checks that involve several options (``pruning.rounds=0`` with a target sparsity, a learning
rate of 0 for a method that trains) are in :func:`check_relations`; checks that need files or libraries (the
benchmark files, bitsandbytes, a GPU) stay next to the code that uses them and run right after.

``tests/test_options.py`` composes every shipped config file and asserts each of its keys is declared here.

(Over ~400 lines on purpose: most of it is the one table of every option, which belongs in one place.)

"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rigsa_lightning.adapters.registry import find_method, method_names
from rigsa_lightning.adapters.rigsa.constants import (
    FORWARD_MODES,
    GATES,
    GRAD_MODES,
    INIT_SCHEMES,
    KEEP_INIT,
    PRUNED_VALUES,
    STORAGES,
)
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.pruning.schedule import CRITERIA, KEEP_OF, REWINDS, SCOPES, SCORES, SIGN_REFERENCES
from rigsa_lightning.training.schedule import ADAMW_IMPLS

# Groups whose extra keys are handed to a library as they are (any key the library accepts is allowed).
PASSTHROUGH = ("trainer.",)
# Benchmark names that per-task options (eval.limit, eval.num_fewshot, ...) may name.
TASKS = ("piqa", "hellaswag", "gsm8k")


@dataclass(frozen=True)
class Option:
    """The declaration of one option: its kind, allowed values and meaning.

    ``kind`` is one of ``int``, ``float`` (ints accepted), ``bool``, ``str``, ``choice``, ``str_list``,
    ``float_list``, ``per_task`` (an int or a ``{task: int|null}`` mapping), ``number`` (int or float) and ``any``
    (type left to the library that reads it). ``low``/``high`` bound numbers (``open_low``/``open_high``: strict),
    ``choices`` lists the values of a ``choice``, ``null`` allows null, ``length`` fixes a list's length,
    ``example`` is a valid value quoted in error messages.
    """

    kind: str
    meaning: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[Any, ...] = ()
    null: bool = False
    length: int | None = None
    example: str | None = None

    def expectation(self) -> str:
        """What a valid value looks like, in words (used in error messages)."""
        if self.kind == "choice":
            text = "one of " + " | ".join(str(c) for c in self.choices)
        elif self._positive():
            text = f"a positive {'integer' if self.kind in ('int', 'per_task') else 'number'}"
        elif self.kind in ("int", "float", "number", "per_task", "float_list"):
            noun = {
                "int": "an integer",
                "float": "a number",
                "number": "a number",
                "per_task": "an integer (or {task: integer})",
                "float_list": f"a list of {self.length or 'any number of'} numbers",
            }[self.kind]
            text = noun + self._range_text()
        else:
            text = {
                "bool": "true or false",
                "str": "a string",
                "str_list": "a list of strings",
                "any": "a value",
            }[self.kind]
        return text + (" or null" if self.null else "")

    def _positive(self) -> bool:
        """A lower bound that reads best as "positive" (integers >= 1, numbers > 0, no upper bound)."""
        if (
            self.high is not None
            or self.low is None
            or self.kind not in ("int", "per_task", "float", "number")
        ):
            return False
        if self.kind in ("int", "per_task"):
            return self.low == 1 and not self.open_low
        return self.low == 0 and self.open_low

    def _interval(self) -> str:
        """``[low, high)`` style interval of a two-sided range."""
        return f"{'(' if self.open_low else '['}{_fmt(self.low)}, {_fmt(self.high)}{')' if self.open_high else ']'}"

    def _range_text(self) -> str:
        if self._positive():
            return " positive"
        if self.low is not None and self.high is not None:
            return f" in {self._interval()}"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {_fmt(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {_fmt(self.high)}")
        return (" " + " and ".join(parts)) if parts else ""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, as the problem part of the one-line error (None when it is allowed)."""
        if value is None:
            return None if self.null or self.kind == "any" else "must not be null"
        check = getattr(self, f"_check_{self.kind}")
        return check(value)

    def _check_any(self, value: Any) -> str | None:
        return None

    def _check_bool(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"

    def _check_str(self, value: Any) -> str | None:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"

    def _check_choice(self, value: Any) -> str | None:
        return None if value in self.choices and type(value) is not bool else f"unknown value {value!r}"

    def _check_int(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        return self._check_range(value)

    def _check_float(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if math.isnan(value):
            return (
                "nan is outside " + self._interval() if self.high is not None else "must be a number, not nan"
            )
        return self._check_range(value)

    _check_number = _check_float

    def _check_range(self, value: float) -> str | None:
        too_low = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if not (too_low or too_high):
            return None
        if self.low is not None and self.high is not None:
            return f"{_fmt(value)} is outside {self._interval()}"
        return f"must be{self._range_text()}, got {_fmt(value)}"

    def _check_str_list(self, value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return f"must be a list of strings, got {value!r}"
        return None

    def _check_float_list(self, value: Any) -> str | None:
        if not isinstance(value, (list, tuple)):
            return f"must be a list, got {value!r}"
        if self.length is not None and len(value) != self.length:
            return f"must have {self.length} entries, got {list(value)!r}"
        for v in value:
            if self._check_float(v):
                return f"entries must be numbers{self._range_text()}, got {list(value)!r}"
        return None

    def _check_per_task(self, value: Any) -> str | None:
        located = self.locate_per_task(value)
        return None if located is None else (f"{located[0]}: " if located[0] else "") + located[1]

    def locate_per_task(self, value: Any) -> tuple[str, str] | None:
        """A per-task value's problem as ``(task, problem)`` (task "" when the whole value is wrong), or None."""
        if not isinstance(value, Mapping):
            problem = self._check_int(value)
            return None if problem is None else ("", problem)
        for task, entry in value.items():
            if task not in TASKS:
                return "", f"names no benchmark ({task!r})"
            problem = None if entry is None else self._check_int(entry)
            if problem:
                return str(task), problem
        return None


def _fmt(x: Any) -> str:
    """A bound or value as a user typed it (2, 0.5, 1e-06)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x)) if not isinstance(x, bool) else repr(x)
    return repr(x)


def _int(
    meaning: str,
    low: float | None = None,
    high: float | None = None,
    null: bool = False,
    example: str | None = None,
) -> Option:
    return Option("int", meaning, low=low, high=high, null=null, example=example)


def _float(
    meaning: str,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    null: bool = False,
    example: str | None = None,
) -> Option:
    return Option(
        "float",
        meaning,
        low=low,
        high=high,
        open_low=open_low,
        open_high=open_high,
        null=null,
        example=example,
    )


def _bool(meaning: str, null: bool = False) -> Option:
    return Option("bool", meaning, null=null)


def _str(meaning: str, null: bool = False) -> Option:
    return Option("str", meaning, null=null)


def _choice(meaning: str, *choices: Any, null: bool = False) -> Option:
    return Option("choice", meaning, choices=tuple(choices), null=null)


def _per_task(meaning: str, low: float = 0, null: bool = False) -> Option:
    return Option("per_task", meaning, low=low, null=null)


_SEED = (0, 2**32 - 1)
_TARGETS = "module-name suffixes (or 're:<regex>') of the linear layers to adapt"

# fmt: off
_FIXED: dict[str, Option] = {
    # ---------------------------------------------------------------- top level (train.yaml, evaluate.yaml)
    "name": _str("short name of the run (run folder, W&B run name)"),
    "task_name": _str("name of the command's task (log and W&B grouping)"),
    "seed": _int("global seed (data order, dropout, ...)", *_SEED, example="42"),
    "ckpt_path": _str(
        "a .ckpt file to start a new run from, or a RIGSA run's ticket.ckpt.xz (its winning ticket: the final "
        "retraining at this run's final-phase options)",
        null=True,
    ),
    "resume": _str("a run folder to continue from its checkpoints/last.ckpt", null=True),
    "skip_completed": _bool("rerun of a study: skip completed job folders, continue interrupted ones"),
    "threads": _int("torch CPU threads (null: torch's default)", 1, null=True),
    "print_config": _bool("print the resolved config tree at start"),
    "lm_head": _choice("where the LM head runs in the training loss", "scored", "full"),
    "checkpoint.enabled": _bool("write checkpoints/last.ckpt at every epoch end"),
    "checkpoint.every_n_train_steps": _int("also checkpoint every N steps", 1, null=True),
    "checkpoint.ticket": _bool("pack the post-prune checkpoint of RIGSA's last round into ticket.ckpt.xz"),
    "stop_at.val_acc": _float("stop once val/acc reaches this fraction (matched accuracy)", 0, 1,
                              open_low=True, null=True),
    "compile.enabled": _bool("torch.compile the model's forward"),
    "compile.backend": _str("torch.compile backend (inductor, aot_eager, eager, ...)"),
    "compile.dynamic": _bool("torch.compile with dynamic shapes"),
    "optim.scheduler": _choice("learning-rate schedule", "cosine", "constant", "linear"),
    "optim.warmup_ratio": _float("fraction of the steps spent in linear warmup", 0, 1, open_high=True, example="0.1"),
    "optim.min_lr_ratio": _float("final learning rate of the decay, as a fraction of lr", 0, 1),
    "optim.restart_per_round": _bool("restart the schedule at every pruning event"),
    "optim.betas": Option("float_list", "AdamW's (beta1, beta2)", low=0, high=1, open_high=True, length=2),
    "optim.eps": _float("AdamW's epsilon", 0, open_low=True),
    "optim.impl": _choice("AdamW implementation", *ADAMW_IMPLS),
    "optim.grad_clip": _float("gradient-norm clipping (0 or null: off)", 0, null=True),
    "adapter_path": _str("an exported adapter folder to evaluate (null: the model itself)", null=True),
    "merge_to": _str("also write the merged plain model to this folder", null=True),
    "textual_mnist": _bool("score Textual MNIST too"),
    "export.peft": _bool("also write adapter_peft/: the gated adapter as PEFT SHiRA folder(s)"),
    # ---------------------------------------------------------------- paths
    "paths.root_dir": _str("project root (outputs are written below it)"),
    "paths.output_dir": _str("where run folders are created"),
    "paths.cache_dir": _str("cache of converted models and tokenised data"),
    "paths.run_dir": _str("this run's folder (set by Hydra)"),
    # ---------------------------------------------------------------- model
    "model.name_or_path": _str("a Hugging Face causal LM id, a local folder, embedded:<name> or tiny"),
    "model.dtype": _choice("dtype of the base weights", "float32", "bfloat16", "float16"),
    "model.trust_remote_code": _bool("allow the model repository's own code"),
    "model.gradient_checkpointing": _bool("recompute activations in the backward (less memory)"),
    "model.attn_implementation": _str("attention kernel passed to transformers (sdpa, eager, ...)"),
    "model.tiny.hidden_size": _int("tiny random model: hidden size", 1),
    "model.tiny.intermediate_size": _int("tiny random model: MLP size", 1),
    "model.tiny.num_hidden_layers": _int("tiny random model: decoder blocks", 1),
    "model.tiny.num_attention_heads": _int("tiny random model: attention heads", 1),
    "model.tiny.num_key_value_heads": _int("tiny random model: key/value heads", 1),
    "model.tiny.max_position_embeddings": _int("tiny random model: context length", 1),
    "model.tiny.seed": _int("tiny random model: weight seed", *_SEED),
    # ---------------------------------------------------------------- data (Textual MNIST)
    "data.source": _choice("the task's data (chat: your own JSONL/Parquet)", "digits", "mnist5k", "mnist", "chat"),
    "data.path": _str("local data: MNIST files for source=mnist, the chat file or folder for source=chat", null=True),
    "data.hub_id": _str("source=chat: a hub dataset id (instead of data.path)", null=True),
    "data.max_length": _int("source=chat: longest example in tokens (a longer one is an error)", 2),
    "data.resolution": _int("downsample the images to NxN (null: native size)", 1, null=True),
    "data.levels": _int("pixel quantisation levels", 2, 256),
    "data.separator": _str("text written between the pixels of a row"),
    "data.train_size": _int("training examples (null: all that remain)", 1, null=True),
    "data.val_size": _int("validation examples", 1, null=True),
    "data.test_size": _int("test examples (null: the official test split)", 1, null=True),
    "data.seed": _int("seed of the split selection", *_SEED),
    "data.batch_size": _int("training batch size", 1),
    "data.eval_batch_size": _int("validation/test/generation batch size", 1),
    "data.num_workers": _int("DataLoader worker processes", 0),
    "data.system_prompt": _str("system turn of the chat prompt (null: the template's default)", null=True),
    "data.prompt": _str("the question after the grid"),
    "data.supervise_eos": _bool("also train on the end-of-turn token"),
    "data.cache": _bool("cache the tokenised splits"),
    "data.length_bucketing": _bool("group similar lengths into batches"),
    "data.gen_max_new_tokens": _int("greedy tokens generated for gen_acc (chat: at most, for exact match)", 1),
    # ---------------------------------------------------------------- adapter (every method)
    "adapter.targets": Option("str_list", _TARGETS),
    "adapter.lr": _float("learning rate of the adapter's weights", 0, example="1e-3"),
    "adapter.weight_decay": _float("decoupled AdamW weight decay of the adapter's weights", 0, example="1.0"),
    "adapter.seed": _int("seed of the adapter's initialisation", *_SEED),
    "adapter.init": _choice("ΔW distribution", *INIT_SCHEMES),
    "adapter.init_std": _float("standard deviation of ΔW for init=normal", 0, open_low=True),
    "adapter.alpha_init": _float("initial value of the gate alpha", example="1e-6"),
    "adapter.gate": _choice("gate granularity", *GATES),
    "adapter.forward_mode": _choice("how W0 + alpha*ΔW is applied", *FORWARD_MODES),
    "adapter.alpha_lr": _float("learning rate of the gates", 0),
    "adapter.density": _float("initial mask density (random_mask: null = the pruning schedule's final density)",
                              0, 1, open_low=True, null=True),
    "adapter.mask_seed": _int("seed of random masks", *_SEED),
    "adapter.density_from": _str("random_mask only: a rigsa run folder (or exported adapter) whose final mask's "
                                 "per-matrix counts the random mask keeps (the random ticket)", null=True),
    "adapter.keep_init": _choice("how the initial ΔW is kept for rewinding", *KEEP_INIT),
    "adapter.storage": _choice("storage of a sparse ΔW", *STORAGES),
    "adapter.sparse_grad": _choice("weight gradient of the sparse storage", *GRAD_MODES),
    "adapter.r": _int("LoRA rank", 1),
    "adapter.lora_alpha": _float("LoRA scaling numerator (scale = lora_alpha / r)", 0, open_low=True),
    "adapter.dropout": _float("LoRA dropout", 0, 1, open_high=True),
    "adapter.quant.type": _choice("4-bit data type of the frozen base", "nf4", "fp4"),
    "adapter.quant.double_quant": _bool("quantise the per-block scales too"),
    "adapter.quant.compute_dtype": _choice(
        "dtype of the dequantised matmuls", "auto", "bfloat16", "float32", "float16"
    ),
    "adapter.quant.storage_dtype": _choice("container dtype of the packed 4-bit weights",
                                           "uint8", "float32", "bfloat16", "float16"),
    "adapter.cpu_avx512bf16_fix": _bool("keep bitsandbytes' CPU inference repacking off (keep true)"),
    "adapter.kbit_prepare": _choice("k-bit model preparation", "minimal", "peft"),
    # ---------------------------------------------------------------- pruning (iterative magnitude pruning)
    "pruning.enabled": _bool("prune on epoch boundaries"),
    "pruning.rounds": _int("number of prune events", 0, example="1"),
    "pruning.epochs_per_round": _int("training epochs before each prune", 1),
    "pruning.final_epochs": _int("retraining epochs after the last prune (the epochs, without pruning)", 0),
    "pruning.round_lr": _float("peak learning rate of the adapter's weights in the pruning rounds "
                               "(null: adapter.lr)", 0, open_low=True, null=True, example="3e-4"),
    "pruning.final_lr": _float("peak learning rate of the adapter's weights in the final retraining, or in the only "
                               "phase of a method without rounds (null: adapter.lr)", 0, open_low=True, null=True,
                               example="3e-3"),
    "pruning.sparsity": _float("final fraction of ΔW pruned", 0, 1, open_high=True, null=True),
    "pruning.densities": Option("float_list", "cumulative density after each round", low=0, high=1,
                                open_low=True, null=True),
    "pruning.keep_fraction": _float("fraction kept at each round", 0, 1, open_low=True, null=True),
    "pruning.keep_of": _choice("what keep_fraction applies to", *KEEP_OF),
    "pruning.criterion": _choice("prune candidates", *CRITERIA),
    "pruning.score": _choice("ranking score", *SCORES),
    "pruning.scope": _choice("one threshold per matrix or one over all", *SCOPES),
    "pruning.sign_reference": _choice("sign reference of sign_magnitude", *SIGN_REFERENCES),
    "pruning.rewind": _choice("survivors after a prune", *REWINDS),
    "pruning.pruned_value": _choice("value of pruned entries", *PRUNED_VALUES),
    "pruning.reset_alpha": _bool("reset alpha to alpha_init after each prune"),
    "pruning.reset_optimizer": _bool("drop the adapters' optimizer state after each prune"),
    # ---------------------------------------------------------------- trainer (Lightning; extra keys pass through)
    "trainer.accelerator": _str("Lightning accelerator (cpu, gpu, auto)"),
    "trainer.devices": Option("any", "Lightning devices (a count, a list or auto)"),
    "trainer.strategy": Option("any", "Lightning strategy (auto, ddp, fsdp, ...)"),
    "trainer.precision": Option("any", "Lightning precision (auto, bf16-mixed, 32-true, ...)"),
    "trainer.max_epochs": _int("epochs (null: from the pruning schedule)", 1, null=True),
    "trainer.max_steps": _int("step limit (-1: none)", -1),
    "trainer.limit_train_batches": Option("number", "batches per training epoch (int) or fraction", low=0,
                                          null=True),
    "trainer.limit_val_batches": Option("number", "batches per validation (int) or fraction", low=0, null=True),
    "trainer.val_check_interval": Option("number", "validate every N steps (int) or fraction of an epoch",
                                         low=0, open_low=True, null=True),
    "trainer.check_val_every_n_epoch": _int("validate every N epochs", 1, null=True),
    "trainer.log_every_n_steps": _int("logging interval in steps", 1),
    "trainer.accumulate_grad_batches": _int("gradient accumulation", 1),
    "trainer.num_sanity_val_steps": _int("sanity validation batches before training (-1: all)", -1),
    "trainer.deterministic": Option("any", "Lightning's deterministic flag (true, false or warn)"),
    "trainer.enable_progress_bar": _bool("show the progress bar"),
    # ---------------------------------------------------------------- logger
    "logger.type": _choice("experiment logger", "wandb", "csv", "none"),
    "logger.project": _str("W&B project"),
    "logger.entity": _str("W&B entity", null=True),
    "logger.group": _str("W&B group", null=True),
    "logger.tags": Option("str_list", "W&B tags"),
    "logger.mode": _choice("W&B mode", "auto", "online", "offline", "disabled"),
    # ---------------------------------------------------------------- eval (forgetting)
    "eval.enabled": _bool("measure forgetting before and after training"),
    "eval.tasks": Option("str_list", "benchmarks to score (piqa, hellaswag, gsm8k)"),
    "eval.num_fewshot": _per_task("few-shot examples per benchmark"),
    "eval.limit": _per_task("items per benchmark (null: the full split)", low=1, null=True),
    "eval.subset_seed": _int("seed of the item subsets", *_SEED),
    "eval.scorer": _choice("log-likelihood scorer", "fast", "lm_eval"),
    "eval.token_budget": _int("tokens per scorer batch", 1),
    "eval.gold_nll": _bool("also score the GSM8k reference solution's NLL"),
    "eval.generate": _bool("generate GSM8k answers (false: reference NLL only)"),
    "eval.curve.enabled": _bool("forgetting curve at every validation"),
    "eval.curve.limit": _per_task("items per benchmark of the curve", low=1),
    "eval.bootstrap_iters": _int("bootstrap resamples of the paired CIs", 1),
    "eval.batch_size": _int("lm-eval batch size", 1),
    "eval.seed": _int("lm-eval's seeds", *_SEED),
    "eval.data_dir": _str("local copies of the benchmarks (null: the hub)", null=True),
    "eval.require_benchmarks": _bool("fail (instead of skipping) when a benchmark is unavailable"),
    "eval.after_each_round": _bool("also measure after every pruning round"),
    "eval.cache_before": _bool("cache the base model's numbers"),
    "eval.gsm8k_max_gen_toks": _int("GSM8k generation length", 1),
    "eval.drift.enabled": _bool("measure the offline drift proxy"),
    "eval.drift.num_prompts": _int("drift prompts used (of 32)", 1, 32),
    "eval.drift.max_new_tokens": _int("length of the base model's answers", 1),
    "eval.drift.batch_size": _int("drift prompts per forward pass", 1),
    "eval.drift.top_k": _int("base distribution kept per token (top-k)", 1),
}
# fmt: on


def _method_options(methods: Sequence[str]) -> dict[str, Option]:
    """The options made by the registered methods: ``adapter.method``'s choices and, per method, a study's
    ``lr_by_method.<m>``, ``final_lr_by_method.<m>``, ``ticket_from_by_method.<m>`` and ``start_from_by_method.<m>``."""
    return {
        "adapter.method": _choice("adaptation method", *methods),
        **{
            f"lr_by_method.{m}": _float(f"a study's learning rate for {m} (its runs' adapter.lr)", 0)
            for m in methods
        },
        **{
            f"final_lr_by_method.{m}": _float(
                f"a study's final-phase learning rate for {m} (its runs' pruning.final_lr)", 0, null=True
            )
            for m in methods
        },
        **{
            f"ticket_from_by_method.{m}": _str(
                f"a study's adapter.density_from for {m} (random_mask: the paired rigsa run)", null=True
            )
            for m in methods
        },
        **{
            f"start_from_by_method.{m}": _str(
                f"a study's ckpt_path for {m} (rigsa: a run's ticket.ckpt.xz, retrained without a new mask search)",
                null=True,
            )
            for m in methods
        },
    }


class OptionTable(Mapping[str, Option]):
    """Every declared option: the fixed ones and those the registered methods make (:func:`_method_options`).

    The method options are rebuilt whenever the registry's names change, so a method registered after this module
    was imported (``register_method``) is a valid ``adapter.method`` and has its ``lr_by_method.<name>`` options."""

    def __init__(
        self, fixed: dict[str, Option], by_method: Callable[[Sequence[str]], dict[str, Option]]
    ) -> None:
        self._fixed = fixed
        self._by_method = by_method
        self._names: tuple[str, ...] | None = None
        self._table: dict[str, Option] = {}

    def _current(self) -> dict[str, Option]:
        names = method_names()
        if names != self._names:
            self._table = {**self._fixed, **self._by_method(names)}
            self._names = names
        return self._table

    def __getitem__(self, key: str) -> Option:
        return self._current()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._current()

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


OPTIONS: Mapping[str, Option] = OptionTable(_FIXED, _method_options)


def __getattr__(attr: str) -> Any:
    """``METHODS``: every adapter method, the names registered now in adapters/registry.py (no torch imported)."""
    if attr == "METHODS":
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _is_passthrough(key: str) -> bool:
    return key.startswith(PASSTHROUGH)


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, raw value)`` of every option, stopping at declared keys whose value is a mapping."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and path not in OPTIONS:
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _resolved(cfg: Any, key: str, raw: Any) -> tuple[bool, Any]:
    """The value of ``key`` with interpolations resolved; (False, None) when it can't be resolved here
    (``${hydra:...}`` outside a Hydra run)."""
    if not (isinstance(raw, str) and "${" in raw) and not isinstance(raw, (list, Mapping)):
        return True, raw
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra can resolve: nothing to check here
        return False, None
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None and isinstance(raw, str) and "${hydra:" in raw:
        # Hydra's runtime values are only set inside a Hydra run (a test may leave them unset)
        return False, None
    return True, value


def unknown_option_error(key: str) -> ConfigError:
    """The one-line error for a key no group declares (with the closest known names)."""
    close = difflib.get_close_matches(key, list(OPTIONS), n=2, cutoff=0.75)
    fix = f"did you mean {' or '.join(close)}?" if close else "see the YAML files under conf/ for the options"
    return ConfigError(key, "is not an option", fix)


def check_value(key: str, value: Any) -> None:
    """Raise the one-line :class:`ConfigError` when ``value`` is not allowed for option ``key``.

    A per-task mapping's bad entry is reported under the task's own option (``eval.limit.piqa``)."""
    option = OPTIONS[key]
    if option.kind == "per_task" and value is not None:
        located = option.locate_per_task(value)
        if located is None:
            return
        task, problem = located
        name = f"{key}.{task}" if task else key
    else:
        problem, name = option.problem(value), key
        if problem is None:
            return
    fix = f"{option.meaning}: use {option.expectation()}"
    if option.example is not None:
        fix += f", e.g. {key}={option.example}"
    raise ConfigError(name, problem, fix)


def check_relations(cfg: Any) -> None:
    """Checks that involve more than one option (after each option passed on its own)."""
    adapter = cfg.get("adapter") or {}
    method = adapter.get("method")
    spec = find_method(method)
    trains = method is not None and (spec is None or spec.trains)  # unknown names count as training
    if trains and adapter.get("lr") == 0:
        raise ConfigError(
            "adapter.lr", f"is 0: {method} would not train", "use a learning rate > 0, e.g. 1e-3"
        )
    if adapter.get("density_from"):
        if method != "random_mask":
            raise ConfigError(
                "adapter.density_from",
                f"only random_mask draws its mask from a run's counts (adapter.method={method})",
                "use adapter=random_mask (experiment=random_ticket), or drop adapter.density_from",
            )
        if adapter.get("density") is not None:
            raise ConfigError(
                "adapter.density",
                f"is {adapter.get('density')} and adapter.density_from is set: the mask has two densities",
                "set adapter.density=null to take the per-matrix counts of adapter.density_from",
            )
    pruning = cfg.get("pruning") or {}
    if (cfg.get("export") or {}).get("peft") and spec is not None and spec.gated:
        if pruning.get("pruned_value") == "init":
            raise ConfigError(
                "export.peft",
                "pruning.pruned_value=init keeps the pruned entries' initial ΔW: the update is dense, not a sparse "
                "PEFT adapter",
                "set export.peft=false (adapter/ is still written) or use pruning.pruned_value=zero",
            )
    if pruning.get("enabled") and pruning.get("rounds") == 0:
        target = (
            pruning.get("sparsity")
            or pruning.get("keep_fraction") not in (None, 1)
            or pruning.get("densities")
        )
        if target:
            raise ConfigError(
                "pruning.rounds",
                "is 0 with pruning enabled and a pruning target set: nothing would be pruned",
                "use pruning.rounds >= 1, or pruning=none to train without pruning",
            )


def check_options(cfg: Any) -> None:
    """Check every option of a composed config (types, ranges, unknown keys, relations); raise ConfigError.

    Keys under ``hydra`` belong to Hydra and are not checked; keys in :data:`PASSTHROUGH` groups that are not
    declared go to their library as they are.
    """
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    raw.pop("hydra", None)
    for key, value in _leaves(raw):
        if key not in OPTIONS:
            if _is_passthrough(key):
                continue
            raise unknown_option_error(key)
        if value == "???":  # OmegaConf's mandatory value that nobody set (e.g. experiment=random_ticket)
            raise ConfigError(
                key,
                "is required and not set",
                f"{OPTIONS[key].meaning}: set {key}=<value> on the command line",
            )
        ok, value = _resolved(cfg, key, value)
        if ok:
            check_value(key, value)
    check_relations(cfg)


def declared_keys(prefix: str = "") -> Sequence[str]:
    """The declared option names (optionally only those under ``prefix``)."""
    return [k for k in OPTIONS if k.startswith(prefix)]
