"""Keep a long sweep's finished jobs across machines: copy the small files of every completed job folder into a
folder that is committed (``save``), and put them back before the same sweep command runs again (``restore``), so
``skip_completed`` skips them and the report is rebuilt from every job finished so far.

    python -m rigsa_lightning.report.archive save outputs/study/cpu docs/results/study_cpu/jobs
    python -m rigsa_lightning.report.archive restore docs/results/study_cpu/jobs outputs/study/cpu

Kept per job: ``metrics.json``, ``forgetting.json``, ``prune_history.json``, the per-item records ``forgetting_items/*.json.gz``, the Hydra
bookkeeping ``.hydra/``, the CSV metrics ``csv/metrics.csv`` and the job's log (the evidence every number of the
report traces to), and a RIGSA job's winning ticket ``ticket.ckpt.xz`` (2.5 MB for the 135M model: the mask search's
result, which ``ckpt_path=<job>/ticket.ckpt.xz`` retrains at other options on any machine); left out: checkpoints,
the exported adapter and W&B files (large, reproducible from the command).
Only completed jobs are saved; a job already present at the destination is replaced by the newer copy on ``save``
and never overwritten on ``restore``. ``save --unfinished`` saves instead the unfinished jobs that hold a winning
ticket's checkpoint (``ticket.ckpt.xz``, :mod:`rigsa_lightning.pruning.ticket_checkpoint`): with it, a fresh machine
continues such a job from its ticket instead of starting it again (its archived copy is replaced when it completes).

    python -m rigsa_lightning.report.archive save --unfinished outputs/study/v2 docs/results/study_v2/jobs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from rigsa_lightning.adapters.rigsa.ticket import TICKET_FILE
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


def copy_job(src: Path, dst: Path, *, ticket: bool = False) -> bool:
    """Copy the kept files of job folder ``src`` to ``dst`` (replacing it; written beside it, then renamed), its
    ticket checkpoint included; ``ticket``: an unfinished job saved for its ticket, never over a completed copy (the
    job's end may archive it meanwhile); return whether ``dst`` was written."""
    tmp = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in (*KEPT, TICKET_FILE):
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
    if ticket and is_completed(dst):
        shutil.rmtree(tmp)
        return False
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return True


def save(sweep: Path, archive: Path, *, unfinished: bool = False) -> list[str]:
    """Copy the small files of every completed job under ``sweep`` to ``archive/<job path>``; return their paths.

    ``unfinished``: the jobs not completed that hold a ticket checkpoint instead (never over a completed copy, and
    only when their ticket changed since the last save; a job that failed is left out)."""
    saved = []
    for job in find_job_dirs(sweep):
        rel = job.relative_to(sweep) if job != sweep else Path(job.name)
        if unfinished:
            if is_completed(job) or (job / "failed.json").is_file() or not (job / TICKET_FILE).is_file():
                continue
            if is_completed(archive / rel) or _unchanged(job, archive / rel):
                continue
            if not copy_job(job, archive / rel, ticket=True):
                continue
        elif is_completed(job):
            copy_job(job, archive / rel)
        else:
            continue
        saved.append(str(rel))
    multirun = sweep / "multirun.yaml"
    if multirun.is_file():
        archive.mkdir(parents=True, exist_ok=True)
        shutil.copy2(multirun, archive / "multirun.yaml")
    return saved


def _unchanged(job: Path, archived: Path) -> bool:
    """Whether ``archived`` holds ``job``'s ticket already (the rows logged after it are not needed to continue)."""
    try:
        return (archived / TICKET_FILE).read_bytes() == (job / TICKET_FILE).read_bytes()
    except OSError:
        return False


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
    parser.add_argument(
        "--unfinished",
        action="store_true",
        help="save: the unfinished jobs holding a ticket checkpoint instead",
    )
    parser.add_argument("source", help="save: the sweep folder; restore: the archive")
    parser.add_argument("dest", help="save: the archive; restore: the sweep folder")
    args = parser.parse_args(argv)
    source, dest = Path(args.source), Path(args.dest)
    if args.unfinished and args.action != "save":
        print(
            "error: --unfinished: only with save -> drop it (restore puts back every archived job)",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.action == "save" and not source.is_dir():
        print(
            f"error: source: {source} does not exist -> give the sweep folder (e.g. outputs/study/cpu)",
            file=sys.stderr,
        )
        sys.exit(2)
    done = save(source, dest, unfinished=args.unfinished) if args.action == "save" else restore(source, dest)
    verb = "saved" if args.action == "save" else "restored"
    kind = "unfinished job(s) at their ticket" if args.unfinished else "completed job(s)"
    kind = kind if args.action == "save" else "job(s)"
    print(f"{verb} {len(done)} {kind}: {', '.join(done) if done else '-'}")


if __name__ == "__main__":
    main()
