"""Keep a long sweep's finished jobs across machines: copy the small files of every completed job folder into a
folder that is committed (``save``), and put them back before the same sweep command runs again (``restore``), so
``skip_completed`` skips them and the report is rebuilt from every job finished so far.

    python -m rigsa_lightning.report.archive save outputs/study/cpu docs/results/study_cpu/jobs
    python -m rigsa_lightning.report.archive restore docs/results/study_cpu/jobs outputs/study/cpu

Kept per job: ``metrics.json``, ``forgetting.json``, ``prune_history.json``, the per-item records ``forgetting_items/*.json.gz``, the Hydra
bookkeeping ``.hydra/``, the CSV metrics ``csv/metrics.csv`` and the job's log (the evidence every number of the
report traces to); left out: checkpoints, the exported adapter and W&B files (large, reproducible from the command).
Only completed jobs are saved; a job already present at the destination is replaced by the newer copy on ``save``
and never overwritten on ``restore``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from rigsa_lightning.io import copy_changed_files
from rigsa_lightning.report.jobs import find_job_dirs

# Files and folders of a job folder that are kept (relative paths; folders are copied whole).
KEPT = (
    "metrics.json",
    "forgetting.json",
    "forgetting_items",
    ".hydra",
    "csv/metrics.csv",
    "prune_history.json",
)
KEPT_SUFFIXES = (".log",)


def is_completed(job: Path) -> bool:
    """Whether ``job`` holds a completed run (``metrics.json`` with ``status: completed``)."""
    try:
        return json.loads((job / "metrics.json").read_text()).get("status") == "completed"
    except (OSError, ValueError, AttributeError):
        return False


def same_run(job: Path, archived: Path) -> bool:
    """Whether ``archived`` already holds the run in ``job`` (byte-identical ``metrics.json``): a rerun that skipped
    the job changed nothing worth saving, only Hydra's config files (rewritten for the rerun's command)."""
    try:
        return (archived / "metrics.json").read_bytes() == (job / "metrics.json").read_bytes()
    except OSError:
        return False


def restore_config(archived: Path, job: Path) -> bool:
    """Copy the archived job's ``.hydra/*.yaml`` back into ``job`` where they differ (a skipping rerun rewrote them);
    return whether anything was restored."""
    return copy_changed_files(archived / ".hydra", job / ".hydra")


def copy_job(src: Path, dst: Path) -> None:
    """Copy the kept files of job folder ``src`` to ``dst`` (replacing it; written beside it, then renamed)."""
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in KEPT:
        item = src / rel
        target = tmp / rel
        if item.is_dir():
            shutil.copytree(item, target)
        elif item.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target)
    for item in src.iterdir():
        if item.is_file() and item.suffix in KEPT_SUFFIXES:
            shutil.copy2(item, tmp / item.name)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


def save(sweep: Path, archive: Path) -> list[str]:
    """Copy the small files of every completed job under ``sweep`` to ``archive/<job path>``; return their paths."""
    saved = []
    for job in find_job_dirs(sweep):
        if not is_completed(job):
            continue
        rel = job.relative_to(sweep) if job != sweep else Path(job.name)
        copy_job(job, archive / rel)
        saved.append(str(rel))
    multirun = sweep / "multirun.yaml"
    if multirun.is_file():
        archive.mkdir(parents=True, exist_ok=True)
        shutil.copy2(multirun, archive / "multirun.yaml")
    return saved


def restore(archive: Path, sweep: Path) -> list[str]:
    """Copy archived jobs back under ``sweep`` where that job folder does not exist yet; return their paths."""
    restored = []
    if not archive.is_dir():
        return restored
    for job in find_job_dirs(archive):
        rel = job.relative_to(archive) if job != archive else Path(job.name)
        target = sweep / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(job, target)
        restored.append(str(rel))
    return restored


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rigsa_lightning.report.archive save|restore <from> <to>``."""
    parser = argparse.ArgumentParser(
        prog="python -m rigsa_lightning.report.archive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("action", choices=("save", "restore"))
    parser.add_argument("source", help="save: the sweep folder; restore: the archive")
    parser.add_argument("dest", help="save: the archive; restore: the sweep folder")
    args = parser.parse_args(argv)
    source, dest = Path(args.source), Path(args.dest)
    if args.action == "save" and not source.is_dir():
        print(
            f"error: source: {source} does not exist -> give the sweep folder (e.g. outputs/study/cpu)",
            file=sys.stderr,
        )
        sys.exit(2)
    done = save(source, dest) if args.action == "save" else restore(source, dest)
    verb = "saved" if args.action == "save" else "restored"
    print(f"{verb} {len(done)} completed job(s): {', '.join(done) if done else '-'}")


if __name__ == "__main__":
    main()
