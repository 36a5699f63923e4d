"""The reporting side of :class:`~rigsa_lightning.forgetting.evaluator.ForgettingEvaluator`: paired statistics
between stages, per-stage CIs, the lines printed when a stage finishes, the flat summary and ``forgetting.json``.

:class:`StageReport` is a mixin: it reads the evaluator's settings and ``stages`` and holds no state of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rigsa_lightning.forgetting import benchmarks, items, paired
from rigsa_lightning.forgetting.drift import DriftProbe
from rigsa_lightning.io import atomic_write_json

__all__ = ["StageReport"]


def _short(name: str) -> str:
    return {
        "exact_match_strict-match": "em-strict",
        "exact_match_flexible-extract": "em-flex",
        "gold_nll": "gold NLL",
    }.get(name, name)


class StageReport:
    """Statistics, printed lines, summary and ``forgetting.json`` of the stages a ForgettingEvaluator scored."""

    # set by ForgettingEvaluator.__init__
    enabled: bool
    model_key: str
    tasks: list[str]
    num_fewshot: dict[str, int | None]
    limit: Any
    subset_seed: int
    bootstrap_iters: int
    batch_size: int
    seed: int
    max_gen_toks: int | None
    data_dir: Path | None
    run_dir: Path | None
    drift: DriftProbe | None
    sources: dict[str, benchmarks.TaskSource]
    skipped: dict[str, str]
    stages: dict[str, dict[str, Any]]
    _tasks_dir: Path | None

    # ------------------------------------------------------------------ paired statistics
    def paired_stats(self, stage: str, reference: str = "before") -> dict[str, float]:
        """Paired change ``stage - reference`` of every per-item measure: mean with a bootstrap CI over items, and
        McNemar's exact p for the 0/1 measures. Keys ``forget/<task>/<measure>/delta`` (``delta_<stage>`` for a
        stage other than ``after``) plus ``..._ci_lo``, ``..._ci_hi``, ``..._p`` (McNemar), ``..._lost``,
        ``..._gained``."""
        ref = self.stages.get(reference, {}).get("items")
        cur = self.stages.get(stage, {}).get("items")
        if not ref or not cur or stage == reference:
            return {}
        suffix = "delta" if stage == "after" else f"delta_{stage}"
        out: dict[str, float] = {}
        for task, cols in cur.items():
            if task not in ref:
                continue
            for k, name in enumerate(items.BINARY + items.CONTINUOUS):
                if not cols.get(name) or not ref[task].get(name):
                    continue
                b, a = items.paired(ref[task], cols, name)
                if len(b) == 0:
                    continue
                est = paired.paired_bootstrap(b, a, iters=self.bootstrap_iters, seed=self.subset_seed + k)
                stem = f"forget/{task}/{name}/{suffix}"
                out[stem] = est.mean
                out[f"{stem}_ci_lo"] = est.lo
                out[f"{stem}_ci_hi"] = est.hi
                if name in items.BINARY:
                    test = paired.mcnemar_exact(b, a)
                    out[f"{stem}_p"] = test.p
                    out[f"{stem}_lost"] = float(test.lost)
                    out[f"{stem}_gained"] = float(test.gained)
        return out

    def stage_intervals(self, stage: str) -> dict[str, paired.Estimate]:
        """``{"<task>/<measure>": mean with bootstrap CI}`` of one stage's per-item values."""
        out: dict[str, paired.Estimate] = {}
        for task, cols in (self.stages.get(stage, {}).get("items") or {}).items():
            for k, name in enumerate(items.BINARY + items.CONTINUOUS):
                if cols.get(name):
                    out[f"{task}/{name}"] = paired.mean_ci(
                        cols[name], iters=self.bootstrap_iters, seed=self.subset_seed + k
                    )
        return out

    def stage_lines(self, stage: str) -> list[str]:
        """What the user sees when a stage finishes: one line per task with CIs (and the paired change)."""
        record = self.stages.get(stage)
        if record is None:
            return []
        lines = []
        intervals = (
            {k: paired.Estimate(**v) for k, v in record["intervals"].items()}
            if "intervals" in record  # computed once when the stage finished
            else self.stage_intervals(stage)
        )
        stats = record.get("paired") or {}
        suffix = "delta" if stage == "after" else f"delta_{stage}"
        for task, cols in (record.get("items") or {}).items():
            parts = []
            for name in items.BINARY + items.CONTINUOUS:
                est = intervals.get(f"{task}/{name}")
                if est is None:
                    continue
                pct = name in items.BINARY
                scale, unit = (100.0, "%") if pct else (1.0, "")
                text = f"{_short(name)} {est.mean * scale:.{1 if pct else 3}f}{unit} ±{est.half_width * scale:.{1 if pct else 3}f}"
                stem = f"forget/{task}/{name}/{suffix}"
                if stem in stats:
                    d, lo, hi = (
                        stats[stem] * scale,
                        stats[f"{stem}_ci_lo"] * scale,
                        stats[f"{stem}_ci_hi"] * scale,
                    )
                    text += (
                        f" (Δ {d:+.{1 if pct else 3}f} [{lo:+.{1 if pct else 3}f}, {hi:+.{1 if pct else 3}f}]"
                    )
                    text += f", p={stats[stem + '_p']:.2g})" if f"{stem}_p" in stats else ")"
                parts.append(text)
            n = len(cols.get("doc_id", []))
            lines.append(f"forgetting [{stage}] {task} (n={n}): " + "; ".join(parts))
        drift = {k: v for k, v in record["metrics"].items() if k.startswith("forget/drift/")}
        if drift:
            lines.append(
                f"forgetting [{stage}] drift proxy: "
                + ", ".join(f"{k.split('/')[2]} {v:.3f}" for k, v in sorted(drift.items()))
            )
        lines.append(
            f"forgetting [{stage}] done in {record.get('seconds', 0):.0f} s"
            + (" (from cache)" if record.get("from_cache") else "")
            + (f" -> {self.items_path(stage)}" if self.run_dir is not None and record.get("items") else "")
        )
        return lines

    def items_path(self, stage: str) -> Path:
        """``<run_dir>/forgetting_items/<stage>.json.gz``: the per-item records of one stage."""
        assert self.run_dir is not None
        return self.run_dir / "forgetting_items" / f"{stage}.json.gz"

    @property
    def limit_note(self) -> str:
        """The line saying that only part of each benchmark is scored (empty with ``eval.limit=null``)."""
        if self.limit is None:
            return ""
        sizes = (
            ", ".join(f"{t} {v}" for t, v in self.limit.items())
            if isinstance(self.limit, Mapping)
            else str(self.limit)
        )
        return (
            f"forgetting: each benchmark is scored on a seeded fixed subset of its items (eval.limit: {sizes}; "
            f"eval.subset_seed={self.subset_seed}), the same items at every stage; paired CIs say how precise the "
            "changes are (eval.limit=null, e.g. eval=paper, scores the full splits)"
        )

    # ------------------------------------------------------------------ summary / forgetting.json
    def summary(self) -> dict[str, Any]:
        """Flat metrics of every stage, ``.../delta`` (= after - before) where both exist, and ``skipped``.

        All values are floats except ``skipped`` ({task: one-line notice}). Also writes ``forgetting.json`` in the
        run folder when there is one.
        """
        flat: dict[str, Any] = self._flat_metrics()
        flat["skipped"] = dict(self.skipped)
        if self.run_dir is not None:
            self.write(self.run_dir)
        return flat

    def write(self, run_dir: str | os.PathLike | None = None) -> Path:
        """Write ``<run_dir>/forgetting.json`` atomically: settings, data sources, skipped tasks, per-stage metrics
        and full lm-eval results (versions, n-shot, n-samples, configs), drift prompts and base answers."""
        folder = Path(run_dir) if run_dir is not None else self.run_dir
        if folder is None:
            raise ValueError("ForgettingEvaluator.write needs a run folder")
        doc = {
            "lm_eval_version": benchmarks.lm_eval_version(),
            "enabled": self.enabled,
            "model_key": self.model_key,
            "tasks": self.tasks,
            "num_fewshot": self.num_fewshot,
            "limit": self.limit,
            "limit_note": self.limit_note,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "max_gen_toks": self.max_gen_toks,
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "data": {t: s.describe() for t, s in self.sources.items()},
            "task_yamls": str(self._tasks_dir) if self._tasks_dir else None,
            "skipped": dict(self.skipped),
            "metrics": self._flat_metrics(),
            "items_files": {
                stage: str(self.items_path(stage))
                for stage, rec in self.stages.items()
                if rec.get("items") and self.run_dir is not None
            },
            "stages": {
                stage: {k: v for k, v in rec.items() if k != "items"} for stage, rec in self.stages.items()
            },
            "drift": self.drift.describe() if self.drift is not None else None,
        }
        return atomic_write_json(folder / "forgetting.json", doc)

    def _flat_metrics(self) -> dict[str, float]:
        """Metrics of every stage plus ``<metric>/delta`` = after - before where both stages have it."""
        flat: dict[str, float] = {}
        for record in self.stages.values():
            flat.update(record["metrics"])
        for key in [k for k in flat if k.endswith("/before")]:
            stem = key[: -len("/before")]
            if f"{stem}/after" in flat and f"{stem}/delta" not in flat:
                flat[f"{stem}/delta"] = flat[f"{stem}/after"] - flat[key]
        return flat
