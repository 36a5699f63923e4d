"""Torch-side pieces of Textual MNIST: the dataset view of a cached split, the padding collate, the seeded sampler
and the resumable training loader.

Every class is a picklable top-level class, so DataLoaders with ``num_workers > 0`` work.

A checkpoint saved mid-epoch (``checkpoint.every_n_train_steps``) continues exactly: the training loader is
*resumable* in Lightning's sense (``state_dict`` / ``load_state_dict``, stored under the fit loop in the checkpoint):
it records how many batches of the current epoch it has handed out, and a resumed run's first iteration starts the
same epoch's order (a pure function of seed and epoch) after them instead of replaying the epoch from its start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochSeededSampler", "PadCollator", "ResumableLoader", "TokenizedSplit"]

log = logging.getLogger(__name__)


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
        #: Indices of the current epoch's order to leave out of the next iteration only (a resumed epoch), then 0.
        self.start = 0

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
        start, self.start = self.start, 0
        return iter(self.order()[start:].tolist())

    def __len__(self) -> int:
        return self.num_items


class ResumableLoader(DataLoader):
    """A training DataLoader that continues a mid-epoch checkpoint where it stopped (Lightning's resumable loader).

    ``state_dict()`` is ``{"epoch", "batches"}``: the sampler's epoch and how many batches this epoch's iteration has
    yielded. After ``load_state_dict`` the next iteration, if it is the same epoch and not already complete, skips
    those batches of the epoch's order (:attr:`EpochSeededSampler.start`); every later iteration is a whole epoch.
    The sampler must be an :class:`EpochSeededSampler` (a single process); under a distributed sampler wrapper the
    resumed epoch replays from its start, with a warning.
    """

    _yielded: int = 0
    _pending: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        """The position in the current epoch: ``{"epoch": e, "batches": batches yielded so far in e}``."""
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": int(self._yielded)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state`` (a :meth:`state_dict`) at the next iteration."""
        self._pending = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self) -> Iterator[Any]:
        skip, pending, self._pending = 0, self._pending, None
        if pending is not None and 0 < pending["batches"] < len(self):
            if not isinstance(self.sampler, EpochSeededSampler):
                log.warning(
                    "the training sampler (%s) cannot start mid-epoch: epoch %s replays from its start",
                    type(self.sampler).__name__,
                    pending["epoch"],
                )
            elif pending["epoch"] == self.sampler.epoch:
                skip = pending["batches"]
                self.sampler.start = skip * int(self.batch_size or 1)
        self._yielded = skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch


class SplitLoaders:
    """The loaders of a data module (a mixin): epoch-seeded training batches, fixed-order validation and test.

    The data module provides ``_split(split)`` (a dataset with ``lengths``), ``collator()`` (its padding collator)
    and the attributes ``batch_size``, ``eval_batch_size``, ``num_workers``, ``order_seed``, ``length_bucketing``
    and ``_train_sampler`` (None until the first call)."""

    batch_size: int
    eval_batch_size: int
    num_workers: int
    order_seed: int
    length_bucketing: bool
    _train_sampler: EpochSeededSampler | None

    def _split(self, split: str) -> Any:
        raise NotImplementedError

    def collator(self) -> Any:
        """The collate function of the training and evaluation batches."""
        raise NotImplementedError

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

    def _loader(self, split: str, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        train = sampler is not None
        # The training loader draws its iterators' base seeds from its own generator, not the global torch RNG:
        # the global stream (dropout) then does not depend on when an epoch's iterator is created (a run resumed
        # mid-epoch creates it at the resume point, an uninterrupted one at the epoch start).
        extra: dict[str, Any] = {"generator": torch.Generator().manual_seed(self.order_seed)} if train else {}
        kind = ResumableLoader if train else DataLoader
        return kind(
            self._split(split),
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (epoch-seeded), right-padded training batches of ``data.batch_size``; resumable mid-epoch."""
        return self._loader("train", self.batch_size, sampler=self.train_sampler())

    def val_dataloader(self) -> DataLoader:
        """Validation batches of ``data.eval_batch_size`` in a fixed order."""
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test batches of ``data.eval_batch_size`` in a fixed order."""
        return self._loader("test", self.eval_batch_size)
