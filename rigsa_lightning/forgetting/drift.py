"""Offline drift probe: how far the tuned model moved away from the base model on general prompts.

This is a *proxy* for forgetting that needs no benchmark data and no network, not the paper's metric (the paper
reports PIQA / HellaSwag / GSM8k accuracy, see :mod:`rigsa_lightning.forgetting.benchmarks`). It is cheap enough
to run at every evaluation stage and makes forgetting visible on a fresh offline machine.

Procedure:

1. The first ``eval.drift.num_prompts`` prompts of :data:`~rigsa_lightning.forgetting.prompts.GENERAL_PROMPTS`
   are chat-formatted with the tokenizer's chat template (plain ``Question: ...\\nAnswer:`` without one).
2. :meth:`DriftProbe.reference` lets the *base* model answer them greedily once (``max_new_tokens``, stopping at
   EOS) and records, at every answer position, the base distribution compressed to its ``top_k`` most likely
   tokens plus one bucket holding the remaining probability mass. That reference is small (``num_prompts`` x
   ``max_new_tokens`` x ``top_k`` numbers) and is cached on disk, keyed by the base model key, the formatted
   prompts, ``max_new_tokens`` and ``top_k``, so a sweep computes it once.
3. :meth:`DriftProbe.measure` scores the base answers with teacher forcing under the model being evaluated:

   * ``forget/drift/kl``: mean over answer tokens of KL(base || tuned) on the partition {top-k tokens of the base,
     rest of the vocabulary}. By the data-processing inequality this is a lower bound of the full-vocabulary KL
     (exact when ``top_k`` >= vocabulary size); it is exactly 0 for the untouched base model.
   * ``forget/drift/nll``: the tuned model's mean negative log-likelihood of the base answer tokens (equal to the
     base model's own NLL, ``base_nll``, before training).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.forgetting.prompts import GENERAL_PROMPTS
from rigsa_lightning.io import atomic_write
from rigsa_lightning.progress import Progress

log = logging.getLogger(__name__)

_REFERENCE_VERSION = 1


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """Chat-format one user prompt with the generation prompt appended (plain Q/A text without a chat template)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {prompt}\nAnswer:"


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


class DriftProbe:
    """KL(base || tuned) and NLL of the base model's greedy answers to fixed general prompts (a forgetting proxy).

    Args:
        tokenizer: the model's tokenizer (also used for the chat template).
        eval_drift_cfg: the ``eval.drift`` config: ``num_prompts``, ``max_new_tokens``, ``batch_size``, ``top_k``.
        cache_key: identifies the base model (e.g. its resolved path and dtype); part of the reference cache key.
        cache_dir: cache root; the reference goes to ``<cache_dir>/forgetting_drift/<sha>.pt`` (None: no cache).
    """

    def __init__(
        self, tokenizer: Any, eval_drift_cfg: Any, cache_key: str, cache_dir: str | os.PathLike | None
    ):
        self.tokenizer = tokenizer
        self.num_prompts = int(get(eval_drift_cfg, "num_prompts", 16))
        self.max_new_tokens = int(get(eval_drift_cfg, "max_new_tokens", 32))
        self.batch_size = int(get(eval_drift_cfg, "batch_size", 8))
        self.top_k = int(get(eval_drift_cfg, "top_k", 256))
        if not 1 <= self.num_prompts <= len(GENERAL_PROMPTS):
            raise ConfigError(
                "eval.drift.num_prompts", f"must be in 1..{len(GENERAL_PROMPTS)}, got {self.num_prompts}"
            )
        for name, value in (
            ("max_new_tokens", self.max_new_tokens),
            ("batch_size", self.batch_size),
            ("top_k", self.top_k),
        ):
            if value < 1:
                raise ConfigError(f"eval.drift.{name}", f"must be >= 1, got {value}")
        self.prompts: list[str] = list(GENERAL_PROMPTS[: self.num_prompts])
        self.texts: list[str] = [format_prompt(tokenizer, p) for p in self.prompts]
        self.prompt_ids: list[list[int]] = [
            tokenizer(t, add_special_tokens=False)["input_ids"] for t in self.texts
        ]
        self.cache_key = str(cache_key)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._ref: dict[str, Any] | None = None

    # ------------------------------------------------------------------ reference (base model)
    @property
    def key(self) -> str:
        """sha256 of what the reference depends on (base model key, formatted prompts, lengths, top_k)."""
        blob = json.dumps(
            {
                "version": _REFERENCE_VERSION,
                "model_key": self.cache_key,
                "texts": self.texts,
                "max_new_tokens": self.max_new_tokens,
                "top_k": self.top_k,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    @property
    def cache_path(self) -> Path | None:
        """Where the reference is cached (None without a cache folder)."""
        return None if self.cache_dir is None else self.cache_dir / "forgetting_drift" / f"{self.key}.pt"

    @property
    def has_reference(self) -> bool:
        """Whether the base answers are known (computed here or found in the cache)."""
        return self._ref is not None or self.load_reference()

    def load_reference(self) -> bool:
        """Load the cached reference if there is one; return whether the probe has a reference now."""
        if self._ref is not None:
            return True
        path = self.cache_path
        if path is None or not path.is_file():
            return False
        try:
            ref = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt cache entry is recomputed
            log.warning("drift: ignoring unreadable reference cache %s (%s)", path, exc)
            return False
        if ref.get("key") != self.key:
            return False
        self._ref = ref
        log.info("drift: base answers from cache %s", path)
        return True

    def reference(self, base_model: torch.nn.Module) -> dict[str, Any]:
        """Greedy base answers + compressed base distributions at the answer positions (cached on disk).

        Call it with the untouched base model (before training). Returns the reference dict (``answers`` as text,
        ``answer_ids``, ``base_nll``, ...).
        """
        if self.load_reference():
            assert self._ref is not None
            return self._ref
        tok = self.tokenizer
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        answers: list[list[int]] = []
        with (
            _eval_no_grad(base_model),
            Progress("drift probe: base answers", total=len(self.prompt_ids), unit="prompt") as progress,
        ):
            device = _device_of(base_model)
            for idx in _batches(len(self.prompt_ids), self.batch_size):
                seqs = [self.prompt_ids[i] for i in idx]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for row, s in enumerate(seqs):  # left padding for generation
                    ids[row, width - len(s) :] = torch.tensor(s)
                    mask[row, width - len(s) :] = 1
                out = base_model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=_greedy_config(self.max_new_tokens, pad, eos),
                )
                for row in range(len(seqs)):
                    new = out[row, width:].tolist()
                    if eos is not None and eos in new:
                        new = new[: new.index(eos) + 1]  # keep the stop decision, drop what follows
                    answers.append(new or ([eos] if eos is not None else [pad]))
                progress.update(len(idx))
            top_idx, top_logp, rest_logp = [], [], []
            nll_sum = 0.0
            for i, logp_rows in enumerate(self._answer_logprobs(base_model, answers)):
                vals, inds = logp_rows.topk(min(self.top_k, logp_rows.shape[-1]), dim=-1)
                top_idx.append(inds.to(torch.int32))
                top_logp.append(vals)
                rest_logp.append(_rest_logmass(logp_rows, inds))
                nll_sum += float(-logp_rows.gather(-1, torch.tensor(answers[i]).unsqueeze(-1)).sum())
        total = sum(len(a) for a in answers)
        base_nll = nll_sum / total  # accumulated exactly like measure(), so the untouched model matches it
        self._ref = {
            "key": self.key,
            "model_key": self.cache_key,
            "prompts": self.prompts,
            "answers": [tok.decode(a, skip_special_tokens=True) for a in answers],
            "answer_ids": answers,
            "top_idx": top_idx,
            "top_logp": top_logp,
            "rest_logp": rest_logp,
            "base_nll": base_nll,
            "num_tokens": total,
        }
        path = self.cache_path
        if path is not None:
            ref = self._ref
            atomic_write(path, lambda tmp: torch.save(ref, tmp))
            log.info("drift: base answers to %d prompts cached in %s", len(answers), path)
        return self._ref

    # ------------------------------------------------------------------ measure (any model)
    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """``{"forget/drift/kl": ..., "forget/drift/nll": ...}`` for ``model`` (train/eval flags restored)."""
        if not self.load_reference():
            raise RuntimeError("DriftProbe.measure needs a reference: call reference(base_model) first")
        ref = self._ref
        assert ref is not None
        answers = ref["answer_ids"]
        kl_sum, nll_sum, total = 0.0, 0.0, 0
        with _eval_no_grad(model), Progress("drift probe", total=len(answers), unit="prompt") as progress:
            for i, logq in enumerate(self._answer_logprobs(model, answers)):
                progress.update(1)
                idx = ref["top_idx"][i].long()
                logp_top = ref["top_logp"][i]
                logp_rest = ref["rest_logp"][i]
                logq_top = logq.gather(-1, idx)
                logq_rest = _rest_logmass(logq, idx)
                kl = (logp_top.exp() * (logp_top - logq_top)).sum(-1)
                p_rest = logp_rest.exp()
                rest_term = torch.where(
                    p_rest > 0, p_rest * (logp_rest - logq_rest), torch.zeros_like(p_rest)
                )
                kl_sum += float((kl + rest_term).clamp_min(0).sum())
                target = torch.tensor(answers[i]).unsqueeze(-1)
                nll_sum += float(-logq.gather(-1, target).sum())
                total += len(answers[i])
        return {"forget/drift/kl": kl_sum / total, "forget/drift/nll": nll_sum / total}

    def describe(self) -> dict[str, Any]:
        """What ``forgetting.json`` records about the probe (prompts, base answers, base NLL)."""
        ref = self._ref or {}
        return {
            "note": "proxy for forgetting, not the paper's metric: KL(base || tuned) over the base model's top-k "
            "tokens + a rest bucket, and the tuned model's NLL, on the base model's greedy answers to fixed prompts",
            "num_prompts": self.num_prompts,
            "max_new_tokens": self.max_new_tokens,
            "top_k": self.top_k,
            "cache": str(self.cache_path) if self.cache_path else None,
            "base_nll": ref.get("base_nll"),
            "num_tokens": ref.get("num_tokens"),
            "prompts": self.prompts,
            "answers": ref.get("answers"),
        }

    # ------------------------------------------------------------------ helpers
    def _answer_logprobs(
        self, model: torch.nn.Module, answers: Sequence[Sequence[int]]
    ) -> Iterator[torch.Tensor]:
        """Yield, prompt by prompt, fp32 log-probs ``(len(answer), vocab)`` predicting each answer token.

        Sequences are prompt + answer, right padded (positions start at 0 for every row), in fixed batches so the
        numbers are reproducible between the reference and later measurements.
        """
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = _device_of(model)
        for idx in _batches(len(answers), self.batch_size):
            seqs = [list(self.prompt_ids[i]) + list(answers[i]) for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, : len(s)] = torch.tensor(s)
                mask[row, : len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(idx):
                start = len(self.prompt_ids[i]) - 1
                rows = logits[row, start : start + len(answers[i])].float().cpu()
                yield torch.log_softmax(rows, dim=-1)
            del logits


def _rest_logmass(logp: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside ``top_idx`` (per row); -inf when the top-k covers the vocabulary."""
    masked = logp.scatter(-1, top_idx.long(), float("-inf"))
    return torch.logsumexp(masked, dim=-1)


def _greedy_config(max_new_tokens: int, pad: int | None, eos: int | None) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos
    )


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


@contextlib.contextmanager
def _eval_no_grad(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode + no grad inside; every module's own train/eval flag is restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode
