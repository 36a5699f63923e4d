"""``python -m bench.run [--only NAME ...] [--quick] [--compile]``: run the benchmarks, write
``outputs/bench/<date>/results.json`` (entries merged per benchmark) and print their tables and a summary.

Benchmarks (in run order; ``e2e`` is last and only runs in a full run or with ``--only e2e``):

======================  =================================================================================
limit                   every method's main-job step (bf16, restricted head) / the frozen floor; before rows
sparse_step             sparse storage / floor and dense round / full FT at 1 and 2 threads (train precision)
dense_step              RIGSA dense step vs full fine-tuning vs frozen floor vs PEFT LoRA r16
optimizer               AdamW loop / foreach / fused on the dense round's and the sparse storage's tensors
sparse_phase            adapter state bytes and step time after pruning, dense vs sparse storage
pruning                 one IMP round over the 210 matrices (per-matrix, global), time + peak memory; 1.7B
textual_mnist           render + tokenise 60,000 28x28 images through the DataModule, cold and warm
forgetting              lm-eval in process (HFLM on the live model) vs the lm_eval CLI
fast_scorer             the fast forgetting scorer vs lm-eval's HFLM on the same real PIQA/HellaSwag items
compile                 torch.compile of the dense RIGSA step (only with --compile or --only compile)
e2e                     ``python -m rigsa_lightning.train experiment=rigsa_50`` wall time and peak RSS
======================  =================================================================================
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from typing import Any

from bench.common import print_table, results_path, say, setup_environment

BENCHMARKS: dict[str, str] = {
    "limit": "bench.head_limit",
    "sparse_step": "bench.sparse_step",
    "dense_step": "bench.dense_step",
    "optimizer": "bench.optimizer_step",
    "sparse_phase": "bench.sparse_phase",
    "pruning": "bench.pruning_event",
    "textual_mnist": "bench.textual_mnist",
    "forgetting": "bench.forgetting_eval",
    "fast_scorer": "bench.fast_scorer",
    "compile": "bench.compile_step",
    "e2e": "bench.e2e",
}
DEFAULT = [
    "limit",
    "sparse_step",
    "dense_step",
    "optimizer",
    "sparse_phase",
    "pruning",
    "textual_mnist",
    "forgetting",
    "fast_scorer",
    "e2e",
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    p.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[], help="skip these")
    p.add_argument("--quick", action="store_true", help="small shapes and few repetitions (~3 min; no e2e)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (slow: minutes)")
    p.add_argument("--threads", nargs="+", type=int, help="torch thread counts (default per benchmark)")
    p.add_argument("--reps", type=int, help="alternating repetitions (default per benchmark)")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "32"],
        default="auto",
        help="sparse_step: the step's precision (auto: what trainer.precision=auto resolves to here)",
    )
    return p.parse_args(argv)


def selected(args: argparse.Namespace) -> list[str]:
    """The benchmarks to run, in run order."""
    if args.only:
        names = [n for n in BENCHMARKS if n in args.only]
    else:
        names = [n for n in DEFAULT if not (args.quick and n == "e2e")]
        if args.compile:
            names.insert(names.index("e2e") if "e2e" in names else len(names), "compile")
    return [n for n in names if n not in args.skip]


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; returns the exit code (1 when one of them crashed)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_environment()
    names = selected(args)
    say(f"bench: running {', '.join(names)} ({'quick' if args.quick else 'full'}) -> {results_path()}")
    t0 = time.time()
    summary_rows: list[list[Any]] = []
    failed = []
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        t = time.time()
        try:
            entry = module.run(
                quick=args.quick, threads=args.threads, reps=args.reps, precision=args.precision
            )
            lines = module.headline(entry)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others' results
            traceback.print_exc()
            failed.append(name)
            summary_rows.append([name, "FAILED", "", "", f"{time.time() - t:.0f}"])
            continue
        for metric, value, target, verdict in lines:
            summary_rows.append([name, metric, value, target, verdict, f"{time.time() - t:.0f}"])
    print_table(
        f"Benchmark summary ({time.time() - t0:.0f} s) - {results_path()}",
        ["benchmark", "figure", "measured", "target", "verdict", "bench s"],
        [r if len(r) == 6 else [r[0], r[1], "", "", r[2], r[4]] for r in summary_rows],
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
