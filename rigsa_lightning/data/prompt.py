"""The Textual MNIST chat prompt and answer tokens for one tokenizer, and the answer metrics.

:class:`PromptFormatter` builds the prompt of a grid (the tokenizer's own chat template, or a plain
``...\\nAnswer: `` fallback) and the tokens of each digit's answer; :func:`tokenizer_fingerprint` identifies a
tokenizer for cache keys; :func:`answer_digit_logits` / :func:`textual_mnist_accuracy` (``acc``) and
:func:`parse_first_digit` (``gen_acc``) score the answers. No Lightning; torch only for the metric helpers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import torch

from rigsa_lightning.config.errors import ConfigError

__all__ = [
    "DEFAULT_PROMPT",
    "PromptFormatter",
    "answer_digit_logits",
    "parse_first_digit",
    "textual_mnist_accuracy",
    "tokenizer_fingerprint",
]

DEFAULT_PROMPT = "Which digit (0-9) is drawn above? Answer with the digit only."
_SENTINEL = "\ue000GRID\ue000"
_DIGIT_RE = re.compile(r"[0-9]")


# ----------------------------------------------------------------------------------------------------------------
# Prompt formatting and tokenisation
# ----------------------------------------------------------------------------------------------------------------


def _encode(tokenizer: Any, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    """Batch-encode with the fast (Rust) tokenizer when there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # _fast: no offsets
        return [e.ids for e in encode(list(texts), add_special_tokens=add_special_tokens)]
    return tokenizer(list(texts), add_special_tokens=add_special_tokens, return_attention_mask=False)[
        "input_ids"
    ]


class PromptFormatter:
    """Builds the chat prompt of a grid and the answer tokens of each digit for one tokenizer.

    Attributes after construction: ``uses_chat_template`` (False: a plain ``...\\nAnswer: `` fallback for tokenizers
    without a template), ``answer_ids`` (ten token lists, digit ``d`` -> the tokens appended after the prompt),
    ``digit_offset`` (answer tokens before the digit's first token; 0 for SmolLM2), ``digit_token_ids`` (first token of
    each digit, ten distinct ids) and ``eos_id`` (the supervised end-of-turn token, or None).
    """

    def __init__(
        self,
        tokenizer: Any,
        system_prompt: str | None = None,
        question: str = DEFAULT_PROMPT,
        supervise_eos: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.question = question
        self.supervise_eos = supervise_eos
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self._prefix, self._suffix = self._split_template()
        self._build_answers()

    # -- text --------------------------------------------------------------------------------------------------
    def user_text(self, grid: str) -> str:
        """The user turn: the grid, a newline, the question."""
        return f"{grid}\n{self.question}"

    def _messages(self, grid: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return msgs + [{"role": "user", "content": self.user_text(grid)}]

    def _template_prompt(self, grid: str) -> str:
        if not self.uses_chat_template:
            head = f"{self.system_prompt}\n\n" if self.system_prompt else ""
            return f"{head}{self.user_text(grid)}\nAnswer: "
        return self.tokenizer.apply_chat_template(
            self._messages(grid), tokenize=False, add_generation_prompt=True
        )

    def _split_template(self) -> tuple[str, str] | tuple[None, None]:
        """Render the template once around a sentinel; use prefix + grid + suffix if that reproduces it exactly."""
        text = self._template_prompt(_SENTINEL)
        if text.count(_SENTINEL) != 1:
            return None, None
        prefix, suffix = text.split(_SENTINEL)
        probe = "0123\n4567\n8900"
        if prefix + probe + suffix != self._template_prompt(probe):
            return None, None
        return prefix, suffix

    def prompt_text(self, grid: str) -> str:
        """The full prompt text up to and including the assistant generation prefix."""
        if self._prefix is not None:
            return self._prefix + grid + self._suffix
        return self._template_prompt(grid)

    def prompt_texts(self, grids: Sequence[str]) -> list[str]:
        """:meth:`prompt_text` for many grids."""
        if self._prefix is not None:
            pre, suf = self._prefix, self._suffix
            return [pre + g + suf for g in grids]
        return [self._template_prompt(g) for g in grids]

    def encode_prompts(self, grids: Sequence[str], chunk: int = 4096) -> list[list[int]]:
        """Token ids of the prompts of ``grids`` (batched fast tokenizer)."""
        out: list[list[int]] = []
        add_special = not self.uses_chat_template  # chat templates already write BOS/turn markers as text
        for start in range(0, len(grids), chunk):
            out.extend(_encode(self.tokenizer, self.prompt_texts(grids[start : start + chunk]), add_special))
        return out

    # -- answers -----------------------------------------------------------------------------------------------
    def _answer_text(self, digit: int) -> str:
        if self.uses_chat_template:
            grid = "0"
            prompt = self.prompt_text(grid)
            full = self.tokenizer.apply_chat_template(
                self._messages(grid) + [{"role": "assistant", "content": str(digit)}], tokenize=False
            )
            if full.startswith(prompt):
                return full[len(prompt) :]
        return str(digit)

    def _build_answers(self) -> None:
        tok = self.tokenizer
        specials = set(getattr(tok, "all_special_ids", []) or [])
        eos_id = getattr(tok, "eos_token_id", None)
        answers: list[list[int]] = []
        offsets: list[int] = []
        eos_ids: set[int | None] = set()
        for d in range(10):
            text = self._answer_text(d)
            at = text.find(str(d))
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, spans = list(enc["input_ids"]), list(enc["offset_mapping"])
            covering = [i for i, (s, e) in enumerate(spans) if s < at + 1 and e > at]
            if not covering:
                raise ConfigError(
                    "model.name_or_path", f"the tokenizer's answer for digit {d} has no digit token"
                )
            first, last = covering[0], covering[-1]
            keep = ids[: last + 1]
            nxt = ids[last + 1] if last + 1 < len(ids) else None
            if self.supervise_eos:
                if nxt is not None and (nxt in specials or nxt == eos_id):
                    keep.append(nxt)
                    eos_ids.add(nxt)
                elif eos_id is not None:
                    keep.append(int(eos_id))
                    eos_ids.add(int(eos_id))
                else:
                    eos_ids.add(None)
            answers.append(keep)
            offsets.append(first)
        if len(set(offsets)) != 1:
            raise ConfigError(
                "model.name_or_path", f"digit answers start at different token offsets {offsets}"
            )
        self.answer_ids = answers
        self.digit_offset = offsets[0]
        self.digit_token_ids = [int(a[self.digit_offset]) for a in answers]
        if len(set(self.digit_token_ids)) != 10:
            raise ConfigError(
                "model.name_or_path",
                f"the first tokens of the digits 0-9 are not ten distinct tokens ({self.digit_token_ids})",
                "use a tokenizer that starts each digit with its own token",
            )
        self.eos_id = next(iter(eos_ids)) if len(eos_ids) == 1 else None

    def describe(self) -> dict[str, Any]:
        """Everything that defines the tokenised examples (for cache keys)."""
        return {
            "system_prompt": self.system_prompt,
            "question": self.question,
            "supervise_eos": self.supervise_eos,
            "uses_chat_template": self.uses_chat_template,
        }


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's full serialisation (vocab, merges, special tokens) and its chat template."""
    h = hashlib.sha1()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(json.dumps(getattr(tokenizer, "all_special_tokens", []) or []).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Metrics helpers
# ----------------------------------------------------------------------------------------------------------------


def answer_digit_logits(
    logits: torch.Tensor, answer_pos: torch.Tensor, digit_token_ids: Sequence[int]
) -> torch.Tensor:
    """(B, 10) logits of the ten digit tokens at each row's answer position (``logits``: (B, T, V) or (B, V))."""
    ids = torch.as_tensor(list(digit_token_ids), dtype=torch.long, device=logits.device)
    if logits.dim() == 3:
        rows = torch.arange(logits.shape[0], device=logits.device)
        logits = logits[rows, answer_pos.to(logits.device)]
    return logits.index_select(-1, ids)


def textual_mnist_accuracy(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], digit_token_ids: Sequence[int]
) -> torch.Tensor:
    """``acc``: fraction of rows whose argmax over the ten digit tokens at ``answer_pos`` is the true digit."""
    pred = answer_digit_logits(logits, batch["answer_pos"], digit_token_ids).argmax(dim=-1)
    return (pred == batch["digit"].to(pred.device)).float().mean()


def parse_first_digit(text: str) -> int | None:
    """``gen_acc`` parsing: the first ASCII digit in a generated text, or None."""
    m = _DIGIT_RE.search(text or "")
    return int(m.group()) if m else None
