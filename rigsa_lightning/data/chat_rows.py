"""Your own task's rows: reading a chat or prompt-completion dataset (local JSONL / JSON / Parquet files, or a hub
dataset id), checking every row (one line naming the file, the row and the column) and assigning the splits.
No torch: the option check (:func:`check_chat_data`) runs before the model loads. The data module that tokenises
and scores them is :mod:`rigsa_lightning.data.chat`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}
SUFFIXES = (".jsonl", ".json", ".parquet")
SPLIT_COLUMN = "split"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_PATH_FIX = (
    "a JSONL/Parquet file with a 'messages' column or 'prompt'/'completion' columns (see conf/data/chat.yaml)"
)


# ----------------------------------------------------------------------------------------------------------------
# Metric
# ----------------------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Whitespace-normalised text: leading/trailing whitespace removed, every inner run of whitespace one space."""
    return " ".join(str(text).split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether ``prediction`` equals ``reference`` after :func:`normalize_text` on both."""
    return normalize_text(prediction) == normalize_text(reference)


# ----------------------------------------------------------------------------------------------------------------
# Reading and checking the rows
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ChatExample:
    """One conversation: ``messages`` (the last is the assistant's completion), where it came from, its split."""

    messages: list[dict[str, str]]
    where: str  # file (or hub id:split) and row, for error messages
    split: str | None = None

    @property
    def completion(self) -> str:
        """The reference completion (the last assistant turn's content)."""
        return self.messages[-1]["content"]


def _bad(where: str, column: str, problem: str, fix: str = _PATH_FIX) -> ConfigError:
    return ConfigError("data.path", f"{where}, column '{column}': {problem}", fix)


def resolve_path(value: str) -> Path:
    """``data.path`` as given (relative: to the current directory, else to the project root)."""
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
        return PROJECT_ROOT / path
    return path


def _read_json_rows(path: Path) -> list[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                "data.path", f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})", _PATH_FIX
            ) from None
        return list(enumerate(rows, start=1))
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                "data.path",
                f"{path}, row {number}: not valid JSON ({exc.msg})",
                "write one JSON object per line",
            ) from None
    return out


def _read_file(path: Path) -> list[tuple[int, Any]]:
    """``(row number, row)`` of a JSONL / JSON / Parquet file (row numbers 1-based; JSONL: the line number)."""
    if path.suffix not in SUFFIXES:
        raise ConfigError(
            "data.path", f"{path}: unknown file type '{path.suffix}'", f"use one of {list(SUFFIXES)}"
        )
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same one-line error
            raise ConfigError(
                "data.path", f"{path}: not a readable Parquet file ({type(exc).__name__})", _PATH_FIX
            ) from None
        return list(enumerate(rows, start=1))
    return _read_json_rows(path)


def _split_of_file(path: Path) -> str | None:
    stem = path.name.lower()
    for prefix in sorted(SPLIT_NAMES, key=len, reverse=True):
        if stem.startswith(prefix):
            return SPLIT_NAMES[prefix]
    return None


def _raw_sources(data_cfg: Any) -> list[tuple[str, list[tuple[int, Any]], str | None]]:
    """``(label, rows, split)`` for each file (or hub split) the options name."""
    path_value, hub_id = get(data_cfg, "path", None), get(data_cfg, "hub_id", None)
    if path_value is None and hub_id is None:
        raise ConfigError(
            "data.path", "is not set (source=chat needs a file)", "set data.path=<file.jsonl> or data.hub_id"
        )
    if path_value is not None:
        path = resolve_path(path_value)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and _split_of_file(p))
            if not any(_split_of_file(p) == "train" for p in files):
                raise ConfigError(
                    "data.path",
                    f"{path} has no train* file (.jsonl/.json/.parquet)",
                    "add train.jsonl (and val.jsonl / test.jsonl), or point data.path at one file",
                )
            return [(str(p), _read_file(p), _split_of_file(p)) for p in files]
        if not path.is_file():
            raise ConfigError("data.path", f"{path} does not exist", _PATH_FIX)
        return [(str(path), _read_file(path), None)]
    return _hub_sources(str(hub_id))


def _hub_sources(hub_id: str) -> list[tuple[str, list[tuple[int, Any]], str | None]]:
    import datasets

    try:
        dd = datasets.load_dataset(hub_id)
    except Exception as exc:  # noqa: BLE001 - offline, missing or private: the same one-line error
        raise ConfigError(
            "data.hub_id",
            f"cannot load {hub_id!r} ({type(exc).__name__})",
            "download it and set data.path to a local JSONL/Parquet file",
        ) from None
    out = []
    for name, ds in dd.items():
        split = SPLIT_NAMES.get(str(name).lower())
        if split is not None:
            out.append((f"{hub_id}:{name}", list(enumerate(ds.to_list(), start=1)), split))
    if not any(s == "train" for _, _, s in out):
        raise ConfigError(
            "data.hub_id", f"{hub_id!r} has no train split (splits: {list(dd)})", "use data.path"
        )
    return out


def _parse_messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _bad(
            where,
            "messages",
            f"must be a non-empty list of {{role, content}} turns, got {type(value).__name__}",
        )
    turns = []
    for k, turn in enumerate(value, start=1):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
            raise _bad(where, "messages", f"turn {k} must be an object with a string 'role'")
        if not isinstance(turn.get("content"), str):
            got = type(turn.get("content")).__name__
            raise _bad(where, "messages", f"turn {k} 'content' must be a string, got {got}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if turns[-1]["role"] != "assistant":
        raise _bad(
            where,
            "messages",
            f"the last turn must be 'assistant' (the completion), got '{turns[-1]['role']}'",
        )
    if len(turns) < 2:
        raise _bad(where, "messages", "needs at least one turn before the assistant's")
    if not turns[-1]["content"].strip():
        raise _bad(where, "messages", "the last assistant turn is empty")
    return turns


def _parse_row(row: Any, where: str, kind: str) -> list[dict[str, str]]:
    if not isinstance(row, dict):
        raise ConfigError("data.path", f"{where}: must be a JSON object, got {type(row).__name__}", _PATH_FIX)
    if kind == "messages":
        if "messages" not in row:
            raise _bad(where, "messages", "missing (the first row has it)")
        return _parse_messages(row["messages"], where)
    for column in ("prompt", "completion"):
        if column not in row:
            raise _bad(where, column, "missing (the first row has 'prompt'/'completion')")
        if not isinstance(row[column], str):
            raise _bad(where, column, f"must be a string, got {type(row[column]).__name__}")
    if not row["completion"].strip():
        raise _bad(where, "completion", "is empty")
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


def _row_kind(row: Any, where: str) -> str:
    if isinstance(row, dict) and "messages" in row:
        return "messages"
    if isinstance(row, dict) and ("prompt" in row or "completion" in row):
        return "prompt_completion"
    found = ", ".join(sorted(map(str, row))) if isinstance(row, dict) else type(row).__name__
    missing = "completion" if isinstance(row, dict) and "prompt" in row else "messages"
    raise _bad(where, missing, f"missing: a row needs 'messages' or 'prompt'/'completion' (found: {found})")


def load_chat_examples(data_cfg: Any) -> list[ChatExample]:
    """Every row the options name, checked and parsed (one-line :class:`ConfigError` naming file, row and column)."""
    examples: list[ChatExample] = []
    kind = None
    for label, rows, file_split in _raw_sources(data_cfg):
        if not rows:
            raise ConfigError("data.path", f"{label} is empty (no rows)", _PATH_FIX)
        for number, row in rows:
            where = f"{label}, row {number}"
            kind = kind or _row_kind(row, where)
            messages = _parse_row(row, where, kind)
            split = file_split
            if isinstance(row, dict) and row.get(SPLIT_COLUMN) is not None and file_split is None:
                value = row[SPLIT_COLUMN]
                split = SPLIT_NAMES.get(str(value).lower()) if isinstance(value, str) else None
                if split is None:
                    raise _bad(
                        where, SPLIT_COLUMN, f"unknown split {value!r}", "use train, val (validation) or test"
                    )
            examples.append(ChatExample(messages, where, split))
    has_split = [e.split is not None for e in examples]
    if any(has_split) and not all(has_split):
        first = examples[has_split.index(False)]
        raise _bad(
            first.where, SPLIT_COLUMN, "missing while other rows have it", "give every row a split, or none"
        )
    return examples


def _size(data_cfg: Any, key: str, default: int | None) -> int | None:
    value = get(data_cfg, key, None)
    return default if value is None else int(value)


def assign_splits(examples: Sequence[ChatExample], data_cfg: Any) -> dict[str, list[ChatExample]]:
    """``{train, val, test}`` from the data's own splits; missing ones carved out of train by a seeded split
    (``data.seed``); ``data.*_size`` keep seeded subsets. Deterministic in ``data.seed``."""
    seed = int(get(data_cfg, "seed", 0))
    given = {s: [e for e in examples if (e.split or "train") == s] for s in SPLITS}
    pool = given["train"]
    rng = np.random.default_rng([seed, 0xC4A7])
    order = [pool[i] for i in rng.permutation(len(pool))]
    out: dict[str, list[ChatExample]] = {}
    for split in ("val", "test"):
        if given[split]:
            continue
        n = _size(data_cfg, f"{split}_size", max(1, len(pool) // 10))
        if n >= len(order):
            raise ConfigError(
                f"data.{split}_size",
                f"{n} {split} rows leave no training rows ({len(pool)} rows to split)",
                f"lower data.{split}_size or add rows",
            )
        out[split], order = order[:n], order[n:]
    out["train"] = order
    position = {id(e): k for k, e in enumerate(examples)}
    for split in SPLITS:
        rows = given[split] if given[split] and split != "train" else out[split]
        cap = get(data_cfg, f"{split}_size", None)
        if cap is not None and int(cap) < len(rows):
            keep = np.sort(
                np.random.default_rng([seed, SPLITS.index(split), 0x5B5E]).permutation(len(rows))[: int(cap)]
            )
            rows = [rows[i] for i in keep]
        out[split] = sorted(rows, key=lambda e: position[id(e)])  # file order
    return out


def check_chat_data(data_cfg: Any) -> dict[str, int]:
    """Read and check the rows before anything loads (bad data: one line naming file, row and column); the number
    of examples per split."""
    splits = assign_splits(load_chat_examples(data_cfg), data_cfg)
    return {s: len(v) for s, v in splits.items()}


# ----------------------------------------------------------------------------------------------------------------
# Rendering with the chat template
# ----------------------------------------------------------------------------------------------------------------
