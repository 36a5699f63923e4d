"""The report's command line: ``python -m rigsa_lightning.report <multirun folder> [--wandb]`` (console script
``rigsa-report``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.report.build import build_report


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: ``rigsa-report <multirun folder> [--wandb]`` (exit 2 with one line on bad input)."""
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(
        prog="python -m rigsa_lightning.report",
        description="Tables and figures of a Hydra multirun (written into the folder).",
    )
    parser.add_argument(
        "folder", help="the multirun folder, e.g. outputs/multiruns/<date>/<time>_sweep_smoke"
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log the table and figures to W&B (sweep's group)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = build_report(args.folder, log_wandb=args.wandb)
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        sys.exit(2)
    n_runs = len(out["runs"])
    print(
        f"report: {n_runs} completed runs in {len(out['rows'])} groups, {len(out['failed'])} failed, "
        f"{len(out['incomplete'])} incomplete"
    )
    for key in ("results_md", "results_csv", "runs_csv"):
        print(f"  {out[key]}")
    for name, fig_path in out["figures"].items():
        print(f"  {fig_path}" if fig_path else f"  {name}.png skipped: {out['notes'].get(name)}")
    if out["failed"] or out["incomplete"]:
        print(f"  not completed: {', '.join(out['failed'] + out['incomplete'])} (see results.md)")
