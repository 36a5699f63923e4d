"""Textual MNIST as a LightningDataModule: render, chat-format, tokenise, cache, split, batch.

Every example is one chat exchange built with the tokenizer's own chat template::

    <system turn: data.system_prompt, or the template's default>
    <user>      <grid rows joined by "\\n">\\n<data.prompt>
    <assistant> <digit><end of turn>

Only the answer is supervised: ``labels`` is -100 everywhere except the digit token(s) and, with
``data.supervise_eos``, the end-of-turn token right after it (``<|im_end|>`` for SmolLM2). The sequence stops
there (the template's trailing newline is not part of the example). ``answer_pos`` is the position whose logits
predict the first digit token (``labels[answer_pos + 1]`` is that token), which is what the fast ``acc`` metric
reads (:func:`textual_mnist_accuracy`).

The prompt and the answer are tokenised separately and concatenated, so the prompt tokens of a training example are
exactly the tokens a generation starts from (:meth:`TextualMNISTDataModule.generation_batches`).

Tokenised splits are cached with ``datasets`` (``save_to_disk``) under
``<cache_dir>/textual_mnist/<key>``, the key hashing every render/prompt option, the split sizes and seed, the
source identity and the tokenizer (its full serialisation and chat template). A second build loads the cache.

Order and distribution: the train loader uses :class:`EpochSeededSampler`, whose order is a pure function of
(order seed, epoch), and Lightning calls its ``set_epoch`` each epoch, so a resumed run sees the same order as an
uninterrupted one. Under DDP Lightning wraps it in its ``DistributedSamplerWrapper`` (``use_distributed_sampler``,
the default), which shards our order across ranks and forwards ``set_epoch``. Everything handed to a DataLoader
(datasets, sampler, collate) is a picklable top-level class, so ``num_workers > 0`` works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rigsa_lightning.config import get
from rigsa_lightning.data.render import render_batch
from rigsa_lightning.data.sources import load_source, make_splits, prepare_images, source_fingerprint
from rigsa_lightning.errors import ConfigError
from rigsa_lightning.io import atomic_dir

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROMPT",
    "SPLITS",
    "PromptFormatter",
    "TokenizedSplit",
    "PadCollator",
    "EpochSeededSampler",
    "TextualMNISTDataModule",
    "answer_digit_logits",
    "textual_mnist_accuracy",
    "parse_first_digit",
    "tokenizer_fingerprint",
]

DEFAULT_PROMPT = "Which digit (0-9) is drawn above? Answer with the digit only."
SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1  # bump when the cached columns or their meaning change
_SENTINEL = "\ue000GRID\ue000"
_CHUNK = 1024  # examples tokenised per batch call (bounds the tokenizer's per-call memory)
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
# Torch-side pieces: dataset view, collate, sampler
# ----------------------------------------------------------------------------------------------------------------


class TokenizedSplit(Dataset):
    """A torch view of one cached split (a ``datasets.Dataset``; memory-mapped when loaded from the cache).

    Items are dicts ``{input_ids: int32 array, prompt_len, answer_pos, digit}``. ``__getitems__`` fetches a whole
    batch with one Arrow read.
    """

    COLUMNS = ["input_ids", "prompt_len", "answer_pos", "digit"]

    def __init__(self, hf_dataset: Any) -> None:
        self.hf = hf_dataset
        self._view = hf_dataset.select_columns(self.COLUMNS).with_format("numpy")
        self.lengths = np.asarray(hf_dataset["length"], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._view[int(i)]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        rows = self._view[[int(i) for i in indices]]
        return [{k: rows[k][j] for k in self.COLUMNS} for j in range(len(indices))]


class PadCollator:
    """Dynamic padding to the longest sequence of the batch.

    ``prompt_only=False`` (training/eval): right padding, keys ``input_ids, attention_mask, labels, answer_pos,
    digit``. ``prompt_only=True`` (generation): only each prompt, left padded, keys ``input_ids, attention_mask,
    digit`` (every row ends with the assistant generation prefix).
    """

    def __init__(self, pad_id: int, prompt_only: bool = False) -> None:
        self.pad_id = int(pad_id)
        self.prompt_only = prompt_only

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [np.asarray(it["input_ids"], dtype=np.int64) for it in items]
        if self.prompt_only:
            seqs = [s[: int(it["prompt_len"])] for s, it in zip(seqs, items)]
        width = max(len(s) for s in seqs)
        b = len(seqs)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        digit = torch.tensor([int(it["digit"]) for it in items], dtype=torch.long)
        if self.prompt_only:
            for r, s in enumerate(seqs):
                ids[r, width - len(s) :] = torch.from_numpy(s)
                mask[r, width - len(s) :] = 1
            return {"input_ids": ids, "attention_mask": mask, "digit": digit}
        labels = torch.full((b, width), -100, dtype=torch.long)
        for r, (s, it) in enumerate(zip(seqs, items)):
            n, p = len(s), int(it["prompt_len"])
            ids[r, :n] = torch.from_numpy(s)
            mask[r, :n] = 1
            labels[r, p:n] = ids[r, p:n]
        answer_pos = torch.tensor([int(it["answer_pos"]) for it in items], dtype=torch.long)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "answer_pos": answer_pos,
            "digit": digit,
        }


class EpochSeededSampler(Sampler[int]):
    """A shuffling sampler whose order is a pure function of ``(seed, epoch)``; call :meth:`set_epoch` each epoch.

    With ``lengths`` and ``bucket=True`` the shuffled order is cut into chunks of ``bucket_factor * batch_size``,
    each chunk sorted by length and split into batches, and the batches shuffled again: consecutive ``batch_size``
    indices then have similar lengths (less padding) while the order stays random and reproducible.
    Single-process semantics; under DDP Lightning's ``DistributedSamplerWrapper`` shards it.
    """

    def __init__(
        self,
        num_items: int,
        seed: int = 0,
        lengths: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 1,
        bucket: bool = False,
        bucket_factor: int = 50,
    ) -> None:
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.epoch = 0
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = max(1, int(batch_size))
        self.bucket = bool(bucket) and self.lengths is not None
        self.bucket_factor = max(1, int(bucket_factor))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The full index order of ``epoch`` (default: the current one)."""
        ep = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, ep, 0x7E57])
        perm = rng.permutation(self.num_items)
        if not self.bucket:
            return perm
        chunk = self.batch_size * self.bucket_factor
        batches: list[np.ndarray] = []
        for start in range(0, self.num_items, chunk):
            part = perm[start : start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches.extend(part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size))
        # keep a short (last) batch last so every other batch stays full
        full = [bt for bt in batches if len(bt) == self.batch_size]
        short = [bt for bt in batches if len(bt) != self.batch_size]
        full = [full[i] for i in rng.permutation(len(full))]
        return np.concatenate(full + short) if batches else perm

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.num_items


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


# ----------------------------------------------------------------------------------------------------------------
# The DataModule
# ----------------------------------------------------------------------------------------------------------------


def _check_int(cfg: Any, key: str, default: int, minimum: int) -> int:
    value = get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"data.{key}", f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_str(cfg: Any, key: str, default: str | None, allow_none: bool) -> str | None:
    value = get(cfg, key, default)
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"data.{key}", f"must be a string{' or null' if allow_none else ''}, got {value!r}")
    return value


class TextualMNISTDataModule(L.LightningDataModule):
    """Textual MNIST: ``data.*`` options (see ``conf/data/digits.yaml``), a tokenizer, a cache folder.

    ``seed`` (optional) overrides ``data.seed`` for the training order only; the splits always come from
    ``data.seed`` so every run seed is scored on the same test images. ``cache_dir=None`` uses the default cache
    (``$RIGSA_CACHE``); ``data.cache=false`` keeps everything in memory.

    After :meth:`setup`: ``splits`` (name -> :class:`TokenizedSplit`), ``digit_token_ids``, ``cache_hit``,
    ``cache_path``; loaders yield the batches described in :class:`PadCollator`.
    """

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
        self.levels = _check_int(data_cfg, "levels", 10, 2)
        if self.levels > 256:
            raise ConfigError("data.levels", f"must be <= 256, got {self.levels}")
        self.separator = _check_str(data_cfg, "separator", "", allow_none=False)
        if self.levels > 10 and self.separator == "":
            raise ConfigError(
                "data.separator", "levels > 10 write multi-digit pixels", "set a separator, e.g. ' '"
            )
        self.batch_size = _check_int(data_cfg, "batch_size", 8, 1)
        self.eval_batch_size = _check_int(data_cfg, "eval_batch_size", 32, 1)
        self.num_workers = _check_int(data_cfg, "num_workers", 0, 0)
        self.data_seed = int(get(data_cfg, "seed", 0))
        self.order_seed = int(seed) if seed is not None else self.data_seed
        self.use_cache = bool(get(data_cfg, "cache", True))
        self.length_bucketing = bool(get(data_cfg, "length_bucketing", False))
        self.cache_root = Path(cache_dir) if cache_dir is not None else None
        if tokenizer.pad_token_id is None:
            raise ConfigError(
                "model.name_or_path", "the tokenizer has no pad token", "set tokenizer.pad_token"
            )
        self.pad_id = int(tokenizer.pad_token_id)
        self.formatter = PromptFormatter(
            tokenizer,
            system_prompt=_check_str(data_cfg, "system_prompt", None, allow_none=True),
            question=_check_str(data_cfg, "prompt", DEFAULT_PROMPT, allow_none=False),
            supervise_eos=bool(get(data_cfg, "supervise_eos", True)),
        )
        self.digit_token_ids: list[int] = list(self.formatter.digit_token_ids)
        self.splits: dict[str, TokenizedSplit] = {}
        self.cache_hit: bool | None = None
        self.build_seconds: float | None = None
        self._key: str | None = None
        self._train_sampler: EpochSeededSampler | None = None

    # -- cache -------------------------------------------------------------------------------------------------
    def key_spec(self) -> dict[str, Any]:
        """Everything the tokenised splits depend on."""
        return {
            "format": CACHE_FORMAT,
            "source": source_fingerprint(self.cfg),
            "resolution": get(self.cfg, "resolution", None),
            "levels": self.levels,
            "separator": self.separator,
            "sizes": [get(self.cfg, k, None) for k in ("train_size", "val_size", "test_size")],
            "seed": self.data_seed,
            "prompt": self.formatter.describe(),
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "tokenizer_name": os.path.basename(str(getattr(self.tokenizer, "name_or_path", ""))),
        }

    @property
    def cache_key(self) -> str:
        """Hash of :meth:`key_spec` (the cache folder name)."""
        if self._key is None:
            self._key = hashlib.sha1(
                json.dumps(self.key_spec(), sort_keys=True, default=str).encode()
            ).hexdigest()[:20]
        return self._key

    @property
    def cache_path(self) -> Path | None:
        """``<cache_dir>/textual_mnist/<cache_key>`` (None when caching is off)."""
        if not self.use_cache:
            return None
        if self.cache_root is None:
            from rigsa_lightning.models import default_cache_dir

            self.cache_root = default_cache_dir()
        return self.cache_root / "textual_mnist" / self.cache_key

    def _cached(self) -> bool:
        path = self.cache_path
        return path is not None and (path / "dataset_dict.json").is_file()

    # -- building ----------------------------------------------------------------------------------------------
    def build_tables(self) -> dict[str, Any]:
        """Load the source, split, render and tokenise; return ``{split: datasets.Dataset}`` (in memory)."""
        import datasets
        import pyarrow as pa

        t0 = time.perf_counter()
        images, labels, hint = load_source(self.cfg)
        index = make_splits(labels, hint, self.cfg)
        answers = self.formatter.answer_ids
        answer_len = np.asarray([len(a) for a in answers], dtype=np.int64)
        tables = {}
        for split in SPLITS:
            idx = index[split]
            imgs = prepare_images(images[idx], self.cfg)
            grids = render_batch(imgs, levels=self.levels, separator=self.separator)
            digits = labels[idx].astype(np.int64)
            # tokenise in chunks and pack prompt + answer ids straight into one int32 buffer (low peak memory)
            value_parts, len_parts = [], []
            for start in range(0, len(grids), _CHUNK):
                prompts = self.formatter.encode_prompts(grids[start : start + _CHUNK])
                chunk_digits = digits[start : start + _CHUNK]
                plen = np.fromiter(map(len, prompts), dtype=np.int64, count=len(prompts))
                count = int((plen + answer_len[chunk_digits]).sum())
                rows = (chain(p, answers[d]) for p, d in zip(prompts, chunk_digits))
                value_parts.append(np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=count))
                len_parts.append(plen)
            prompt_len = np.concatenate(len_parts) if len_parts else np.zeros(0, dtype=np.int64)
            values = np.concatenate(value_parts) if value_parts else np.zeros(0, dtype=np.int32)
            length = prompt_len + answer_len[digits]
            offsets = np.zeros(len(length) + 1, dtype=np.int64)
            np.cumsum(length, out=offsets[1:])
            list_type = pa.ListArray if offsets[-1] < 2**31 - 1 else pa.LargeListArray
            off_type = pa.int32() if list_type is pa.ListArray else pa.int64()
            ids_col = list_type.from_arrays(pa.array(offsets, type=off_type), pa.array(values))
            tables[split] = datasets.Dataset.from_dict(
                {
                    "input_ids": ids_col,
                    "length": length.astype(np.int32),
                    "prompt_len": prompt_len.astype(np.int32),
                    "answer_pos": (prompt_len - 1 + self.formatter.digit_offset).astype(np.int32),
                    "digit": digits,
                    "source_index": idx.astype(np.int64),
                    "grid": grids,
                }
            )
        self.build_seconds = time.perf_counter() - t0
        log.info(
            "Textual MNIST built in %.1f s (%s)", self.build_seconds, {k: len(v) for k, v in tables.items()}
        )
        return tables

    def _save(self, tables: dict[str, Any]) -> None:
        import datasets

        final = self.cache_path
        assert final is not None
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            # another process may save it first: its complete copy is kept
            with atomic_dir(final, keep_complete="dataset_dict.json") as tmp:
                datasets.DatasetDict(tables).save_to_disk(str(tmp))
                (tmp / "rigsa_key.json").write_text(json.dumps(self.key_spec(), indent=2, default=str))
        finally:
            if bars:
                datasets.enable_progress_bars()

    def prepare_data(self) -> None:
        """Build and cache the tokenised splits once (Lightning calls this on one process per node)."""
        if self.use_cache and not self._cached():
            log.info("Textual MNIST cache miss: building %s", self.cache_path)
            self._save(self.build_tables())
            self.cache_hit = False

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenised splits (from the cache when present; building them otherwise). Idempotent."""
        if self.splits:
            return
        if self.use_cache:
            import datasets

            if self._cached():
                if self.cache_hit is None:  # not built by this object's prepare_data()
                    self.cache_hit = True
                    log.info("Textual MNIST cache hit: %s", self.cache_path)
            else:
                self.cache_hit = False
                log.info("Textual MNIST cache miss: building %s", self.cache_path)
                self._save(self.build_tables())
            tables = dict(datasets.load_from_disk(str(self.cache_path)))
        else:
            self.cache_hit = False
            tables = self.build_tables()
        self.splits = {name: TokenizedSplit(tables[name]) for name in SPLITS}

    def _split(self, split: str) -> TokenizedSplit:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        if not self.splits:
            self.setup()
        return self.splits[split]

    # -- loaders -----------------------------------------------------------------------------------------------
    def train_sampler(self) -> EpochSeededSampler:
        """The epoch-seeded train sampler (one per DataModule, so Lightning's ``set_epoch`` reaches it)."""
        ds = self._split("train")
        if self._train_sampler is None:
            self._train_sampler = EpochSeededSampler(
                len(ds),
                seed=self.order_seed,
                lengths=ds.lengths,
                batch_size=self.batch_size,
                bucket=self.length_bucketing,
            )
        return self._train_sampler

    def _loader(
        self, split: str, batch_size: int, sampler: Sampler | None = None, prompt_only: bool = False
    ) -> DataLoader:
        return DataLoader(
            self._split(split),
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=PadCollator(self.pad_id, prompt_only=prompt_only),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (epoch-seeded), right-padded training batches of ``data.batch_size``."""
        return self._loader("train", self.batch_size, sampler=self.train_sampler())

    def val_dataloader(self) -> DataLoader:
        """Validation batches of ``data.eval_batch_size`` in a fixed order."""
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test batches of ``data.eval_batch_size`` in a fixed order."""
        return self._loader("test", self.eval_batch_size)

    def generation_batches(
        self, split: str = "test", batch_size: int | None = None, indices: Sequence[int] | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Left-padded prompt-only batches ``{input_ids, attention_mask, digit}`` for greedy generation (``gen_acc``),
        over the whole split or only the examples at ``indices``."""
        ds = self._split(split)
        bs = int(batch_size or self.eval_batch_size)
        collate = PadCollator(self.pad_id, prompt_only=True)
        order = list(range(len(ds))) if indices is None else [int(i) for i in indices]
        for start in range(0, len(order), bs):
            yield collate(ds.__getitems__(order[start : start + bs]))

    # -- inspection --------------------------------------------------------------------------------------------
    def prompt_length_stats(self) -> dict[str, dict[str, float]]:
        """Per split: examples, prompt tokens (min/mean/max) and full sequence tokens (max)."""
        out = {}
        for split in SPLITS:
            hf = self._split(split).hf
            prompt = np.asarray(hf["prompt_len"], dtype=np.int64)
            total = np.asarray(hf["length"], dtype=np.int64)
            out[split] = {
                "examples": int(len(prompt)),
                "prompt_min": int(prompt.min()) if len(prompt) else 0,
                "prompt_mean": float(prompt.mean()) if len(prompt) else math.nan,
                "prompt_max": int(prompt.max()) if len(prompt) else 0,
                "total_max": int(total.max()) if len(total) else 0,
            }
        return out

    def render_example(self, i: int, split: str = "train") -> dict[str, Any]:
        """Example ``i`` of ``split``: its grid, prompt and answer text (decoded), digit and token counts."""
        row = self._split(split).hf[int(i)]
        ids = list(row["input_ids"])
        p = int(row["prompt_len"])
        return {
            "split": split,
            "index": int(row["source_index"]),
            "digit": int(row["digit"]),
            "grid": row["grid"],
            "prompt": self.tokenizer.decode(ids[:p], skip_special_tokens=False),
            "answer": self.tokenizer.decode(ids[p:], skip_special_tokens=False),
            "prompt_tokens": p,
            "total_tokens": len(ids),
        }

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed with the trainer: the cache key and order seed (the order itself is a function of them)."""
        return {"cache_key": self.cache_key, "order_seed": self.order_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Warn when resuming onto different data."""
        if state_dict.get("cache_key") not in (None, self.cache_key):
            log.warning(
                "Resuming with different Textual MNIST data (cache key %s != %s)",
                state_dict.get("cache_key"),
                self.cache_key,
            )
