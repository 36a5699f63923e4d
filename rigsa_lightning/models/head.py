"""The LM head at the positions that are scored only (the loss, the digit accuracy, gen_acc's first token).

A causal LM's step is ``logits = head(body(input_ids))`` over every position, although the Textual MNIST loss only
needs the answer token(s) and the end-of-turn token (<= 3 positions per example): for SmolLM2 the head is a
576 x 49,152 matmul per position, and the ``[batch, seq, 49,152]`` logits cast to fp32 are ~165 MB per step of
the main job. :func:`selected_logits` runs the decoder body, gathers the hidden states at the positions asked
for and applies the head there only; the rows equal the full forward's logits at those positions (the head is
applied row by row: the same maths).

It works for every method: the gated adapters and full fine-tuning live inside the body, and PEFT (LoRA/QLoRA)
injects its layers into the wrapped model's own modules, so ``PeftModel.get_base_model()``'s body is the adapted
body. Models whose logits are not ``Linear(hidden)`` of the body's last hidden state (a head that is not a plain
``nn.Linear``, e.g. a PEFT ``modules_to_save`` wrapper or a quantised head; logit scaling or soft-capping in the
config) fall back to the full forward, with one log line per model.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Config attributes that, when set to a non-trivial value, change the logits after the head's matmul.
_LOGIT_TRANSFORMS = {
    "final_logit_softcapping": (None, 0, 0.0),
    "logit_scale": (None, 1, 1.0),
    "logits_scaling": (None, 1, 1.0),
    "output_multiplier_scale": (None, 1, 1.0),
}
_fallback_logged: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _split_reason(model: nn.Module) -> tuple[nn.Module, nn.Linear] | str:
    base = _base_model(model)
    config = getattr(base, "config", None)
    for attr, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(config, attr, None)
        if value not in neutral:
            return f"config.{attr}={value!r} transforms the logits after the head"
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not nn.Linear:  # subclasses (quantised linears, wrappers) may not be a plain matmul
        return f"output embeddings are {type(head).__name__}, not a plain nn.Linear"
    body: Any = None
    get_decoder = getattr(base, "get_decoder", None)
    if callable(get_decoder):
        try:
            body = get_decoder()
        except (AttributeError, NotImplementedError):
            body = None
    if body is None:
        body = getattr(base, str(getattr(base, "base_model_prefix", "") or "model"), None)
    if not isinstance(body, nn.Module) or body is base or body is head:
        return f"no decoder body found on {type(base).__name__}"
    return body, head


def split_causal_lm(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """``(body, head)`` of a Hugging Face causal LM (PEFT-wrapped or not) such that ``logits = head(h)`` with ``h``
    the body's last hidden state; None (logged once per model) when the model does not have that form."""
    found = _split_reason(model)
    if isinstance(found, str):
        if model not in _fallback_logged:
            _fallback_logged.add(model)
            log.info("LM head at scored positions only: not available (%s); full-logits forward", found)
        return None
    return found


def selected_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    select: torch.Tensor,
    full_head: bool = False,
) -> torch.Tensor:
    """Logits ``[N, vocab]`` at the positions where the bool ``select`` ``[batch, seq]`` is True (row-major order,
    as ``select.nonzero()``), equal to ``model(...).logits[select]`` without the head at the other positions.
    ``full_head``: compute it as ``model(...).logits[select]`` (the head over every position; for comparisons)."""
    split = None if full_head else split_causal_lm(model)
    if split is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits[select]
    body, head = split
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return head(hidden[select])


def answer_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, answer_pos: torch.Tensor
) -> torch.Tensor:
    """Logits ``[batch, vocab]`` at each example's ``answer_pos`` (the position predicting the first answer
    token)."""
    select = torch.zeros_like(input_ids, dtype=torch.bool)
    rows = torch.arange(input_ids.size(0), device=input_ids.device)
    select[rows, answer_pos] = True
    # One selected position per row, so the row-major order of ``select`` is the batch order.
    return selected_logits(model, input_ids, attention_mask, select)


def supervised_loss_and_answer_logits(
    model: nn.Module, batch: dict[str, torch.Tensor], full_head: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shifted next-token cross-entropy (fp32, mean over the labels that are not -100) and the logits at
    ``answer_pos`` (``[batch, vocab]``; None when the batch has no ``answer_pos``), with the head applied only at
    the supervised positions and the answer positions. Equals the loss over the full ``[batch, seq, vocab]`` logits.
    ``full_head``: run the whole model's forward instead (``lm_head=full``: the step as it was, for comparisons).
    """
    labels = batch["labels"]
    n, t = labels.shape
    # ``next_labels[b, i]`` is the token position i predicts; supervised where it is not -100.
    next_labels = torch.full_like(labels, -100)
    next_labels[:, :-1] = labels[:, 1:]
    supervised = next_labels != -100
    select = supervised.clone()
    answer_pos = batch.get("answer_pos")
    rows = torch.arange(n, device=labels.device)
    if answer_pos is not None:
        select[rows, answer_pos] = True
    logits = selected_logits(
        model, batch["input_ids"], batch.get("attention_mask"), select, full_head=full_head
    )
    # Row of ``logits`` holding each selected position (row-major order of ``select``).
    slot = (torch.cumsum(select.reshape(-1), 0) - 1).view(n, t)
    loss = torch.nn.functional.cross_entropy(logits[slot[supervised]].float(), next_labels[supervised])
    at_answer = logits[slot[rows, answer_pos]] if answer_pos is not None else None
    return loss, at_answer


LM_HEAD_MODES = ("scored", "full")


def check_lm_head(value: Any) -> bool:
    """``lm_head`` option -> whether to run the full head (``full``); one-line error for anything else."""
    from rigsa_lightning.config.errors import ConfigError

    if value not in LM_HEAD_MODES:
        raise ConfigError("lm_head", f"unknown value {value!r}", f"use one of {list(LM_HEAD_MODES)}")
    return value == "full"
