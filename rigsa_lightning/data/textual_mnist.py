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

The prompt and the answer metrics live in :mod:`~rigsa_lightning.data.prompt`, the dataset view, collate and
sampler in :mod:`~rigsa_lightning.data.batching`; their names are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.data.batching import EpochSeededSampler, PadCollator, SplitLoaders, TokenizedSplit
from rigsa_lightning.data.prompt import (
    DEFAULT_PROMPT,
    PromptFormatter,
    answer_digit_logits,
    parse_first_digit,
    textual_mnist_accuracy,
    tokenizer_fingerprint,
)
from rigsa_lightning.data.render import render_batch
from rigsa_lightning.data.sources import load_source, make_splits, prepare_images, source_fingerprint
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

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1  # bump when the cached columns or their meaning change
_CHUNK = 1024  # examples tokenised per batch call (bounds the tokenizer's per-call memory)


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


class TextualMNISTDataModule(SplitLoaders, L.LightningDataModule):
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
    def collator(self) -> Any:
        """The right-padding collator of the training and evaluation batches."""
        return PadCollator(self.pad_id)

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
