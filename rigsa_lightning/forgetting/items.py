"""Per-item forgetting records: which items are scored, what is kept of each, and how two stages pair up.

Items: ``eval.limit`` picks, per task, a **seeded fixed subset** of the scored split (``eval.subset_seed``): the
same document indices before and after training and across runs (:func:`choose_items`). ``null`` = every item.

Records (one compact ``<run_dir>/forgetting_items/<stage>.json.gz`` per stage), column-wise per task:

* multiple choice (PIQA, HellaSwag): ``doc_id`` (index in the split), ``acc``, ``acc_norm`` (lm-eval's per-item
  metrics), ``ll`` (log-likelihood of every choice), ``gold`` (the gold choice), ``gold_ll`` and ``margin`` (gold
  log-likelihood minus the best wrong choice's);
* GSM8k: ``doc_id``, ``exact_match_strict-match`` / ``exact_match_flexible-extract`` (lm-eval's per-item metrics),
  ``answer_strict-match`` / ``answer_flexible-extract`` (the extracted answers), ``gold_nll`` (teacher-forced
  NLL per token of the reference solution under the same 5-shot prompt, nats) and ``gold_tokens``.

The forgetting curve keeps the same records of its own small subset at every validation
(``forgetting_items/curve/step<N>.json.gz``, the base model's in ``forgetting_items/curve/before.json.gz``).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rigsa_lightning.config.errors import ConfigError

#: Fields a local copy of each benchmark must have (the hub datasets' own names).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "piqa": ("goal", "sol1", "sol2", "label"),
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "gsm8k": ("question", "answer"),
}
#: Per-item values that are 0/1 outcomes (McNemar) and those that are continuous (bootstrap of the mean change).
BINARY = ("acc", "acc_norm", "exact_match_strict-match", "exact_match_flexible-extract")
CONTINUOUS = ("margin", "gold_nll")
#: Where a run keeps its forgetting curve's per-item records (relative to the run folder).
CURVE_ITEMS = Path("forgetting_items") / "curve"


def curve_items_path(run_dir: str | os.PathLike, step: int | None) -> Path:
    """``<run_dir>/forgetting_items/curve/step<step>.json.gz`` (``before.json.gz`` for None: the base model)."""
    return Path(run_dir) / CURVE_ITEMS / ("before.json.gz" if step is None else f"step{int(step)}.json.gz")


def choose_items(n_docs: int, size: int | None, seed: int) -> list[int]:
    """Sorted document indices of a seeded subset of ``size`` of ``n_docs`` items (all of them for None)."""
    if size is None or size >= n_docs:
        return list(range(n_docs))
    rng = np.random.default_rng(int(seed))
    return sorted(int(i) for i in rng.choice(n_docs, size=int(size), replace=False))


def check_limit(value: Any, option: str) -> None:
    """Validate one limit: null, an integer >= 1 or a fraction in (0, 1); ConfigError otherwise."""
    if value is None:
        return
    if isinstance(value, bool) or not (
        (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value < 1)
    ):
        raise ConfigError(
            option,
            f"must be null (every item), an integer >= 1 or a fraction in (0, 1), got {value!r}",
            f"e.g. {option}=500",
        )


def resolve_size(limit: Any, task: str, n_docs: int, where: str = "") -> int | None:
    """Items to score for ``task`` given ``eval.limit`` (a value or a ``{task: value}`` mapping) and the split size.

    Raises:
        ConfigError: ``eval.limit[.task]`` larger than the split (naming the file) or not a valid limit.
    """
    per_task = isinstance(limit, Mapping)
    value = limit.get(task) if per_task else limit
    option = f"eval.limit.{task}" if per_task else "eval.limit"
    check_limit(value, option)
    if value is None:
        return None
    size = max(1, round(value * n_docs)) if isinstance(value, float) else int(value)
    if size > n_docs:
        raise ConfigError(
            option,
            f"asks for {size} items but the {task} split{(' ' + where) if where else ''} has {n_docs}",
            f"use at most {n_docs}, or null for the full split",
        )
    return None if size == n_docs else size


def count_items(files: Sequence[str | os.PathLike]) -> int:
    """Rows in local split files (jsonl/json lines, or parquet metadata)."""
    total = 0
    for f in files:
        path = Path(f)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            total += int(pq.ParquetFile(path).metadata.num_rows)
        else:
            with open(path, "rb") as fh:
                total += sum(1 for line in fh if line.strip())
    return total


def check_fields(task: str, files: Sequence[str | os.PathLike], option: str = "eval.data_dir") -> None:
    """ConfigError naming the file when its first record lacks a field lm-eval's task reads."""
    need = REQUIRED_FIELDS.get(task)
    if not need or not files:
        return
    path = Path(files[0])
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            names = set(pq.ParquetFile(path).schema_arrow.names)
        else:
            with open(path, encoding="utf-8") as fh:
                first = next((line for line in fh if line.strip()), "")
            record = json.loads(first) if first else {}
            if not isinstance(record, dict):
                raise ValueError("the first line is not a JSON object")
            names = set(record)
    except (OSError, ValueError) as exc:
        raise ConfigError(option, f"can't read {path}: {exc}", f"give {task} as .jsonl records") from exc
    missing = [f for f in need if f not in names]
    if missing:
        raise ConfigError(
            option,
            f"{path} lacks field(s) {', '.join(missing)} of {task} (has {', '.join(sorted(names)) or 'none'})",
            f"use the original {task} fields: {', '.join(need)}",
        )


def _multiple_choice_records(samples: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {
        k: [] for k in ("doc_id", "acc", "acc_norm", "gold", "ll", "gold_ll", "margin")
    }
    for s in sorted(samples, key=lambda x: int(x["doc_id"])):
        ll = [float(r[0][0]) for r in s["resps"]]
        gold = int(s["target"])
        wrong = [v for j, v in enumerate(ll) if j != gold]
        cols["doc_id"].append(int(s["doc_id"]))
        cols["acc"].append(float(s["acc"]))
        cols["acc_norm"].append(float(s["acc_norm"]))
        cols["gold"].append(gold)
        cols["ll"].append(ll)
        cols["gold_ll"].append(ll[gold])
        cols["margin"].append(ll[gold] - max(wrong))
    return cols


def _generation_records(
    samples: Sequence[Mapping[str, Any]], gold_nll: Mapping[int, tuple[float, int]] | None
) -> dict[str, list[Any]]:
    by_doc: dict[int, dict[str, Any]] = {}
    for s in samples:
        row = by_doc.setdefault(int(s["doc_id"]), {"doc_id": int(s["doc_id"])})
        filt = str(s["filter"])
        row[f"exact_match_{filt}"] = float(s["exact_match"])
        answer = s["filtered_resps"][0] if s["filtered_resps"] else ""
        row[f"answer_{filt}"] = answer[0] if isinstance(answer, list) else answer
    cols: dict[str, list[Any]] = {}
    for doc_id in sorted(by_doc):
        row = by_doc[doc_id]
        if gold_nll is not None:
            nll_sum, n_tok = gold_nll[doc_id]
            row["gold_nll"] = nll_sum / max(n_tok, 1)
            row["gold_tokens"] = n_tok
        for k, v in row.items():
            cols.setdefault(k, []).append(v)
    return cols


def records_from_samples(
    task: str,
    samples: Sequence[Mapping[str, Any]],
    gold_nll: Mapping[int, tuple[float, int]] | None = None,
) -> dict[str, list[Any]]:
    """Column-wise per-item records of one task from lm-eval's logged samples (see the module docstring)."""
    if not samples:
        if gold_nll:  # generation skipped (eval.generate=false): the reference solutions' NLL only
            ids = sorted(gold_nll)
            return {
                "doc_id": ids,
                "gold_nll": [gold_nll[d][0] / max(gold_nll[d][1], 1) for d in ids],
                "gold_tokens": [gold_nll[d][1] for d in ids],
            }
        return {"doc_id": []}
    if "acc" in samples[0]:
        return _multiple_choice_records(samples)
    if "exact_match" in samples[0]:
        return _generation_records(samples, gold_nll)
    raise ValueError(f"{task}: no per-item metric this module knows in lm-eval's samples")


def means(records: Mapping[str, Sequence[Any]]) -> dict[str, float]:
    """Mean of every per-item measure (binary and continuous) present in ``records``."""
    out: dict[str, float] = {}
    for name in BINARY + CONTINUOUS:
        values = records.get(name)
        if values:
            out[name] = float(np.mean(np.asarray(values, dtype=np.float64)))
    return out


def paired(
    before: Mapping[str, Sequence[Any]], after: Mapping[str, Sequence[Any]], name: str
) -> tuple[np.ndarray, np.ndarray]:
    """``name`` of the items both stages scored, aligned by ``doc_id``."""
    pos = {int(d): k for k, d in enumerate(after["doc_id"])}
    idx_b, idx_a = [], []
    for k, d in enumerate(before["doc_id"]):
        if int(d) in pos:
            idx_b.append(k)
            idx_a.append(pos[int(d)])
    b = np.asarray(before[name], dtype=np.float64)[idx_b]
    a = np.asarray(after[name], dtype=np.float64)[idx_a]
    return b, a


def save_records(path: str | os.PathLike, records: Mapping[str, Any]) -> Path:
    """Write ``records`` as gzipped JSON atomically (the run folder's per-stage file)."""
    from rigsa_lightning.io import atomic_write

    data = gzip.compress(json.dumps(records, separators=(",", ":")).encode(), mtime=0)

    def _write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    return atomic_write(path, _write)


def load_records(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_records`."""
    return json.loads(gzip.decompress(Path(path).read_bytes()).decode())
