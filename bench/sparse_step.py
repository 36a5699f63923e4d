"""Benchmark - the sparse step at the cost of its non-zeros (issue 27): the sparse storage against the frozen floor
and the dense round against full fine-tuning, side by side in one run, at 1 and 2 threads.

The main job's step (embedded SmolLM2-135M, one real Textual MNIST batch of 8 x ~105 tokens, LM head at the
supervised positions only, fused AdamW, clipping at 1.0) in the precision the train job resolves on this machine
(``trainer.precision=auto``: bf16 autocast where bf16 matmuls are native, fp32 elsewhere; ``--precision`` overrides).
Variants, alternated in every repetition:

* ``floor``: nothing trains, backward runs through every layer (the cost no adapter can go under);
* ``full``: full fine-tuning of the 210 block matrices;
* ``rigsa_dense``: the dense RIGSA round (``DenseDeltaLinear`` at density 1, merged form);
* ``rigsa_sparse@d`` for d in 0.5, 0.2, 0.0346: the sparse storage after pruning to density d (random masks),
  ``adapter.sparse_grad=auto``.

Targets: ``rigsa_sparse@0.0346 / floor <= 1.10`` and ``rigsa_dense / full <= 1.02`` at every thread count, as paired
ratios of process CPU time (each call's ``time.process_time()``: time spent waiting for a core held by another job is
not counted) and of wall time. A 2-thread floor slower (wall) than the 1-thread one means another job holds a core:
that thread count is reported as contended, with no verdict on either basis (its CPU time then includes OpenMP
threads spinning while they wait for each other).

``python -m bench.sparse_step --profile [--density 0.0346] [--threads 1]`` profiles one sparse step with
``torch.profiler`` and prints the table of the top ops (self CPU time) as markdown.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import alternate, environment, load_smollm2, print_table, record, say, summary, verdict

SPARSE_TARGET = 1.10  # rigsa_sparse@0.0346 / floor
DENSE_TARGET = 1.02  # rigsa_dense / full
DENSITIES = (0.5, 0.2, 0.0346)
BEFORE = "rigsa_sparse@0.0346_before"  # the pre-issue-27 sparse step (bench/legacy_sparse.py), same adapters
NAMES = ["floor", "full", "rigsa_dense", *[f"rigsa_sparse@{d}" for d in DENSITIES], BEFORE]


def resolve_bf16(precision: str | None) -> bool:
    """``bf16`` / ``32`` as given, or what ``trainer.precision=auto`` resolves to on this machine."""
    from rigsa_lightning.runtime import resolve_precision

    if precision in (None, "auto"):
        precision = resolve_precision("auto")
    return str(precision).startswith("bf16")


def build(quick: bool = False) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(host, batch, sparse adapters by name)``: the model with every variant registered."""
    import torch

    from bench.head_limit import task_batch
    from bench.legacy_sparse import legacy_forward
    from bench.sparse_phase import random_masks, set_masks
    from bench.steps import Host, frozen_variant, full_variant, rigsa_adapters, rigsa_variant
    from rigsa_lightning.adapters.rigsa.storage import to_sparse_storage

    torch.manual_seed(0)
    model, tok = load_smollm2()
    batch = task_batch(tok, 2 if quick else 8)
    host = Host(model)
    host.add("floor", frozen_variant())
    host.add("full", full_variant(host))
    host.add("rigsa_dense", rigsa_variant(rigsa_adapters(host)))
    sparse: dict[str, Any] = {}
    for d in DENSITIES:
        pruned = rigsa_adapters(host, seed=99)
        set_masks(pruned, random_masks(pruned, d, seed=int(d * 1e4)))
        sparse[f"rigsa_sparse@{d}"] = {n: to_sparse_storage(m) for n, m in pruned.items()}
        host.add(f"rigsa_sparse@{d}", rigsa_variant(sparse[f"rigsa_sparse@{d}"]))
        if d == 0.0346:
            old = {n: legacy_forward(to_sparse_storage(m)) for n, m in pruned.items()}
            host.add(BEFORE, rigsa_variant(old))
        del pruned
    return host, batch, sparse


def _cpu_timed(fn: Any, out: list[float]) -> Any:
    """``fn`` that also appends the process CPU seconds of each call to ``out`` (robust to other jobs holding the
    cores: time spent waiting for a core is not counted, unlike wall time)."""

    def call() -> Any:
        c0 = time.process_time()
        result = fn()
        out.append(time.process_time() - c0)
        return result

    return call


def grad_paths(adapters: dict[str, Any]) -> dict[str, int]:
    """How many modules use each weight-gradient path (``resolved_grad_mode``)."""
    out: dict[str, int] = {}
    for m in adapters.values():
        mode = m.resolved_grad_mode()
        out[mode] = out.get(mode, 0) + 1
    return out


def run(
    quick: bool = False,
    threads: list[int] | None = None,
    reps: int | None = None,
    precision: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Run the benchmark; returns (and records) its results entry."""
    import torch

    from rigsa_lightning.adapters.rigsa.storage import adapter_state_bytes

    step_threads = threads or [1, 2]
    reps = reps or (1 if quick else 3)
    bf16 = resolve_bf16(precision)
    t_start = time.time()
    env = environment()
    host, batch, sparse = build(quick)
    fns = {k: host.step_fn(k, batch, bf16=bf16) for k in NAMES}
    shape = list(batch["input_ids"].shape)
    results: dict[str, Any] = {}
    rows = []
    for n in step_threads:
        torch.set_num_threads(n)
        say(
            f"[sparse_step] threads={n}, batch {shape[0]}x{shape[1]}, {'bf16' if bf16 else 'fp32'}, {reps} reps"
        )
        cpu: dict[str, list[float]] = {k: [] for k in NAMES}
        times = alternate({k: _cpu_timed(fns[k], cpu[k]) for k in NAMES}, reps=reps, warmup=1, log=say)
        cpu = {k: v[1:] for k, v in cpu.items()}  # the warm-up call left out
        stats = {k: summary(v) for k, v in times.items()}
        vs_floor = {k: summary([a / b for a, b in zip(times[k], times["floor"])])["median"] for k in NAMES}
        vs_full = {k: summary([a / b for a, b in zip(times[k], times["full"])])["median"] for k in NAMES}
        cpu_stats = {k: summary(v) for k, v in cpu.items()}
        cpu_vs_floor = {k: summary([a / b for a, b in zip(cpu[k], cpu["floor"])])["median"] for k in NAMES}
        cpu_vs_full = {k: summary([a / b for a, b in zip(cpu[k], cpu["full"])])["median"] for k in NAMES}
        say(
            f"[sparse_step] {n} thr cpu x floor: "
            + ", ".join(f"{k} {v:.3f}" for k, v in cpu_vs_floor.items())
        )
        results[str(n)] = {
            "seconds": times,
            "stats": stats,
            "vs_floor": vs_floor,
            "vs_full": vs_full,
            "cpu_seconds": cpu,
            "cpu_stats": cpu_stats,
            "cpu_vs_floor": cpu_vs_floor,
            "cpu_vs_full": cpu_vs_full,
        }
        for k in NAMES:
            rows.append(
                [
                    f"{k} ({n} thr)",
                    f"{stats[k]['median']:.2f}",
                    f"{stats[k]['min']:.2f}-{stats[k]['max']:.2f}",
                    f"{vs_floor[k]:.3f}",
                    f"{vs_full[k]:.3f}",
                    f"{cpu_stats[k]['median']:.2f}",
                    f"{cpu_vs_floor[k]:.3f}",
                    f"{cpu_vs_full[k]:.3f}",
                ]
            )
    one = results.get("1", {}).get("stats", {}).get("floor", {}).get("median")
    contended = [n for n, r in results.items() if n != "1" and one and r["stats"]["floor"]["median"] > one]
    state = {}
    for key, adapters in sparse.items():  # after the timed steps: gradients set to None, AdamW moments alive
        opt = host.variants[key].optimizer
        state[key] = {
            "bytes": adapter_state_bytes(adapters, opt)["total"],  # gradients already freed (zero_grad)
            "nnz": sum(m.nnz() for m in adapters.values()),
            "grad_paths": grad_paths(adapters),
        }
    print_table(
        f"Sparse step / floor and dense round / full FT, SmolLM2-135M {'bf16 autocast' if bf16 else 'fp32'}, "
        f"batch {shape[0]}x{shape[1]} (median of {reps} alternating reps)",
        ["variant", "wall s", "range", "x floor", "x full FT", "CPU s", "CPU x floor", "CPU x full FT"],
        rows,
    )
    entry = {
        "benchmark": "sparse_step",
        "quick": quick,
        "batch": shape,
        "precision": "bf16-mixed" if bf16 else "32-true",
        "reps": reps,
        "threads": step_threads,
        "contended": contended,
        "results": results,
        "adapter_state": state,
        "targets": {"rigsa_sparse@0.0346/floor": SPARSE_TARGET, "rigsa_dense/full": DENSE_TARGET},
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "wall_s": time.time() - t_start,
    }
    record("sparse_step", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict), on paired CPU-time and wall-time ratios."""
    rows = []
    for n, res in entry["results"].items():
        skip = entry.get("quick") or n in entry.get("contended", [])
        why = "n/a (quick size)" if entry.get("quick") else "n/a (contended)"
        for basis, floor_key, full_key in (
            ("CPU", "cpu_vs_floor", "cpu_vs_full"),
            ("wall", "vs_floor", "vs_full"),
        ):
            s = res[floor_key]["rigsa_sparse@0.0346"]
            d = res[full_key]["rigsa_dense"]
            rows.append(
                (
                    f"rigsa_sparse@0.0346 / floor, {basis} ({n} thr)",
                    f"{s:.3f}x",
                    f"<= {SPARSE_TARGET}x",
                    why if skip else verdict(s, SPARSE_TARGET),
                )
            )
            rows.append(
                (
                    f"rigsa_dense / full FT, {basis} ({n} thr)",
                    f"{d:.3f}x",
                    f"<= {DENSE_TARGET}x",
                    why if skip else verdict(d, DENSE_TARGET),
                )
            )
        before = res["cpu_stats"][BEFORE]["median"] / res["cpu_stats"]["rigsa_sparse@0.0346"]["median"]
        rows.append(
            (f"rigsa_sparse@0.0346 step before / after, CPU ({n} thr)", f"{before:.3f}x", "(reference)", "")
        )
        for k in NAMES[2:]:
            if k != "rigsa_sparse@0.0346":
                rows.append(
                    (f"{k} / floor, CPU ({n} thr)", f"{res['cpu_vs_floor'][k]:.3f}x", "(reference)", "")
                )
    return rows


def markdown(entry: dict[str, Any]) -> str:
    """The ratio table of a ``sparse_step`` entry as markdown."""
    lines = [
        "| variant | threads | CPU s/step | CPU x floor | CPU x full FT | wall s/step | wall x floor | wall x full FT |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, res in entry["results"].items():
        for k in NAMES:
            lines.append(
                f"| {k} | {n} | {res['cpu_stats'][k]['median']:.2f} | {res['cpu_vs_floor'][k]:.3f} | "
                f"{res['cpu_vs_full'][k]:.3f} | {res['stats'][k]['median']:.2f} | {res['vs_floor'][k]:.3f} | "
                f"{res['vs_full'][k]:.3f} |"
            )
    return "\n".join(lines)


def profile(density: float = 0.0346, threads: int = 1, precision: str | None = None, top: int = 15) -> str:
    """Profile one sparse step at ``density`` (after two warm-up steps); the top ops by self CPU time as markdown."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(threads)
    bf16 = resolve_bf16(precision)
    from bench.head_limit import task_batch
    from bench.sparse_phase import random_masks, set_masks
    from bench.steps import Host, rigsa_adapters, rigsa_variant
    from rigsa_lightning.adapters.rigsa.storage import to_sparse_storage

    torch.manual_seed(0)
    model, tok = load_smollm2()
    batch = task_batch(tok, 8)
    host = Host(model)
    pruned = rigsa_adapters(host, seed=99)
    set_masks(pruned, random_masks(pruned, density, seed=int(density * 1e4)))
    host.add("sparse", rigsa_variant({n: to_sparse_storage(m) for n, m in pruned.items()}))
    del pruned
    step = host.step_fn("sparse", batch, bf16=bf16)
    step()
    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [
        f"One sparse step at d = {density}, {threads} thread(s), {'bf16 autocast' if bf16 else 'fp32'}, "
        f"batch {list(batch['input_ids'].shape)}: {wall:.2f} s under the profiler",
        "",
        "| op | calls | self CPU s | share |",
        "|---|---|---|---|",
    ]
    for e in events[:top]:
        lines.append(
            f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.3f} | {e.self_cpu_time_total / total:.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    from bench.common import setup_environment

    setup_environment()
    p = argparse.ArgumentParser(prog="python -m bench.sparse_step")
    p.add_argument("--profile", action="store_true", help="profile one sparse step (top ops as markdown)")
    p.add_argument("--density", type=float, default=0.0346)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", choices=["auto", "bf16", "32"], default="auto")
    args = p.parse_args()
    if args.profile:
        print(profile(args.density, args.threads, args.precision))
    else:
        import json

        from bench.common import results_path

        print(markdown(json.loads(results_path().read_text())["sparse_step"]))
