"""Your own task: a chat or prompt-completion dataset (local JSONL / Parquet, or a hub dataset id) as the new task.

Every row has either a ``messages`` column (a list of ``{role, content}`` turns ending with an ``assistant`` turn) or
``prompt`` / ``completion`` columns (strings: one user turn and the assistant's answer). Rows are rendered with the
model's own chat template, turn by turn, and tokenised piece by piece::

    <template text up to the assistant turn>   context (labels -100)
    <assistant content>                        supervised
    <end-of-turn token>                        supervised with data.supervise_eos (<|im_end|> for SmolLM2)

Only assistant tokens are supervised (every assistant turn of a conversation; the last one is "the completion").
The sequence stops after the last turn's end token (the template's trailing newline is not part of it), and the
prompt tokens (everything before the completion) are exactly what greedy generation starts from. The loss runs
through the same restricted LM head as Textual MNIST (:mod:`rigsa_lightning.models.head`: the head only at supervised
positions).

Splits: a folder ``data.path`` with ``train*`` / ``val*`` (``valid*``, ``validation*``, ``dev*``) / ``test*`` files,
a ``split`` column (``train``/``val``/``test``; ``validation``/``dev`` accepted), or the hub dataset's own splits;
what the data does not provide is carved out of the training rows by a split seeded with ``data.seed``
(``data.val_size`` / ``data.test_size`` rows; null: 10 % of the rows, at least 1). ``data.train_size`` (and the
sizes, for splits the data provides) keep a seeded subset.

Metrics (:meth:`ChatDataModule.score_batch`): ``loss`` (token-level cross-entropy over the supervised tokens),
``token_acc`` (teacher-forced argmax accuracy on the completion tokens) and ``acc`` = exact match of the greedy
completion with the reference, whitespace-normalised (:func:`normalize_text`). Greedy decoding reproduces the
reference tokens exactly when the teacher-forced argmax is right at every completion position (end token included),
so only the other rows are generated. ``val/acc`` is this exact match, so ``stop_at.val_acc`` works on it.

Bad data is one line naming the file, the row (1-based; for JSONL the line number) and the column, raised by
:func:`check_chat_data` before the model loads (``validation.validate_cfg``); an example longer than
``data.max_length`` tokens is one line naming its file and row once the tokenizer is known.

(Over ~400 lines on purpose: most of it is this description; the rows are read in ``chat_rows.py``.)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.data.batching import EpochSeededSampler, SplitLoaders
from rigsa_lightning.data.chat_rows import (
    SPLITS,
    ChatExample,
    assign_splits,
    exact_match,
    load_chat_examples,
    normalize_text,
)

log = logging.getLogger(__name__)

__all__ = [
    "ChatCollator",
    "ChatDataModule",
    "ChatRenderer",
    "ChatSplit",
    "MismatchStop",
]


class ChatRenderer:
    """Token ids and the supervision mask of a conversation, rendered with the tokenizer's chat template.

    ``encode(messages) -> (ids, supervised, prompt_len)``: ``supervised[i]`` marks the assistant tokens (content and,
    with ``supervise_eos``, the end-of-turn token after it); ``prompt_len`` is where the last turn's content starts.
    ``system_prompt`` (not None) is added as the system turn of conversations that have none.
    """

    def __init__(self, tokenizer: Any, system_prompt: str | None = None, supervise_eos: bool = True) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "model.name_or_path",
                "the tokenizer has no chat template (data=chat renders every row with it)",
                "use a chat/instruct model",
            )
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.supervise_eos = supervise_eos
        self.specials = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self.end_ids: set[int] = {int(self.eos_id)} if self.eos_id is not None else set()

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """``messages`` with the configured system turn in front (when set and the conversation has none)."""
        if self.system_prompt is None or messages[0]["role"] == "system":
            return list(messages)
        return [{"role": "system", "content": self.system_prompt}, *messages]

    def encode(self, messages: list[dict[str, str]], where: str = "") -> tuple[list[int], list[bool], int]:
        """Token ids, the supervised mask and the prompt length of one conversation (see the class docstring)."""
        msgs = self.with_system(messages)
        ids: list[int] = []
        mask: list[bool] = []
        done = ""  # template text already tokenised
        prompt_len = 0
        last = len(msgs) - 1
        for i, turn in enumerate(msgs):
            if turn["role"] != "assistant":
                continue
            before = self._render(msgs[:i], generation_prompt=True)
            after = self._render(msgs[: i + 1], generation_prompt=False)
            body = turn["content"]
            # (an empty earlier assistant turn: nothing to find, its end token follows the generation prompt)
            at = after.find(body, len(before)) if body else len(before)
            if at < 0 and body.strip():
                body = body.strip()
                at = after.find(body, len(before))
            if not before.startswith(done) or not after.startswith(before) or at < 0:
                raise ConfigError(
                    "model.name_or_path",
                    f"{where}: the chat template does not render this conversation turn by turn (an assistant turn's "
                    "text is not the prompt's continuation)",
                    "use a model whose template appends turns, or prompt/completion rows",
                )
            context = self._ids(after[len(done) : at])
            content = self._ids(body)
            tail = self._ids(after[at + len(body) :])
            ids += context + content
            mask += [False] * len(context) + [True] * len(content)
            if i == last:
                prompt_len = len(ids) - len(content)
            end = tail[0] if tail and (tail[0] in self.specials or tail[0] == self.eos_id) else None
            if end is not None:
                self.end_ids.add(int(end))
            if i == last:  # the sequence stops after the completion's end token
                if self.supervise_eos:
                    end = end if end is not None else self.eos_id
                    if end is not None:
                        ids.append(int(end))
                        mask.append(True)
                break
            ids += tail  # context of the next turns; its end token supervised like the completion's
            mask += [False] * len(tail)
            if tail and end is not None and self.supervise_eos:
                mask[len(mask) - len(tail)] = True
            done = after
        return ids, mask, prompt_len


# ----------------------------------------------------------------------------------------------------------------
# Torch side: dataset, collate
# ----------------------------------------------------------------------------------------------------------------


class ChatSplit(Dataset):
    """One tokenised split: items ``{input_ids, supervised, prompt_len, uid}`` (``uid``: the example's index in
    :attr:`ChatDataModule.examples`, for its reference completion)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.lengths = np.asarray([len(r["input_ids"]) for r in rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[int(i)]


class ChatCollator:
    """Right padding to the batch's longest row: ``input_ids, attention_mask, labels`` (-100 except the supervised
    tokens), ``answer_pos`` (predicts the completion's first token), ``prompt_len``, ``uid``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        b, width = len(items), max(len(it["input_ids"]) for it in items)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        for r, it in enumerate(items):
            seq = torch.as_tensor(np.asarray(it["input_ids"], dtype=np.int64))
            sup = torch.as_tensor(np.asarray(it["supervised"], dtype=bool))
            ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
            labels[r, : len(seq)] = torch.where(sup, seq, torch.full_like(seq, -100))
        prompt_len = torch.tensor([int(it["prompt_len"]) for it in items], dtype=torch.long)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "answer_pos": prompt_len - 1,
            "prompt_len": prompt_len,
            "uid": torch.tensor([int(it["uid"]) for it in items], dtype=torch.long),
        }


class MismatchStop:
    """A ``transformers`` stopping criterion for exact match: a row is done once its whitespace-normalised text is
    no longer a prefix of its normalised reference (no continuation can match then: the normalised text of a longer
    generation always starts with that of its prefix). Rows whose text ends inside a multi-byte character (U+FFFD
    when decoded) wait for the next token."""

    def __init__(self, tokenizer: Any, prompt_width: int, references: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = int(prompt_width)
        self.references = [normalize_text(r) for r in references]

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        """Per row: True when the row cannot match its reference any more."""
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        done = [
            "\ufffd" not in text and not ref.startswith(normalize_text(text))
            for text, ref in zip(texts, self.references)
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision.startswith("bf16"):
        return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------------
# The DataModule
# ----------------------------------------------------------------------------------------------------------------


class ChatDataModule(SplitLoaders, L.LightningDataModule):
    """A chat / prompt-completion dataset: ``data.*`` options (``conf/data/chat.yaml``), a tokenizer.

    Same loaders and sampler contract as :class:`~rigsa_lightning.data.textual_mnist.TextualMNISTDataModule`
    (``seed`` sets the training order; ``data.seed`` the splits). Instead of the digit metrics it scores batches
    itself: :meth:`score_batch` (``RigsaLitModule`` logs ``val/loss``, ``val/acc`` = exact match, ``val/token_acc``)
    and :meth:`score_split` (the end-of-run ``chat/*`` metrics).
    """

    metric_prefix = "chat"
    digit_token_ids: list[int] = []  # no digit answers (RigsaLitModule's Textual MNIST metric is not used)

    def __init__(
        self,
        data_cfg: Any,
        tokenizer: Any,
        cache_dir: str | os.PathLike | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg = data_cfg
        self.tokenizer = tokenizer
        self.batch_size = int(get(data_cfg, "batch_size", 8))
        self.eval_batch_size = int(get(data_cfg, "eval_batch_size", 32))
        self.num_workers = int(get(data_cfg, "num_workers", 0))
        self.max_length = int(get(data_cfg, "max_length", 1024))
        self.gen_max_new_tokens = int(get(data_cfg, "gen_max_new_tokens", 64))
        self.data_seed = int(get(data_cfg, "seed", 0))
        self.order_seed = int(seed) if seed is not None else self.data_seed
        self.length_bucketing = bool(get(data_cfg, "length_bucketing", False))
        if tokenizer.pad_token_id is None:
            raise ConfigError(
                "model.name_or_path", "the tokenizer has no pad token", "set tokenizer.pad_token"
            )
        self.pad_id = int(tokenizer.pad_token_id)
        self.renderer = ChatRenderer(
            tokenizer,
            system_prompt=get(data_cfg, "system_prompt", None),
            supervise_eos=bool(get(data_cfg, "supervise_eos", True)),
        )
        self.examples: list[ChatExample] = []
        self.splits: dict[str, ChatSplit] = {}
        self._train_sampler: EpochSeededSampler | None = None

    # -- building ----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Read, split, render and tokenise every example (in memory). Idempotent."""
        if self.splits:
            return
        by_split = assign_splits(load_chat_examples(self.cfg), self.cfg)
        for split in SPLITS:
            rows = []
            for ex in by_split[split]:
                ids, mask, prompt_len = self.renderer.encode(ex.messages, ex.where)
                if len(ids) > self.max_length:
                    raise ConfigError(
                        "data.max_length",
                        f"{ex.where} is {len(ids)} tokens, longer than data.max_length={self.max_length}",
                        f"raise data.max_length to >= {len(ids)} or shorten/remove that row",
                    )
                rows.append(
                    {
                        "input_ids": ids,
                        "supervised": mask,
                        "prompt_len": prompt_len,
                        "uid": len(self.examples),
                    }
                )
                self.examples.append(ex)
            self.splits[split] = ChatSplit(rows)
        log.info("chat data: %s examples", {s: len(v) for s, v in self.splits.items()})

    def _split(self, split: str) -> ChatSplit:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        if not self.splits:
            self.setup()
        return self.splits[split]

    def reference(self, uid: int) -> str:
        """The reference completion of example ``uid``."""
        return self.examples[int(uid)].completion

    # -- loaders -----------------------------------------------------------------------------------------------
    def collator(self) -> Any:
        """The right-padding collator of the training and evaluation batches."""
        return ChatCollator(self.pad_id)

    # -- metrics -----------------------------------------------------------------------------------------------
    def generate(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], rows: Sequence[int]
    ) -> list[str]:
        """Greedy completions of the prompts of ``rows`` of ``batch`` (left-padded), decoded without special tokens;
        at most ``data.gen_max_new_tokens`` new tokens. A row stops at its end-of-turn token or as soon as it can no
        longer match its reference (:class:`MismatchStop`), which does not change any exact-match result."""
        from transformers import StoppingCriteriaList

        ids, plen = batch["input_ids"], batch["prompt_len"]
        prompts = [ids[r, : int(plen[r])] for r in rows]
        width = max(len(p) for p in prompts)
        left = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=ids.device)
        attn = torch.zeros_like(left)
        for j, p in enumerate(prompts):
            left[j, width - len(p) :] = p
            attn[j, width - len(p) :] = 1
        stop = sorted(self.renderer.end_ids)
        out = model.generate(
            input_ids=left,
            attention_mask=attn,
            max_new_tokens=self.gen_max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=stop or None,
            stopping_criteria=StoppingCriteriaList(
                [MismatchStop(self.tokenizer, width, [self.reference(int(batch["uid"][r])) for r in rows])]
            ),
        )
        texts = []
        for row in out[:, width:].tolist():
            cut = next((k for k, t in enumerate(row) if t in self.renderer.end_ids), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return texts

    def batch_stats(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], full_head: bool = False
    ) -> dict[str, torch.Tensor]:
        """Sums over one batch: ``loss_sum`` / ``tokens`` (supervised tokens), ``token_correct`` / ``completion_tokens``
        (teacher-forced argmax on the completion), ``exact`` (per row: whitespace-normalised exact match of the
        greedy completion). One forward with the LM head at the supervised positions only."""
        from rigsa_lightning.models.head import selected_logits

        labels = batch["labels"]
        n, t = labels.shape
        next_labels = torch.full_like(labels, -100)
        next_labels[:, :-1] = labels[:, 1:]
        supervised = next_labels != -100
        logits = selected_logits(
            model, batch["input_ids"], batch.get("attention_mask"), supervised, full_head
        )
        target = next_labels[supervised]
        loss_sum = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")
        correct = logits.argmax(-1) == target
        positions = torch.arange(t, device=labels.device).expand(n, t)
        in_completion = (positions >= batch["answer_pos"][:, None])[supervised]  # the last turn only
        rows = supervised.nonzero()[:, 0]
        wrong = torch.zeros(n, dtype=torch.long, device=labels.device)
        wrong.index_add_(0, rows[in_completion], (~correct[in_completion]).long())
        exact = wrong == 0
        # teacher-forced exactness is greedy exactness only when the end token is supervised (generation stops)
        need = list(range(n)) if not self.renderer.supervise_eos else torch.nonzero(~exact).flatten().tolist()
        if need:
            was_training = model.training
            model.eval()
            texts = self.generate(model, batch, need)
            model.train(was_training)
            for r, text in zip(need, texts):
                exact[r] = exact_match(text, self.reference(int(batch["uid"][r])))
        return {
            "loss_sum": loss_sum.detach(),
            "tokens": torch.tensor(float(target.numel())),
            "token_correct": correct[in_completion].sum().float(),
            "completion_tokens": torch.tensor(float(in_completion.sum())),
            "exact": exact,
        }

    def score_batch(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], full_head: bool = False
    ) -> dict[str, torch.Tensor]:
        """``{loss, acc, token_acc}`` of one batch (``acc``: exact match of the greedy completion). ``loss`` is the
        mean cross-entropy over the supervised tokens, the training loss of ``head.supervised_loss_and_answer_logits``.
        """
        s = self.batch_stats(model, batch, full_head)
        return {
            "loss": s["loss_sum"] / s["tokens"].clamp(min=1),
            "acc": s["exact"].float().mean(),
            "token_acc": s["token_correct"] / s["completion_tokens"].clamp(min=1),
        }

    @torch.no_grad()
    def score_split(
        self, model: torch.nn.Module, split: str = "test", precision: str = "32-true"
    ) -> dict[str, float]:
        """``exact_match``, ``loss`` (token-level), ``token_acc`` and ``n`` over a whole split."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        totals = {
            "loss_sum": 0.0,
            "tokens": 0.0,
            "token_correct": 0.0,
            "completion_tokens": 0.0,
            "exact": 0.0,
        }
        n = 0
        with _autocast(precision):
            for batch in self._loader(split, self.eval_batch_size):
                batch = {k: v.to(device) for k, v in batch.items()}
                s = self.batch_stats(model, batch)
                for key in totals:
                    totals[key] += float(s[key].float().sum())
                n += int(batch["input_ids"].size(0))
        model.train(was_training)
        return {
            "exact_match": totals["exact"] / max(1, n),
            "loss": totals["loss_sum"] / max(1.0, totals["tokens"]),
            "token_acc": totals["token_correct"] / max(1.0, totals["completion_tokens"]),
            "n": float(n),
        }

    # -- inspection --------------------------------------------------------------------------------------------
    def render_example(self, i: int, split: str = "train") -> dict[str, Any]:
        """Example ``i`` of ``split``: prompt text, supervised text (decoded) and token counts."""
        row = self._split(split)[i]
        ids = row["input_ids"]
        sup = [t for t, m in zip(ids, row["supervised"]) if m]
        return {
            "where": self.examples[row["uid"]].where,
            "prompt": self.tokenizer.decode(ids[: row["prompt_len"]], skip_special_tokens=False),
            "supervised": self.tokenizer.decode(sup, skip_special_tokens=False),
            "prompt_tokens": int(row["prompt_len"]),
            "total_tokens": len(ids),
        }

    def generation_batches(
        self, split: str = "test", batch_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The split's (right-padded) batches; :meth:`generate` builds the left-padded prompts from them."""
        yield from self._loader(split, int(batch_size or self.eval_batch_size))

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed with the trainer: the order seed (the order is a function of it and the epoch)."""
        return {"order_seed": self.order_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (the data is read again from the options)."""
