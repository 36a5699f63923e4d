"""Benchmark 6 - the main job end to end: ``python -m rigsa_lightning.train experiment=rigsa_50 logger=csv``.

Runs the job (what ``make train`` runs) in a subprocess with its run folder under ``outputs/bench/<date>/``, then
reads the run's ``metrics.json``: ``time/load_s``, ``time/data_s``, ``time/eval_before_s``, ``time/train_s``,
``time/eval_after_s``, ``time/total_s`` and ``memory/peak_rss_gb`` (plus the subprocess' wall time, which adds
interpreter start-up and imports). Target: the job finishes in <= 15 min on the 2-core CPU. Slow (~10-15 min):
it runs last, and only in a full run or with ``--only e2e``. When a quick probe shows 2 torch threads slower than 1
(another job on the machine), the job runs with ``threads=1`` (recorded); ``--threads N`` forces ``threads=N``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.common import (
    REPO,
    environment,
    fmt_bytes,
    out_dir,
    print_table,
    record,
    say,
    thread_probe,
    verdict,
)

TARGET_S = 15 * 60
KEYS = [
    "time/load_s",
    "time/data_s",
    "time/eval_before_s",
    "time/train_s",
    "time/eval_after_s",
    "time/total_s",
    "memory/peak_rss_gb",
]


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the job once; returns (and records) its results entry."""
    t_start = time.time()
    env = environment()
    run_dir = out_dir() / f"e2e_run_{_dt.datetime.now().strftime('%H-%M-%S')}"
    cmd = [
        sys.executable,
        "-m",
        "rigsa_lightning.train",
        "experiment=rigsa_50",
        "logger=csv",
        "print_config=false",
        f"hydra.run.dir={run_dir}",
    ]
    probe = thread_probe()
    if threads:
        cmd.append(f"threads={threads[0]}")
    elif probe["speedup_2_over_1"] < 1.0:
        # 2 threads slower than 1: another job holds a core (OpenMP spin-waits); 2-thread steps were 10-40x slower
        cmd.append("threads=1")
        say(f"[e2e] machine busy (2 threads {1 / probe['speedup_2_over_1']:.1f}x slower than 1): threads=1")
    say(f"[e2e] {' '.join(cmd[2:])}")
    proc_env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    proc_env.pop("TQDM_DISABLE", None)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=proc_env, capture_output=True, text=True, timeout=3 * 3600)
    wall = time.time() - t0
    metrics_file = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics_file.is_file():
        raise RuntimeError(f"train job failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads(metrics_file.read_text())
    timings = {k: metrics.get(k) for k in KEYS}
    rows = [[k, f"{v:.1f}" if isinstance(v, (int, float)) else str(v)] for k, v in timings.items()]
    rows.append(["subprocess wall s (incl. start-up)", f"{wall:.1f}"])
    for key in ("textual_mnist/zero_shot_acc", "textual_mnist/acc", "adapter/density"):
        if key in metrics:
            rows.append([key, f"{metrics[key]:.4f}"])
    # Adapter training state after the first step of each epoch (dense round, then the sparse storage).
    state = metrics.get("memory/adapter_state") or []
    for h in state:
        rows.append([f"adapter state epoch {h['epoch']} ({h['storage']})", fmt_bytes(h["total_bytes"])])
    print_table(
        "End-to-end main job (experiment=rigsa_50, embedded SmolLM2-135M + 8x8 digits)",
        ["metric", "value"],
        rows,
    )
    entry = {
        "benchmark": "e2e",
        "command": " ".join(cmd[1:]),
        "thread_probe": probe,
        "run_dir": str(run_dir),
        "timings": timings,
        "wall_s": wall,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        "adapter_state": state,
        "target_s": TARGET_S,
        "verdict": verdict(wall, TARGET_S),
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "bench_wall_s": time.time() - t_start,
    }
    record("e2e", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    t = entry["timings"]
    parts = ", ".join(
        f"{k.split('/')[1][:-2]} {t[k]:.0f}" for k in KEYS[:5] if isinstance(t.get(k), (int, float))
    )
    rows = [
        ("main job wall time", f"{entry['wall_s'] / 60:.1f} min", "<= 15 min", entry["verdict"]),
        ("breakdown (s)", parts, "", ""),
        ("peak RSS", f"{t.get('memory/peak_rss_gb', float('nan')):.2f} GB", "", ""),
    ]
    state = entry.get("adapter_state") or []
    if len(state) > 1:
        first, last = state[0], state[-1]
        rows.append(
            (
                "adapter training state, last / first epoch",
                f"{fmt_bytes(last['total_bytes'])} ({last['storage']}) / {fmt_bytes(first['total_bytes'])} "
                f"({first['storage']}) = {last['total_bytes'] / first['total_bytes']:.3f}x",
                "scales with density",
                "",
            )
        )
    return rows
