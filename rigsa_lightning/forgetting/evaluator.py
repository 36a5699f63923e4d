"""ForgettingEvaluator: the forgetting measurements of one run (lm-eval benchmarks and the drift proxy) at named
stages, with the ``before`` cache and the per-stage item files. The reporting side (paired statistics, printed lines,
summary, ``forgetting.json``) is :class:`~rigsa_lightning.forgetting.stages.StageReport`; usage in
:mod:`rigsa_lightning.forgetting`.

(Over ~400 lines on purpose: options, preflight, before-cache and stage scoring of one evaluator class.)
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rigsa_lightning.config.access import get, plain_cfg
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.forgetting import benchmarks, items, paired
from rigsa_lightning.forgetting.drift import DriftProbe
from rigsa_lightning.forgetting.stages import StageReport
from rigsa_lightning.forgetting.timing import benchmark_seconds
from rigsa_lightning.io import atomic_write_json

log = logging.getLogger(
    "rigsa_lightning.forgetting"
)  # one logger for the package (its name before the split)

__all__ = ["ForgettingEvaluator"]

_CACHE_FORMAT = 2


class ForgettingEvaluator(StageReport):
    """Forgetting measurements of one run: lm-eval benchmarks and the drift proxy at named stages.

    Args:
        eval_cfg: the ``eval`` config group (see ``conf/eval/forgetting.yaml`` for every key).
        tokenizer: the model's tokenizer.
        model_key: identifies the *base* model (resolved path/id + dtype, ...); keys the ``before`` and drift caches.
        cache_dir: cache root (``<cache_dir>/forgetting_before``, ``<cache_dir>/forgetting_drift``); None: no cache.
        run_dir: run folder (``forgetting.json`` and the generated ``lm_eval_tasks/``); None: a temp folder, no file.
    """

    def __init__(
        self,
        eval_cfg: Any,
        tokenizer: Any,
        model_key: str,
        cache_dir: str | os.PathLike | None,
        run_dir: str | os.PathLike | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.model_key = str(model_key)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._read_options(eval_cfg)
        drift_cfg = get(eval_cfg, "drift", None)
        self.drift: DriftProbe | None = (
            DriftProbe(tokenizer, drift_cfg, self.model_key, self.cache_dir)
            if drift_cfg is not None and bool(get(drift_cfg, "enabled", True))
            else None
        )
        #: Log one line per task when a stage finishes (the forgetting curve's evaluator stays quiet).
        self.verbose = True
        #: Names the stage in progress reports (``<label> <stage>: <tasks> log-likelihoods ...``); None:
        #: ``forgetting``, or ``forgetting curve`` for a quiet evaluator (the curve's).
        self.progress_label: str | None = None
        self.sources: dict[str, benchmarks.TaskSource] = {}
        self.skipped: dict[str, str] = {}
        self.stages: dict[str, dict[str, Any]] = {}
        self.lm_eval_calls = 0
        #: Write each stage's results to the run folder as soon as it is scored (the evaluate command holds them
        #: until the adapter is known to fit the model: bad input writes nothing).
        self.write_each_stage = True
        self._preflight_done = False
        self._force_offline = False
        self._tasks_dir: Path | None = None
        self._task_manager: Any = None
        self._limit_noted = False

    def _read_options(self, eval_cfg: Any) -> None:
        """The benchmark and scoring options of ``eval_cfg``, checked in order (ConfigError naming the option)."""
        self.enabled = bool(get(eval_cfg, "enabled", True))
        tasks = plain_cfg(get(eval_cfg, "tasks", list(benchmarks.DEFAULT_NUM_FEWSHOT)))
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        self.tasks: list[str] = [str(t) for t in (tasks or [])]
        if self.enabled and not self.tasks:
            raise ConfigError(
                "eval.tasks", "is empty", "list some of [piqa, hellaswag, gsm8k] or use eval=none"
            )
        shots = plain_cfg(get(eval_cfg, "num_fewshot", None)) or {}
        if not isinstance(shots, Mapping):
            raise ConfigError("eval.num_fewshot", f"must be a mapping task -> shots, got {shots!r}")
        self.num_fewshot: dict[str, int | None] = {}
        for task in self.tasks:
            value = shots.get(task, benchmarks.DEFAULT_NUM_FEWSHOT.get(task))
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"eval.num_fewshot.{task}", f"must be an integer >= 0, got {value!r}")
            self.num_fewshot[task] = value
        self.limit = plain_cfg(get(eval_cfg, "limit", None))
        if isinstance(self.limit, Mapping):
            unknown = sorted(set(self.limit) - set(benchmarks.DEFAULT_NUM_FEWSHOT) - set(self.tasks))
            if unknown:
                raise ConfigError(
                    f"eval.limit.{unknown[0]}", "is not a forgetting task", f"use some of {self.tasks}"
                )
            for task, value in self.limit.items():
                items.check_limit(value, f"eval.limit.{task}")
        else:
            items.check_limit(self.limit, "eval.limit")
        self.subset_seed = int(get(eval_cfg, "subset_seed", 0))
        self.scorer = str(get(eval_cfg, "scorer", "fast"))
        if self.scorer not in ("fast", "lm_eval"):
            raise ConfigError(
                "eval.scorer", f"must be fast or lm_eval, got {self.scorer!r}", "use eval.scorer=fast"
            )
        self.token_budget = int(get(eval_cfg, "token_budget", 2048))
        if self.token_budget < 64:
            raise ConfigError("eval.token_budget", f"must be >= 64, got {self.token_budget}", "e.g. 2048")
        self.gold_nll = bool(get(eval_cfg, "gold_nll", True))
        self.generate = bool(get(eval_cfg, "generate", True))
        if not self.generate and not self.gold_nll:
            raise ConfigError(
                "eval.generate",
                "false needs eval.gold_nll=true (GSM8k would measure nothing)",
                "set eval.gold_nll=true",
            )
        self.bootstrap_iters = int(get(eval_cfg, "bootstrap_iters", paired.DEFAULT_ITERS))
        if self.bootstrap_iters < 100:
            raise ConfigError(
                "eval.bootstrap_iters", f"must be >= 100, got {self.bootstrap_iters}", "e.g. 10000"
            )
        self.batch_size = int(get(eval_cfg, "batch_size", 8))
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size", f"must be >= 1, got {self.batch_size}")
        self.seed = int(get(eval_cfg, "seed", 1234))
        data_dir = get(eval_cfg, "data_dir", None)
        if data_dir in ("", "null", "None"):
            data_dir = None
        self.data_dir = Path(os.path.expanduser(str(data_dir))).resolve() if data_dir else None
        self.require_benchmarks = bool(get(eval_cfg, "require_benchmarks", False))
        self.after_each_round = bool(get(eval_cfg, "after_each_round", False))
        self.cache_before = bool(get(eval_cfg, "cache_before", True))
        gen = get(eval_cfg, "gsm8k_max_gen_toks", 256)
        self.max_gen_toks = int(gen) if gen is not None else None
        if self.max_gen_toks is not None and self.max_gen_toks < 1:
            raise ConfigError("eval.gsm8k_max_gen_toks", f"must be >= 1 or null, got {gen!r}")

    # ------------------------------------------------------------------ preflight
    def preflight(self) -> dict[str, str]:
        """Check the benchmark data before training; return ``{task: one-line notice}`` for skipped tasks.

        Raises:
            ConfigError: ``eval.data_dir`` when a file under ``eval.data_dir`` is missing (named in the message), or
                when ``eval.require_benchmarks`` is set and a benchmark is unavailable.
        """
        if self._preflight_done:
            return dict(self.skipped)
        if self.enabled:
            if self.data_dir is not None:
                self.sources.update(self.local_sources())
            else:
                hub_ok = False if benchmarks.hub_offline() else benchmarks.hub_reachable()
                self._force_offline = not hub_ok and not benchmarks.hub_offline()
                for task in self.tasks:
                    source = benchmarks.hub_task_source(task, self.num_fewshot[task])
                    ok, why = benchmarks.dataset_availability(source.hub_path, hub_ok)
                    if ok:
                        self.sources[task] = source
                    else:
                        self.skipped[task] = benchmarks.unavailable_notice(task, why)
                if self.skipped and self.require_benchmarks:
                    raise ConfigError(
                        "eval.data_dir",
                        f"eval.require_benchmarks is set but {', '.join(self.skipped)} can't be loaded (not in the "
                        "local HF datasets cache, hub unreachable or offline)",
                        "set eval.data_dir=<folder with local copies: <dir>/piqa/validation.jsonl, "
                        "<dir>/hellaswag/validation.jsonl, <dir>/gsm8k/{test,train}.jsonl> or run where the hub "
                        "is reachable",
                    )
                for notice in self.skipped.values():
                    log.warning(notice)
            if self.sources:
                self._write_task_yamls()
        self._preflight_done = True
        return dict(self.skipped)

    def local_sources(self) -> dict[str, benchmarks.TaskSource]:
        """The tasks' files under ``eval.data_dir``, checked: present, with the fields lm-eval's task reads, and
        holding at least ``eval.limit`` items (ConfigError naming the option and the file otherwise)."""
        assert self.data_dir is not None
        if not self.data_dir.is_dir():
            raise ConfigError(
                "eval.data_dir",
                f"folder {self.data_dir} does not exist",
                "point it at the local benchmark copies",
            )
        sources = {}
        for task in self.tasks:
            source = benchmarks.local_task_source(task, self.data_dir, self.num_fewshot[task])
            for split, files in source.data_files.items():
                if split in (source.eval_split, source.fewshot_split):
                    items.check_fields(task, files)
            scored = source.data_files[source.eval_split]
            items.resolve_size(self.limit, task, items.count_items(scored), where=f"({scored[0]})")
            sources[task] = source
        return sources

    def _write_task_yamls(self) -> None:
        if self.run_dir is not None:
            self._tasks_dir = self.run_dir / "lm_eval_tasks"
        else:
            self._tasks_dir = Path(tempfile.mkdtemp(prefix="rigsa_lm_eval_tasks_"))
        self._tasks_dir.mkdir(parents=True, exist_ok=True)
        for stale in self._tasks_dir.glob("*.yaml"):
            stale.unlink()
        for source in self.sources.values():
            benchmarks.write_task_yaml(self._tasks_dir, source)

    @property
    def tasks_dir(self) -> Path | None:
        """The folder of generated lm-eval task YAMLs (usable with ``lm_eval --include_path``)."""
        return self._tasks_dir

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, model: torch.nn.Module, stage: str) -> dict[str, float]:
        """Run the drift probe and the benchmarks on ``model``; return flat ``forget/.../<stage>`` metrics.

        ``stage`` is ``before`` (the untouched base model: computes/loads the drift reference and uses the
        ``before`` cache), ``after``, ``round<k>`` or any other name. Train/eval flags and RNG states are restored.
        """
        stage = str(stage)
        if not stage or "/" in stage:
            raise ValueError(f"bad stage name {stage!r}")
        self.preflight()
        started = time.time()
        record: dict[str, Any] = {"metrics": {}, "from_cache": False, "lm_eval": None, "timing": {}}
        with benchmarks.preserve_model_state(model, self.tokenizer):
            if self.drift is not None:
                record["metrics"].update(self._drift_metrics(model, stage))
                record["timing"]["drift"] = round(time.time() - started, 3)
            if self.enabled and self.sources:
                record["metrics"].update(self._benchmark_metrics(model, stage, record))
        record["seconds"] = round(time.time() - started, 3)
        self.stages[stage] = record
        self._finish_stage(stage)
        return dict(record["metrics"])

    def stage_seconds(self, stage: str) -> dict[str, float]:
        """Where a scored stage's time went: ``drift`` and each benchmark (``gsm8k``: generation and reference NLL;
        the multiple-choice tasks together, e.g. ``hellaswag+piqa``, as lm-eval batches their requests). Empty for
        a stage read from the cache or copied."""
        return dict((self.stages.get(stage) or {}).get("timing") or {})

    def _drift_metrics(self, model: torch.nn.Module, stage: str) -> dict[str, float]:
        assert self.drift is not None
        if stage == "before":
            self.drift.reference(model)
        elif not self.drift.has_reference:
            log.warning(
                "drift: no base answers for stage %r (evaluate 'before' on the base model first)", stage
            )
            return {}
        return {f"{k}/{stage}": v for k, v in self.drift.measure(model).items()}

    def _cache_key_fields(self, tasks: list[str]) -> dict[str, Any]:
        return {
            "format": _CACHE_FORMAT,
            "model_key": self.model_key,
            "tasks": sorted(tasks),
            "num_fewshot": {t: self.num_fewshot[t] for t in sorted(tasks)},
            "limit": self.limit,
            "subset_seed": self.subset_seed,
            "seed": self.seed,
            "max_gen_toks": self.max_gen_toks,
            "scorer": self.scorer,
            "batch_size": self.batch_size,
            "token_budget": self.token_budget,
            "gold_nll": self.gold_nll,
            "generate": self.generate,
            "data": {t: self.sources[t].digest for t in sorted(tasks)},
            "lm_eval_version": benchmarks.lm_eval_version(),
        }

    def _choose_items(self, task: str, n_docs: int) -> list[int] | None:
        """The seeded fixed subset of ``task``'s scored split (None: every item)."""
        size = items.resolve_size(self.limit, task, n_docs)
        return None if size is None else items.choose_items(n_docs, size, self.subset_seed)

    def _benchmark_metrics(
        self, model: torch.nn.Module, stage: str, record: dict[str, Any]
    ) -> dict[str, float]:
        tasks = [t for t in self.tasks if t in self.sources]
        key_fields = self._cache_key_fields(tasks)
        cache_path = None
        if stage == "before" and self.cache_before and self.cache_dir is not None:
            cache_path = benchmarks.before_cache_path(self.cache_dir, key_fields)
        cached = self._read_before_cache(cache_path, key_fields)
        if cached is not None:
            results, per_item = cached
            record["from_cache"] = True
            log.info("forgetting: 'before' benchmark numbers from cache %s", cache_path)
        else:
            raw = self._score(model, stage, tasks)
            if raw is None:
                return {}
            record["timing"].update(benchmark_seconds(raw.get("timing")))
            gold = raw.get("gold_nll") or {}
            per_item = {
                task: items.records_from_samples(
                    task, (raw.get("samples") or {}).get(task, []), gold.get(task)
                )
                for task in tasks
            }
            results = benchmarks.trim_results(
                {k: v for k, v in raw.items() if k not in ("gold_nll", "timing")}
            )
            if cache_path is not None:
                atomic_write_json(cache_path, {"key": key_fields, "results": results, "items": per_item})
        record["lm_eval"] = results
        record["items"] = per_item
        metrics: dict[str, float] = {}
        for task, values in benchmarks.extract_metrics(results).items():
            for name, value in values.items():
                metrics[f"forget/{task}/{name}/{stage}"] = value
        for task, cols in per_item.items():
            for name in items.CONTINUOUS:
                if cols.get(name):
                    metrics[f"forget/{task}/{name}/{stage}"] = items.means(cols)[name]
            metrics[f"forget/{task}/n_items"] = float(len(cols.get("doc_id", [])))
        return metrics

    def _score(self, model: torch.nn.Module, stage: str, tasks: list[str]) -> dict[str, Any] | None:
        """One lm-eval run over ``tasks`` (lm-eval's raw output); None when it failed and the tasks were skipped."""
        self._note_limit()
        log.info(
            "forgetting: %s on %s (stage %s; lm-eval %s task definitions)",
            "fast scorer" if self.scorer == "fast" else "lm-eval HFLM",
            ", ".join(tasks),
            stage,
            benchmarks.lm_eval_version(),
        )
        try:
            with benchmarks.hub_offline_guard(self._force_offline):
                return benchmarks.run_lm_eval(
                    model,
                    self.tokenizer,
                    tasks,
                    self._get_task_manager(),
                    num_fewshot={t: s for t, s in self.num_fewshot.items() if s is not None},
                    limit=None,
                    batch_size=self.batch_size,
                    seed=self.seed,
                    max_gen_toks=self.max_gen_toks,
                    log_samples=True,
                    choose_items=self._choose_items,
                    scorer=self.scorer,
                    token_budget=self.token_budget,
                    gold_nll=self.gold_nll,
                    generate=self.generate,
                    progress_label=f"{self._progress_label()} {stage}",
                )
        except ConfigError:
            raise
        except Exception as exc:
            if self.require_benchmarks:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            for task in tasks:
                notice = f"forgetting: {task} failed at stage {stage}: {type(exc).__name__}: {first}"
                self.skipped.setdefault(task, notice)
            log.warning(
                "forgetting: lm-eval failed at stage %s (%s: %s); benchmarks skipped",
                stage,
                type(exc).__name__,
                first,
            )
            return None
        finally:
            self.lm_eval_calls += 1

    def _progress_label(self) -> str:
        if self.progress_label:
            return self.progress_label
        return "forgetting" if self.verbose else "forgetting curve"

    def copy_stage(self, source: str, stage: str, reason: str) -> dict[str, float]:
        """Record ``stage`` as identical to ``source`` without scoring again (zero-shot: no training happened)."""
        if source not in self.stages:
            raise ValueError(f"no stage {source!r} to copy")
        src = self.stages[source]
        metrics = {
            k.rsplit("/", 1)[0] + f"/{stage}": v
            for k, v in src["metrics"].items()
            if k.endswith(f"/{source}")
        }
        metrics.update({k: v for k, v in src["metrics"].items() if not k.endswith(f"/{source}")})
        self.stages[stage] = {
            "metrics": metrics,
            "from_cache": src.get("from_cache", False),
            "lm_eval": src.get("lm_eval"),
            "items": src.get("items"),
            "seconds": 0.0,
            "same_as": source,
            "note": reason,
        }
        self._finish_stage(stage)
        log.info("forgetting [%s]: same as %s (%s)", stage, source, reason)
        return dict(self.stages[stage]["metrics"])

    def _finish_stage(self, stage: str) -> None:
        """Paired statistics, the per-item file and ``forgetting.json`` right away, then the lines for the user."""
        record = self.stages[stage]
        record["paired"] = self.paired_stats(stage)
        record["metrics"].update(record["paired"])
        record["intervals"] = {k: v.as_dict() for k, v in self.stage_intervals(stage).items()}
        if self.write_each_stage:
            self.save_stage(stage)
        for line in self.stage_lines(stage):
            log.log(logging.INFO if self.verbose else logging.DEBUG, line)

    def save_stage(self, stage: str) -> None:
        """Write the per-item file of ``stage`` and ``forgetting.json`` now (nothing without a run folder)."""
        if self.run_dir is None:
            return
        if self.stages[stage].get("items"):
            items.save_records(self.items_path(stage), self.stages[stage]["items"])
        self.write(self.run_dir)

    @staticmethod
    def _read_before_cache(
        path: Path | None, key_fields: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if path is None or not path.is_file():
            return None
        import json

        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("forgetting: ignoring unreadable cache %s (%s)", path, exc)
            return None
        if data.get("key") != json.loads(json.dumps(benchmarks._plain(key_fields))):
            return None
        if "results" not in data or "items" not in data:
            return None
        return data["results"], data["items"]

    def _get_task_manager(self) -> Any:
        if self._task_manager is None:
            assert self._tasks_dir is not None
            self._task_manager = benchmarks.build_task_manager(self._tasks_dir)
        return self._task_manager

    def _note_limit(self) -> None:
        if self.limit is not None and not self._limit_noted:
            log.warning(self.limit_note)
            self._limit_noted = True
