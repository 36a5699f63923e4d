"""The forgetting benchmarks as lm-eval tasks: where their data come from (the hub or local files) and the task YAMLs.

The prompts, metrics and filters are lm-eval's own: every task we run is a generated task YAML that ``include:``s
the built-in YAML found inside the installed ``lm_eval`` package (never a copy of it), overriding only

* ``task`` (the built-in name, so results keys stay ``piqa`` / ``hellaswag`` / ``gsm8k``), ``tag: []``,
* ``num_fewshot`` (``eval.num_fewshot``; defaults are lm-eval's: piqa 0, hellaswag 0, gsm8k 5),
* with ``eval.data_dir``: ``dataset_path: json|parquet``, ``dataset_name: null`` and
  ``dataset_kwargs.data_files`` with absolute paths of the local files (and ``null`` for splits without a file).

The generated folder is loaded with ``TaskManager(include_path=<folder>, include_defaults=False)`` (instant; the
default index of ~14k YAMLs takes seconds). The same folder works with the ``lm_eval`` CLI (``--include_path``).

Local copies (``eval.data_dir=<folder>``), in the original formats and field names, one folder per task::

    <data_dir>/piqa/validation.jsonl        fields goal, sol1, sol2, label (int 0/1)         [required]
    <data_dir>/piqa/train.jsonl             only needed for few-shot > 0                     [optional]
    <data_dir>/hellaswag/validation.jsonl   fields ind, activity_label, ctx_a, ctx_b, ctx, endings (list of 4),
                                            source_id, split, split_type, label (string "0".."3")   [required]
    <data_dir>/hellaswag/train.jsonl        only needed for few-shot > 0                     [optional]
    <data_dir>/gsm8k/test.jsonl             fields question, answer (ending in "#### <number>")      [required]
    <data_dir>/gsm8k/train.jsonl            the few-shot examples (required when few-shot > 0, the default)

Instead of ``<split>.jsonl`` a split may be ``<split>.json``, ``<split>.parquet``, shards ``<split>-*.parquet`` /
``<split>-*.jsonl`` or a folder ``<split>/*.parquet``, directly in ``<data_dir>/<task>/`` or in its ``data/`` or
``<dataset config>/`` subfolder (``main/`` for gsm8k), so ``hf download <dataset> --repo-type dataset --local-dir
<data_dir>/<task>`` layouts (``data/validation-00000-of-00001.parquet``, ``main/test-00000-of-00001.parquet``)
work as downloaded. One format per task. The split names are the built-in task's own (``validation_split`` /
``test_split`` for the scored split, ``fewshot_split`` or ``training_split`` for few-shot examples).

Without ``eval.data_dir`` a task runs when its hub dataset (``baber/piqa``, ``Rowan/hellaswag``, ``openai/gsm8k``)
is in the local HF datasets cache or the hub answers; otherwise it is skipped with one line (see
:func:`unavailable_notice`). Nothing here waits on hub retries: when the hub is unreachable the HF offline switches
are forced on for the duration of the evaluation (:func:`hub_offline_guard`).

Running the tasks on the live model is :mod:`~rigsa_lightning.forgetting.benchmarks` (it re-exports these names).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.models import hub_reachable

#: The forgetting benchmarks of the paper and their built-in YAML inside ``lm_eval/tasks``.
BUILTIN_TASK_YAMLS: dict[str, str] = {
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "gsm8k": "gsm8k/gsm8k.yaml",
}
#: lm-eval's default few-shot counts for them (what ``eval.num_fewshot`` defaults to).
DEFAULT_NUM_FEWSHOT: dict[str, int] = {"piqa": 0, "hellaswag": 0, "gsm8k": 5}
_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def lm_eval_version() -> str:
    """The installed lm-eval version (part of every cache key)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:  # pragma: no cover - editable/odd installs
        import lm_eval

        return str(getattr(lm_eval, "__version__", "unknown"))


def lm_eval_tasks_dir() -> Path:
    """Folder of lm-eval's built-in task YAMLs in the installed package (found without importing ``lm_eval``)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "eval.enabled", "lm-eval is not installed", "pip install 'lm-eval[hf]' or use eval=none"
        )
    return Path(spec.origin).parent / "tasks"


def builtin_task_yaml(task: str) -> Path:
    """Absolute path of the built-in YAML of ``task`` (one of :data:`BUILTIN_TASK_YAMLS`, or ``<task>/<task>.yaml``)."""
    root = lm_eval_tasks_dir()
    path = root / BUILTIN_TASK_YAMLS.get(task, f"{task}/{task}.yaml")
    if not path.is_file():
        raise ConfigError(
            "eval.tasks",
            f"no built-in lm-eval task {task!r} (looked for {path})",
            f"use some of {sorted(BUILTIN_TASK_YAMLS)}",
        )
    return path.resolve()


def builtin_task_config(task: str) -> dict[str, Any]:
    """The built-in task config as plain data (includes resolved, ``!function`` tags left as strings)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(builtin_task_yaml(task), resolve_func=False, recursive=True)


@dataclass
class TaskSource:
    """Where one task's documents come from and how its generated YAML looks.

    Attributes:
        task: lm-eval task name (``piqa``, ``hellaswag``, ``gsm8k``).
        builtin_yaml: absolute path of the built-in YAML the generated one includes.
        num_fewshot: few-shot count written into the generated YAML (None: lm-eval's default).
        hub_path / hub_name: the built-in ``dataset_path`` / ``dataset_name``.
        eval_split: the split that is scored; fewshot_split: the split few-shot examples come from.
        builder: ``json`` or ``parquet`` for local files, None for the hub.
        data_files: split -> absolute file paths (local only).
        digest: sha256 of the local files' bytes, or ``hub:<path>/<name>``.
    """

    task: str
    builtin_yaml: Path
    num_fewshot: int | None
    hub_path: str
    hub_name: str | None
    eval_split: str
    fewshot_split: str | None
    split_keys: dict[str, str | None] = field(default_factory=dict)
    builder: str | None = None
    data_files: dict[str, list[str]] = field(default_factory=dict)
    digest: str = ""

    @property
    def local(self) -> bool:
        """Whether the task reads local files (``eval.data_dir``)."""
        return self.builder is not None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (for ``forgetting.json``)."""
        return {
            "source": "local" if self.local else "hub",
            "dataset": self.builder if self.local else f"{self.hub_path}/{self.hub_name or 'default'}",
            "data_files": self.data_files,
            "eval_split": self.eval_split,
            "fewshot_split": self.fewshot_split,
            "num_fewshot": self.num_fewshot,
            "builtin_yaml": str(self.builtin_yaml),
            "digest": self.digest,
        }


def _splits(cfg: Mapping[str, Any], num_fewshot: int | None) -> tuple[str, str | None]:
    """(scored split, few-shot split) the way lm-eval picks them: test before validation; fewshot before train."""
    eval_split = cfg.get("test_split") or cfg.get("validation_split")
    if not eval_split:
        raise ConfigError("eval.tasks", f"task {cfg.get('task')!r} has neither a test nor a validation split")
    shots = cfg.get("num_fewshot") if num_fewshot is None else num_fewshot
    fewshot = None
    if shots:
        fewshot = (
            cfg.get("fewshot_split")
            or cfg.get("training_split")
            or cfg.get("validation_split")
            or cfg.get("test_split")
        )
    return str(eval_split), (str(fewshot) if fewshot else None)


def _find_split_files(task_dir: Path, split: str, config_name: str | None) -> list[Path]:
    """Local files of one split (see the module docstring for the accepted names)."""
    subdirs = [task_dir, task_dir / "data"] + (
        [task_dir / config_name] if config_name else [task_dir / "default"]
    )
    patterns = [
        f"{split}.jsonl",
        f"{split}.json",
        f"{split}.parquet",
        f"{split}-*.parquet",
        f"{split}-*.jsonl",
        f"{split}/*.parquet",
        f"{split}/*.jsonl",
    ]
    for sub in subdirs:
        if not sub.is_dir():
            continue
        for pattern in patterns:
            hits = sorted(Path(p) for p in glob.glob(str(sub / pattern)))
            hits = [h for h in hits if h.is_file() and h.suffix in _BUILDERS]
            if hits:
                return [h.resolve() for h in hits]
    return []


def files_digest(paths: Sequence[str | os.PathLike]) -> str:
    """sha256 over the names and bytes of ``paths`` (cache key of local benchmark data)."""
    h = hashlib.sha256()
    for p in sorted(str(x) for x in paths):
        h.update(os.path.basename(p).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def local_task_source(task: str, data_dir: str | os.PathLike, num_fewshot: int | None) -> TaskSource:
    """Resolve ``<data_dir>/<task>/`` files; raise ConfigError("eval.data_dir", ...) naming a missing file."""
    cfg = builtin_task_config(task)
    eval_split, fewshot_split = _splits(cfg, num_fewshot)
    task_dir = Path(data_dir).expanduser().resolve() / task
    config_name = cfg.get("dataset_name")
    files: dict[str, list[str]] = {}
    splits = {str(cfg[k]) for k in _SPLIT_KEYS if cfg.get(k)}
    required = {eval_split} | ({fewshot_split} if fewshot_split else set())
    for split in sorted(splits | required):
        hits = _find_split_files(task_dir, split, config_name)
        if hits:
            files[split] = [str(h) for h in hits]
        elif split in required:
            why = "the scored split" if split == eval_split else f"the few-shot examples ({num_fewshot}-shot)"
            raise ConfigError(
                "eval.data_dir",
                f"missing {task_dir / (split + '.jsonl')} ({task} {split} split: {why})",
                f"put the {task} {split} split there as .jsonl or .parquet with the original fields"
                + (", or set eval.num_fewshot." + task + "=0" if split != eval_split else "")
                + f", or drop {task} from eval.tasks",
            )
    builders = {_BUILDERS[Path(p).suffix] for paths in files.values() for p in paths}
    if len(builders) > 1:
        raise ConfigError(
            "eval.data_dir", f"{task_dir} mixes json and parquet files", "use one format per task"
        )
    split_keys = {k: (str(cfg[k]) if cfg.get(k) and str(cfg[k]) in files else None) for k in _SPLIT_KEYS}
    all_files = [p for paths in files.values() for p in paths]
    return TaskSource(
        task=task,
        builtin_yaml=builtin_task_yaml(task),
        num_fewshot=num_fewshot,
        hub_path=str(cfg.get("dataset_path")),
        hub_name=cfg.get("dataset_name"),
        eval_split=eval_split,
        fewshot_split=fewshot_split,
        split_keys=split_keys,
        builder=builders.pop(),
        data_files=files,
        digest=files_digest(all_files),
    )


def hub_task_source(task: str, num_fewshot: int | None) -> TaskSource:
    """A task read from its hub dataset (through the HF datasets cache)."""
    cfg = builtin_task_config(task)
    eval_split, fewshot_split = _splits(cfg, num_fewshot)
    path, name = str(cfg.get("dataset_path")), cfg.get("dataset_name")
    return TaskSource(
        task=task,
        builtin_yaml=builtin_task_yaml(task),
        num_fewshot=num_fewshot,
        hub_path=path,
        hub_name=name,
        eval_split=eval_split,
        fewshot_split=fewshot_split,
        digest=f"hub:{path}/{name or 'default'}",
    )


def hub_offline() -> bool:
    """Whether the HF offline switches are on (as seen by ``datasets`` when it is already imported)."""
    env = any(
        os.environ.get(v, "").upper() in {"1", "TRUE", "YES", "ON"}
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    ds = sys.modules.get("datasets.config")
    return env or bool(getattr(ds, "HF_HUB_OFFLINE", False))


def dataset_cached(path: str) -> bool:
    """Whether a hub dataset has a prepared copy in the HF datasets cache (what ``datasets`` uses offline)."""
    from datasets import config as ds_config
    from datasets.naming import camelcase_to_snakecase

    parts = path.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = os.path.join(os.path.expanduser(str(ds_config.HF_DATASETS_CACHE)), "___".join(parts))
    return any(os.path.isdir(p) for p in glob.glob(os.path.join(root, "*", "*", "*")))


def dataset_availability(path: str, hub_ok: bool | None = None) -> tuple[bool, str]:
    """(available, how or why not) for a hub dataset, without waiting on any retry.

    ``hub_ok`` is the (already probed) reachability of the hub; None probes it here.
    """
    if dataset_cached(path):
        return True, "local HF datasets cache"
    if hub_ok is None:
        hub_ok = not hub_offline() and hub_reachable()
    if hub_ok:
        return True, "hub"
    offline = "offline mode is on" if hub_offline() else "the hub can't be reached"
    return False, f"dataset {path} is not in the local HF datasets cache and {offline}"


def unavailable_notice(task: str, reason: str) -> str:
    """The one line printed for a skipped benchmark: which task, why, and the two ways out."""
    return (
        f"forgetting: skipping {task}: {reason} -> either let it reach the Hugging Face hub (network, without "
        f"HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) or set eval.data_dir=<folder with local copies> "
        f"(<data_dir>/{task}/...; see rigsa_lightning/forgetting/tasks.py)"
    )


@contextlib.contextmanager
def hub_offline_guard(active: bool) -> Iterator[None]:
    """Force the HF offline switches of ``huggingface_hub`` and ``datasets`` on while ``active`` (restored after).

    Used when the hub is unreachable but the variables were not set: the cached datasets then load at once instead
    of after ~23 s of retries per dataset.
    """
    if not active:
        yield
        return
    import huggingface_hub.constants as hub_constants
    from datasets import config as ds_config

    saved = (hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE)
    hub_constants.HF_HUB_OFFLINE = True
    ds_config.HF_HUB_OFFLINE = True
    ds_config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE = saved


def write_task_yaml(out_dir: str | os.PathLike, source: TaskSource) -> Path:
    """Write ``<out_dir>/<task>.yaml`` including the built-in config, with local data files if any."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"include": str(source.builtin_yaml), "task": source.task, "tag": []}
    if source.num_fewshot is not None:
        doc["num_fewshot"] = int(source.num_fewshot)
    if source.local:
        doc["dataset_path"] = source.builder
        doc["dataset_name"] = None
        doc["dataset_kwargs"] = {"data_files": {k: list(v) for k, v in source.data_files.items()}}
        doc.update(source.split_keys)
    path = out / f"{source.task}.yaml"
    header = (
        "# Generated by rigsa_lightning.forgetting.benchmarks: lm-eval's built-in task over these data.\n"
    )
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return path


def build_task_manager(include_dir: str | os.PathLike) -> Any:
    """A TaskManager that indexes only the generated YAMLs (instant)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_dir), include_defaults=False)
