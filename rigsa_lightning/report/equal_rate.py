"""The winning ticket and its random ticket at one final-phase learning rate (``+sweep=study_v2_equal_rate``).

The v2 study trains each ticket at the rate searched for its own final phase (RIGSA's ticket 3e-3, its random
ticket 3e-2); the lottery-ticket papers train ticket and control at one rate. The equal-rate sweep retrains the
study's tickets with the two rates swapped (RIGSA's ticket from its ``ticket.ckpt.xz``, no new mask search), so a
seed with both sweeps' jobs holds both tickets at both rates. This report reads the job folders of both sweeps:

* **per rate**, each RIGSA ticket beside the random ticket drawn from the same run (paired as claim 4 pairs them,
  :func:`rigsa_lightning.report.job_table.ticket_pairs_markdown`): what each was given, its final-phase
  validations, test accuracy, GSM8k's reference-NLL change at the end and the paired differences; the mask's
  effect at a fixed rate;
* **per seed, mask × rate**: GSM8k's change, the drift probe's KL(base ‖ tuned), the final-phase steps and the test
  accuracy of each of the (up to) four runs; the rate's effect at a fixed mask reads along a row.

    python -m rigsa_lightning.report.equal_rate outputs/study/v2 outputs/study/v2_equal_rate

writes ``equal_rate.md`` into the last folder (``--out`` to choose).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rigsa_lightning.io import atomic_write_text
from rigsa_lightning.report.claims import ticket_pairs, ticket_source
from rigsa_lightning.report.job_table import ticket_pairs_markdown
from rigsa_lightning.report.jobs import Job, _finite, _num, find_job_dirs, load_job
from rigsa_lightning.report.table import _md_table, phase_budget

_MASKS = {"rigsa": "RIGSA ticket", "random_mask": "random ticket"}
NOTE = (
    "Each random ticket keeps its RIGSA run's per-matrix counts with the same ΔW init and data order, and here both\n"
    "train at the same final-phase rate, budget and schedule: they differ only in which entries are kept.\n"
    "Final-phase steps count from the last prune; the validations are the forgetting curve's."
)


def ticket_jobs(folders: Sequence[Path]) -> list[Job]:
    """The completed RIGSA and random-mask jobs of every folder, each named by its path from the folders' common
    parent (two sweeps may both hold a ``rigsa_paper_s0``): ``v2/…`` and ``v2_equal_rate/…`` for the two sweep
    folders, ``jobs/…`` and ``equal_rate/jobs/…`` for the study's archive and the equal-rate archive inside it."""
    root = Path(os.path.commonpath([str(folder.resolve().parent) for folder in folders]))
    jobs = []
    for folder in folders:
        for path in find_job_dirs(folder.resolve()):
            job = load_job(path, root)
            if job.status == "completed" and job.metrics.get("method") in _MASKS:
                jobs.append(job)
    return jobs


def final_rate(job: Job) -> float:
    """The peak learning rate of the job's final phase (``pruning.final_lr``, else ``adapter.lr``)."""
    return phase_budget(job)["final_lr"]


def ticket_name(job: Job) -> str:
    """The RIGSA run a ticket job belongs to: its own folder name for a RIGSA run (a run retrained from that run's
    ``ticket.ckpt.xz`` keeps the name in its own sweep), the run named by ``adapter.density_from`` for a random
    ticket."""
    return job.path.name if job.metrics.get("method") == "rigsa" else ticket_source(job)


def _cell(jobs: Sequence[Job]) -> str:
    return "; ".join(_one_cell(job) for job in jobs) or "—"


def _one_cell(job: Job) -> str:
    m = job.metrics
    parts = []
    gsm = _num(m.get("forget/gsm8k/gold_nll/delta"))
    lo, hi = (
        _num(m.get("forget/gsm8k/gold_nll/delta_ci_lo")),
        _num(m.get("forget/gsm8k/gold_nll/delta_ci_hi")),
    )
    if _finite(gsm):
        parts.append(
            f"GSM8k {gsm:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if _finite(lo) and _finite(hi) else "")
        )
    kl = _num(m.get("forget/drift/kl/after"))
    if _finite(kl):
        parts.append(f"KL {kl:.3f}")
    steps = phase_budget(job)["final_steps"]
    if _finite(steps):
        parts.append(f"{steps:.0f} steps")
    acc = _num(m.get("textual_mnist/acc"))
    if _finite(acc):
        parts.append(f"test {100 * acc:.1f} %")
    return f"`{job.rel}`: " + " · ".join(parts)


def grid_markdown(jobs: Sequence[Job]) -> str:
    """Per RIGSA run (seed) with both tickets at one rate or one ticket at two rates: one row per mask, one column
    per rate ("" when no run has either: a study alone, each ticket at its own rate)."""
    rates = sorted({final_rate(j) for j in jobs if _finite(final_rate(j))})
    cells: dict[str, dict[tuple[str, float], list[Job]]] = {}
    for job in jobs:
        key = (str(job.metrics.get("method")), final_rate(job))
        cells.setdefault(ticket_name(job), {}).setdefault(key, []).append(job)
    rows = []
    for name in sorted(cells):
        grid = cells[name]
        both = any(all((m, r) in grid for m in _MASKS) for r in rates)
        two_rates = any(len({r for k, r in grid if k == m}) > 1 for m in _MASKS)
        if not (both or two_rates):
            continue
        for method, mask in _MASKS.items():
            rows.append([f"`{name}`", mask, *(_cell(grid.get((method, rate), [])) for rate in rates)])
    if not rows:
        return ""
    header = ["RIGSA run", "mask", *(f"final rate {rate:g}" for rate in rates)]
    return "\n".join(
        [
            "## Mask × rate, run by run",
            "",
            "Each cell: GSM8k's reference-NLL change at the end (nats/token, item 95 % CI), the drift probe's KL(base ‖",
            "tuned) on general prompts, the final-phase steps (each run stops at its target) and the test accuracy.",
            "",
            _md_table(header, rows),
            "",
        ]
    )


def equal_rate_markdown(folders: Sequence[Path]) -> str:
    """The report (see the module docstring) of the ticket jobs under ``folders``."""
    jobs = ticket_jobs(folders)
    by_rate: dict[float, list[Job]] = {}
    for job in jobs:
        by_rate.setdefault(final_rate(job), []).append(job)
    lines = [
        "# The winning ticket and its random ticket at one final-phase rate",
        "",
        "Job folders: " + ", ".join(f"`{f}`" for f in folders) + ".",
        "",
    ]
    for rate in sorted(r for r in by_rate if _finite(r)):
        heading = f"## Both tickets at final rate {rate:g}"
        group = by_rate[rate]
        names = [ticket_name(j) for j in group if j.metrics.get("method") == "rigsa"]
        if len(names) != len(set(names)):
            lines += [heading, "", "Not paired: two RIGSA runs of the same ticket at this rate.", ""]
            continue
        part = ticket_pairs_markdown(group, heading=heading, note=NOTE)
        if not part:
            lines += [heading, "", "No pair: " + ", ".join(f"`{j.rel}`" for j in group) + " alone.", ""]
            continue
        lines.append(part)
        rigsa = [j for j in group if j.metrics.get("method") == "rigsa"]
        paired = {
            id(j) for pair in ticket_pairs(rigsa, [j for j in group if j not in rigsa]) or [] for j in pair
        }
        alone = [f"`{j.rel}`" for j in group if id(j) not in paired]
        if alone:
            lines += ["Without a partner at this rate (not in the table): " + ", ".join(alone) + ".", ""]
    grid = grid_markdown(jobs)
    if grid:
        lines.append(grid)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rigsa_lightning.report.equal_rate FOLDER [FOLDER ...] [--out FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m rigsa_lightning.report.equal_rate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "folders", nargs="+", type=Path, help="sweep folders (the study's, the equal-rate sweep's)"
    )
    parser.add_argument("--out", type=Path, help="the Markdown file (default: <last folder>/equal_rate.md)")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(
            f"error: folders: {', '.join(missing)} not found -> give existing sweep folders", file=sys.stderr
        )
        sys.exit(2)
    out = args.out or args.folders[-1] / "equal_rate.md"
    atomic_write_text(out, equal_rate_markdown(args.folders))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
