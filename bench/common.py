"""Shared pieces of the benchmarks: environment, alternating timing, results file, tables, models, subprocesses.

Every benchmark measures its reference in the same process (or the same run), alternating repetitions
(A B C, B C A, C A B, ...), and reports medians and ratios: absolute times on a shared 2-core machine are not
comparable between runs, ratios measured side by side are.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Peak/current RSS, re-exported for the benchmarks: shared with the train job, which reports its own peak with them.
from rigsa_lightning.runtime import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "BENCH_RESULT "
MODEL_NAME = "embedded:smollm2-135m-instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def setup_environment() -> None:
    """Offline hub, quiet libraries; must run before transformers/datasets/lm_eval are imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


# --------------------------------------------------------------------------------------------------- results
def out_dir() -> Path:
    """``outputs/bench/<date>`` (or ``$RIGSA_BENCH_DIR``)."""
    env = os.environ.get("RIGSA_BENCH_DIR")
    if env:
        return Path(env)
    return REPO / "outputs" / "bench" / _dt.date.today().isoformat()


def results_path() -> Path:
    """The merged results file of today's runs."""
    return out_dir() / "results.json"


def record(name: str, entry: dict[str, Any]) -> Path:
    """Merge ``entry`` as ``results[name]`` into :func:`results_path` (atomic write; other entries kept)."""
    from rigsa_lightning.io import atomic_write_json

    path = results_path()
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[name] = entry
    return atomic_write_json(path, data)


def environment() -> dict[str, Any]:
    """What the numbers were measured on (load average included: the machine is shared)."""
    import torch

    commit = ""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "git_commit": commit,
        "machine": platform.machine(),
    }


# --------------------------------------------------------------------------------------------------- timing
def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of a list of timings."""
    vals = list(values)
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def alternate(
    fns: dict[str, Callable[[], Any]],
    reps: int,
    warmup: int = 1,
    before: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Time each ``fns[name]()`` ``reps`` times, interleaved and rotated (A B C, B C A, ...), after ``warmup``
    untimed calls each. ``before(name)`` runs untimed before every call (e.g. to swap modules in)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            if before:
                before(name)
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            if before:
                before(name)
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
            if log:
                log(f"  rep {rep + 1}/{reps} {name}: {times[name][-1]:.3f} s")
    return times


# --------------------------------------------------------------------------------------------------- memory
def trim_malloc() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``) so RSS deltas measure live memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------------------------------- subprocess
def run_worker(target: str, kwargs: dict[str, Any], timeout: float = 1200, env: dict | None = None) -> dict:
    """Run ``module:function(**kwargs)`` in a fresh ``python -m bench.worker`` and return its JSON result."""
    cmd = [sys.executable, "-m", "bench.worker", target, json.dumps(kwargs)]
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise RuntimeError(
        f"worker {target} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-1000:]}"
    )


# --------------------------------------------------------------------------------------------------- models
def cache_dir() -> Path:
    """The project's cache (converted models, tokenised data)."""
    from rigsa_lightning.models import default_cache_dir

    return default_cache_dir()


def model_dir() -> Path:
    """Folder of the converted embedded SmolLM2-135M-Instruct (converted once)."""
    from rigsa_lightning.models import convert_embedded

    return convert_embedded("smollm2-135m-instruct", cache_dir())


def load_smollm2(dtype: str = "float32") -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the embedded SmolLM2-135M-Instruct (train mode, every parameter frozen)."""
    from rigsa_lightning.models import load_model

    model, tok = load_model({"name_or_path": MODEL_NAME, "dtype": dtype}, cache_dir())
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    return model, tok


def random_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, Any]:
    """A causal-LM batch of random token ids (labels = inputs): timing does not depend on the values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


# --------------------------------------------------------------------------------------------------- output
def fmt_bytes(n: float) -> str:
    """Human-readable bytes (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for i, col in enumerate(header):
        table.add_column(str(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console(width=160).print(table)


def contended(reference_medians: dict[str, float]) -> list[str]:
    """Thread counts (keys) whose reference step is *slower* than with one thread: the cores were busy with other
    work (OpenMP threads then wait on each other), so ratios measured there say more about the load than the code."""
    one = reference_medians.get("1")
    if one is None:
        return []
    return [n for n, t in reference_medians.items() if n != "1" and t > one]


def thread_probe(size: int = 768, reps: int = 3) -> dict[str, float]:
    """Seconds of ``size x size`` matmuls with 1 and 2 torch threads (alternating, medians): on a busy machine the
    2-thread time is *higher*. Restores the thread count."""
    import torch

    before = torch.get_num_threads()
    a = torch.randn(size, size)
    times: dict[str, list[float]] = {"1": [], "2": []}
    for _ in range(reps):
        for n in ("1", "2"):
            torch.set_num_threads(int(n))
            t0 = time.perf_counter()
            for _ in range(5):
                a @ a
            times[n].append(time.perf_counter() - t0)
    torch.set_num_threads(before)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {"1": med["1"], "2": med["2"], "speedup_2_over_1": med["1"] / med["2"]}


def verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    """``met`` / ``missed`` for a measured value against a target."""
    if value != value:  # NaN
        return "n/a"
    ok = value <= target if lower_is_better else value >= target
    return "met" if ok else "missed"


def say(msg: str) -> None:
    """Progress line (stderr, flushed)."""
    print(msg, file=sys.stderr, flush=True)
