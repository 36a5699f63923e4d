"""Finding and reading a sweep's job folders (``metrics.json``, ``failed.json``, ``.hydra/``, the last log line)
and the sweep's own ``multirun.yaml`` (its command line and grid)."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigsa_lightning.config.access import get

NAN = float("nan")
_SKIP_DIRS = {"wandb", "checkpoints", "adapter", "csv", "lightning_logs", "__pycache__"}
_MAX_DEPTH = 4


# --------------------------------------------------------------------------------------------------- job discovery
@dataclass
class Job:
    """One job folder of the sweep and what it left behind."""

    path: Path
    rel: str
    status: str  # completed | failed | incomplete
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    error: str = ""


def _is_job_dir(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / "failed.json").is_file() or (path / ".hydra").is_dir()


def find_job_dirs(folder: Path) -> list[Path]:
    """Job folders under ``folder`` (or ``folder`` itself when it is a single run), sorted by job number."""
    if _is_job_dir(folder):
        return [folder]
    found: list[Path] = []

    def walk(path: Path, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.name in _SKIP_DIRS or ".partial" in child.name:
                continue
            if _is_job_dir(child):
                found.append(child)
            else:
                walk(child, depth + 1)

    walk(folder, 1)

    def job_key(p: Path) -> tuple[Any, ...]:
        rel = p.relative_to(folder)
        m = re.match(r"(\d+)_", p.name)
        return (str(rel.parent), int(m.group(1)) if m else 10**9, p.name)

    return sorted(found, key=job_key)


def _load_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


_HYDRA_REF = re.compile(r"\$\{hydra:([\w.]+)\}")


def _load_yaml(path: Path, hydra: Any = None) -> Any:
    """A YAML file as plain containers, interpolations resolved where possible (None when unreadable).

    ``hydra``: the job's ``hydra`` node (its ``.hydra/hydra.yaml``); each ``${hydra:key}`` found in it is replaced
    by its value first (e.g. a study's ``${hydra:sweep.dir}/rigsa_paper_s${seed}``). The other ``${hydra:...}``
    interpolations are left as written, never resolved by the reading process's own Hydra run (whose resolver
    would give that process's directories), and so is any other interpolation that needs Hydra's runtime."""
    from omegaconf import OmegaConf

    try:
        conf = OmegaConf.load(path)
        conf = OmegaConf.create(_substitute_hydra(OmegaConf.to_container(conf, resolve=False), hydra))
    except Exception:  # noqa: BLE001 - a broken file only loses optional information
        return None
    try:
        return OmegaConf.to_container(conf, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} interpolations outside a Hydra app
        return _resolve_each(conf, OmegaConf.to_container(conf, resolve=False), "")


def _substitute_hydra(node: Any, hydra: Any) -> Any:
    """``node`` with every ``${hydra:key}`` whose ``key`` has a value in ``hydra`` replaced by that value (a whole
    ``"${hydra:key}"`` by the value itself, not its text); one that has none (``hydra`` None, or a value that does
    not resolve on its own, e.g. ``sweep.subdir: ${name}_s${seed}``) is escaped (``\\${hydra:key}``), so that
    resolving the config leaves it as written."""
    from omegaconf import OmegaConf

    def lookup(key: str) -> Any:
        if hydra is None:
            return None
        try:
            return OmegaConf.select(hydra, key, throw_on_resolution_failure=True)
        except Exception:  # noqa: BLE001 - an interpolation inside hydra.yaml that needs the app's config
            return None

    def value_of(match: re.Match[str]) -> str:
        value = lookup(match.group(1))
        return "\\" + match.group(0) if value is None or OmegaConf.is_config(value) else str(value)

    if isinstance(node, dict):
        return {k: _substitute_hydra(v, hydra) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_hydra(v, hydra) for v in node]
    if not isinstance(node, str):
        return node
    whole = _HYDRA_REF.fullmatch(node)
    if whole is not None:
        value = lookup(whole.group(1))
        return "\\" + node if value is None or OmegaConf.is_config(value) else value
    return _HYDRA_REF.sub(value_of, node)


def _hydra_node(folder: Path) -> Any:
    """The ``hydra`` node of a job's ``.hydra/hydra.yaml`` (None when absent or unreadable)."""
    from omegaconf import OmegaConf

    try:
        return (
            OmegaConf.load(folder / "hydra.yaml").get("hydra") if (folder / "hydra.yaml").is_file() else None
        )
    except Exception:  # noqa: BLE001 - a broken file only loses optional information
        return None


def _resolve_each(conf: Any, node: Any, key: str) -> Any:
    """``node`` (at dotted ``key`` of ``conf``) with every interpolation that resolves on its own resolved (e.g.
    ``adapter.lr: ${lr_by_method.${adapter.method}}``) and the others (``${hydra:...}``) left as written."""
    from omegaconf import OmegaConf

    if isinstance(node, dict):
        return {k: _resolve_each(conf, v, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    if isinstance(node, str) and "${" in node:
        try:
            value = OmegaConf.select(conf, key, throw_on_resolution_failure=True)
        except Exception:  # noqa: BLE001 - an interpolation that needs Hydra's runtime
            return node
        return OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value
    return node


def _last_log_line(path: Path) -> str:
    logs = sorted(path.glob("*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    try:
        lines = [ln.strip() for ln in logs[-1].read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def load_job(path: Path, root: Path) -> Job:
    """Read one job folder: completed (``metrics.json``), failed (``failed.json``) or incomplete (neither)."""
    rel = "." if path == root else str(path.relative_to(root))
    folder = path / ".hydra"
    config = (
        _load_yaml(folder / "config.yaml", _hydra_node(folder))
        if (folder / "config.yaml").is_file()
        else None
    )
    overrides = _load_yaml(folder / "overrides.yaml") if (folder / "overrides.yaml").is_file() else None
    job = Job(
        path=path,
        rel=rel,
        status="incomplete",
        config=config if isinstance(config, dict) else {},
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
    )
    metrics_file, failed_file = path / "metrics.json", path / "failed.json"
    metrics: Any = None
    metrics_error = ""
    if metrics_file.is_file():
        try:
            metrics = _load_json(metrics_file)
            if not isinstance(metrics, dict):
                metrics_error = "metrics.json is not a JSON object"
                metrics = None
        except (OSError, ValueError) as exc:
            metrics_error = f"unreadable metrics.json ({type(exc).__name__}: {exc})"
    completed = metrics is not None and metrics.get("status", "completed") == "completed"
    # A failed.json newer than metrics.json (e.g. a resumed run that then crashed) wins.
    if completed and failed_file.is_file() and failed_file.stat().st_mtime > metrics_file.stat().st_mtime:
        completed = False
    if completed:
        job.status, job.metrics = "completed", metrics
        return job
    if failed_file.is_file():
        job.status = "failed"
        try:
            info = _load_json(failed_file)
            job.error = str(info.get("error", "")) if isinstance(info, dict) else str(info)
        except (OSError, ValueError) as exc:
            job.error = f"unreadable failed.json ({type(exc).__name__})"
        return job
    if (path / "FAILED").is_file():
        job.status = "failed"
        job.error = (path / "FAILED").read_text(errors="replace").strip()
        return job
    if metrics_error:
        job.status, job.error = "failed", metrics_error
        return job
    if metrics is not None:
        job.error = f"metrics.json has status {metrics.get('status')!r} (not completed)"
        return job
    last = _last_log_line(path)
    job.error = "no metrics.json or failed.json (still running, killed or crashed hard)"
    if last:
        job.error += f"; last log line: {last}"
    return job


# ------------------------------------------------------------------------------------------ values in job files
def _num(value: Any) -> float:
    """A finite float or NaN (strings such as "nan" or "N/A", None, lists → NaN)."""
    if isinstance(value, bool) or value is None:
        return NAN
    try:
        out = float(value)
    except (TypeError, ValueError):
        return NAN
    return out if math.isfinite(out) else NAN


def _finite(value: float) -> bool:
    """Whether ``value`` is a finite int or float."""
    return isinstance(value, (int, float)) and math.isfinite(value)


# ------------------------------------------------------------------------------------- the sweep's multirun.yaml
def _sweep_command(folder: Path) -> str | None:
    """The command line of the sweep, from Hydra's ``multirun.yaml`` (None when absent)."""
    data = _load_yaml(folder / "multirun.yaml") if (folder / "multirun.yaml").is_file() else None
    overrides = get(data, "hydra.overrides.task") if isinstance(data, dict) else None
    if not isinstance(overrides, list):
        return None
    return "python -m rigsa_lightning.train -m " + " ".join(str(o) for o in overrides)


def _sweep_grid(folder: Path) -> str | None:
    """The sweep's grid (``hydra.sweeper.params`` of ``multirun.yaml``) as Markdown (None when absent)."""
    data = _load_yaml(folder / "multirun.yaml") if (folder / "multirun.yaml").is_file() else None
    params = get(data, "hydra.sweeper.params") if isinstance(data, dict) else None
    if not isinstance(params, dict) or not params:
        return None
    return ", ".join(f"`{k}`: {v}" for k, v in params.items())


def _csv_rows(job: Job) -> list[dict[str, str]] | None:
    """The rows of the job's ``csv/metrics.csv`` (None without it)."""
    path = Path(job.path) / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def val_along(job: Job) -> list[float]:
    """Every validation accuracy of the run in order (``csv/metrics.csv``'s ``val/acc``; empty without it): is it
    still climbing at the end of the budget?"""
    return [float(row["val/acc"]) for row in _csv_rows(job) or [] if row.get("val/acc")]


#: Whole-run stage totals (seconds) a checkpoint carries across a resume (``training/timing.py``).
_RUN_STAGES = ("steps_s", "val_s", "curve_s", "prune_s")
#: The rest of a process's time outside training: loading, data, the evaluations before and after training.
_OUTSIDE_TRAINING = ("load_s", "data_s", "eval_before_s", "eval_after_s")


def run_seconds(metrics: dict[str, Any], part: str = "total") -> float:
    """A run's wall time in seconds, ``part`` ``"total"`` (``time/total_s``) or ``"train"`` (``time/train_s``).

    A run that records ``time/train_before_s`` recorded the whole run's (its checkpoints carry the earlier
    processes' fit time). An older resumed run (``resumed_from``) recorded its last process's, which lived through
    the resumed part only; there the training time is the whole run's stage totals (training steps, validations,
    forgetting curve, prunes: checkpointed, so counted across every process) plus this process's rest of the fit,
    and the total adds this process's loading, data and evaluations. Either way the time lost to the interruption
    (steps redone since the checkpoint, the earlier processes' start-up) is left out. NaN when the run recorded
    neither."""
    recorded = _num(metrics.get(f"time/{part}_s"))
    if not metrics.get("resumed_from") or _finite(_num(metrics.get("time/train_before_s"))):
        return recorded
    stages = [_num(metrics.get(f"time/{name}")) for name in _RUN_STAGES]
    if not all(_finite(v) for v in stages):  # a run before the stage totals: its process's time only
        return recorded
    other = _num(metrics.get("time/fit_other_s"))
    train = sum(stages) + (other if _finite(other) else 0.0)
    if part == "train":
        return train
    return train + sum(v for v in (_num(metrics.get(f"time/{k}")) for k in _OUTSIDE_TRAINING) if _finite(v))


def steps_trained(job: Job) -> float:
    """The optimizer steps the run trained: ``time/steps_n``, or for a run that predates it the last step of a
    training or validation row of ``csv/metrics.csv`` + 1 (steps count from 0; a validation row sits at the last
    step of its batch, while a forgetting-curve row (``curve/*``) carries the count of steps done, one more) when the
    CSV holds a training row, 0 when it holds none (no training); NaN without either."""
    n = _num(job.metrics.get("time/steps_n"))
    if _finite(n):
        return n
    rows = _csv_rows(job)
    if rows is None:
        return NAN

    def logs(row: dict[str, str], prefix: str) -> bool:
        return any(v for k, v in row.items() if k and k.startswith(prefix))

    last, trained = -1, False
    for row in rows:
        train = logs(row, "train/")
        if row.get("step") and (train or logs(row, "val/")):
            last = max(last, int(float(row["step"])))
        trained = trained or train
    return float(last + 1) if trained else 0.0
