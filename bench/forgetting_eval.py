"""Benchmark 5 - the forgetting evaluation in process vs the ``lm_eval`` CLI, on the same model and task files.

* **in process** (what the train job does): ``HFLM(pretrained=<live model object>)`` through
  :func:`rigsa_lightning.forgetting.benchmarks.run_lm_eval`, with the task YAMLs that
  :mod:`rigsa_lightning.forgetting` generates over the local files in ``tests/data/benchmarks`` (lm-eval's own
  piqa / hellaswag / gsm8k configs, ``include``d). Timed from building the TaskManager to the results; the model is
  already in memory (its load time is reported separately).
* **CLI**: ``python -m lm_eval run --model hf --model_args pretrained=<saved folder>`` with ``--include_path`` on the
  same generated YAMLs, same limit, seeds, batch size and ``max_gen_toks`` - a fresh process that imports lm-eval
  and loads the model. Reported in total and minus its start-up + model load, measured by a separate process that
  only imports lm-eval and builds the ``HFLM`` from the folder.

The two alternate (``reps`` times each) with the same torch thread count. Target: in process no slower (total),
same numbers (every metric equal).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, environment, print_table, record, say, summary, verdict

BENCH_DATA = REPO / "tests" / "data" / "benchmarks"
NUM_FEWSHOT = {"piqa": 0, "hellaswag": 0, "gsm8k": 5}
SEED = 1234


def write_tasks(out_dir: Path, tasks: list[str]) -> Path:
    """Generate the task YAMLs over the local benchmark files (as ``ForgettingEvaluator`` does)."""
    from rigsa_lightning.forgetting import benchmarks

    for task in tasks:
        benchmarks.write_task_yaml(out_dir, benchmarks.local_task_source(task, BENCH_DATA, NUM_FEWSHOT[task]))
    return out_dir


def cli_command(
    model_dir: str, include: Path, tasks: list[str], limit: int, batch: int, gen: int, out: Path
) -> list[str]:
    """The ``lm_eval`` command line equivalent to the in-process call."""
    return [
        sys.executable,
        "-m",
        "lm_eval",
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_dir},dtype=float32",
        "--tasks",
        ",".join(tasks),
        "--include_path",
        str(include),
        "--limit",
        str(limit),
        "--device",
        "cpu",
        "--batch_size",
        str(batch),
        "--seed",
        f"{SEED},{SEED},{SEED},{SEED}",
        "--gen_kwargs",
        f"max_gen_toks={gen}",
        "--output_path",
        str(out),
    ]


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
    )
    return env


LOAD_ONLY = """
import time, sys
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
from lm_eval.models.huggingface import HFLM
HFLM(pretrained={model!r}, dtype="float32", batch_size={batch}, device="cpu")
print("LOAD_S", time.perf_counter() - t0)
from lm_eval.tasks import TaskManager
t1 = time.perf_counter()
TaskManager(include_path={include!r})
print("TASKS_S", time.perf_counter() - t1)
"""


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the benchmark; returns (and records) its results entry."""
    import torch

    from bench.common import load_smollm2, model_dir
    from rigsa_lightning.forgetting import benchmarks

    n_threads = (threads or [1])[0]
    reps = reps or (1 if quick else 2)
    tasks = ["piqa", "hellaswag"] if quick else ["piqa", "hellaswag", "gsm8k"]
    limit, batch, gen = (4 if quick else 8), 8, 32
    t_start = time.time()
    env = environment()
    torch.set_num_threads(n_threads)
    folder = str(model_dir())
    t = time.perf_counter()
    model, tok = load_smollm2()
    load_in_process = time.perf_counter() - t
    tmp = Path(tempfile.mkdtemp(prefix="rigsa_bench_lmeval_"))
    include = write_tasks(tmp / "tasks", tasks)

    def in_process(lim: int = limit) -> dict[str, Any]:
        tm = benchmarks.build_task_manager(include)
        res = benchmarks.run_lm_eval(model, tok, tasks, tm, NUM_FEWSHOT, lim, batch, SEED, gen)
        return benchmarks.extract_metrics(res)

    def cli(i: int) -> dict[str, Any]:
        out = tmp / f"cli{i}"
        cmd = cli_command(folder, include, tasks, limit, batch, gen, out)
        proc = subprocess.run(cmd, env=_env(n_threads), capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"lm_eval CLI failed:\n{proc.stderr[-3000:]}")
        (path,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
        return benchmarks.extract_metrics(json.loads(Path(path).read_text()))

    say("[forgetting] warm-up (prepares the datasets' arrow cache for both paths)")
    in_process(1)
    times: dict[str, list[float]] = {"in_process": [], "cli": []}
    numbers: dict[str, Any] = {}
    for rep in range(reps):
        order = ["in_process", "cli"] if rep % 2 == 0 else ["cli", "in_process"]
        for name in order:
            t0 = time.perf_counter()
            numbers[name] = in_process() if name == "in_process" else cli(rep)
            times[name].append(time.perf_counter() - t0)
            say(f"  rep {rep + 1}/{reps} {name}: {times[name][-1]:.1f} s")
    load_only: list[float] = []
    task_index: list[float] = []  # the CLI's TaskManager indexes every built-in task YAML plus --include_path
    for _ in range(reps):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                LOAD_ONLY.format(threads=n_threads, model=folder, batch=batch, include=str(include)),
            ],
            env=_env(n_threads),
            capture_output=True,
            text=True,
            timeout=600,
        )
        wall = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("LOAD_S")]
        index = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("TASKS_S")]
        if wall:
            load_only.append(wall[0])
        if index:
            task_index.append(index[0])
    diffs = []
    for task, metrics in numbers["in_process"].items():
        for key, value in metrics.items():
            other = numbers["cli"].get(task, {}).get(key)
            diffs.append(abs(value - other) if other is not None else float("inf"))
    max_diff = max(diffs) if diffs else float("nan")
    same = max_diff <= 1e-9 and set(numbers["in_process"]) == set(numbers["cli"])
    ip, cl = summary(times["in_process"]), summary(times["cli"])
    lo = summary(load_only)
    ti = summary(task_index)
    cli_excl = cl["median"] - (lo["median"] if load_only else 0.0)
    ratio = ip["median"] / cl["median"]
    print_table(
        f"Forgetting eval: {', '.join(tasks)}, limit {limit}, batch {batch}, gsm8k max_gen_toks {gen}, "
        f"{n_threads} thread(s), median of {reps}",
        ["path", "seconds", "range", "notes"],
        [
            [
                "in process (live model)",
                f"{ip['median']:.1f}",
                f"{ip['min']:.1f}-{ip['max']:.1f}",
                f"model load {load_in_process:.1f} s (not counted)",
            ],
            [
                "lm_eval CLI, total",
                f"{cl['median']:.1f}",
                f"{cl['min']:.1f}-{cl['max']:.1f}",
                "fresh process: imports + load + eval",
            ],
            [
                "lm_eval CLI, minus start-up+load",
                f"{cli_excl:.1f}",
                "",
                f"start-up+load alone {lo['median']:.1f} s; its task index {ti['median']:.1f} s",
            ],
            ["in process / CLI total", f"{ratio:.2f}x", "", verdict(ratio, 1.0)],
            ["numbers equal", str(same), "", f"max |diff| {max_diff:.2g}"],
        ],
    )
    entry = {
        "benchmark": "forgetting",
        "quick": quick,
        "tasks": tasks,
        "limit": limit,
        "batch_size": batch,
        "max_gen_toks": gen,
        "threads": n_threads,
        "seconds": times,
        "stats": {"in_process": ip, "cli": cl, "cli_startup_and_load": lo, "cli_task_index": ti},
        "cli_excluding_load_s": cli_excl,
        "in_process_model_load_s": load_in_process,
        "in_process_over_cli": ratio,
        "metrics": numbers,
        "max_abs_diff": max_diff,
        "numbers_equal": same,
        "verdicts": {"speed": verdict(ratio, 1.0), "numbers": "met" if same else "missed"},
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "wall_s": time.time() - t_start,
    }
    record("forgetting", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    return [
        (
            "in process / CLI time",
            f"{entry['in_process_over_cli']:.2f}x",
            "<= 1.0x",
            entry["verdicts"]["speed"],
        ),
        (
            "same numbers as the CLI",
            f"max abs diff {entry['max_abs_diff']:.2g}",
            "equal",
            entry["verdicts"]["numbers"],
        ),
    ]
