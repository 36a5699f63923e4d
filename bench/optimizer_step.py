"""Benchmark - AdamW implementations on the RIGSA adapter's tensors (same process, alternating).

``torch.optim.AdamW`` has three CPU code paths: the per-tensor loop (the CPU default, ``foreach=None``), the
multi-tensor ``foreach=True`` path and the fused kernel ``fused=True`` (CPU since torch 2.4). Timed here on random
tensors of the exact shapes the train job optimizes, with the train job's groups (ΔW / kept values at lr 1e-3 with
weight decay 1.0, the 210 gates at lr 1e-2 without decay):

* ``dense``: the 210 block matrices of SmolLM2-135M (106,168,320 entries), the dense RIGSA round;
* ``sparse@d``: the sparse storage's kept values (one 1-D tensor per matrix) at density ``d`` (0.5, 0.0346).

Each variant also runs three steps on the same small tensors and gradients as the default loop and reports the
largest absolute difference of the parameters (``max_abs_diff``; 0 = bitwise equal). ``RigsaLitModule`` keeps the
fastest variant that is bitwise equal to the loop.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import alternate, environment, print_table, record, say, summary

#: SmolLM2-135M block linears: (out, in) -> count over the 30 layers (as bench.sparse_phase).
SHAPES = {(576, 576): 60, (192, 576): 60, (1536, 576): 60, (576, 1536): 30}
VARIANTS: dict[str, dict[str, Any]] = {
    "loop (default)": {},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def make_params(density: float | None, scale: int, seed: int = 0) -> list[Any]:
    """Random ΔW matrices (``density=None``) or kept-value vectors of the 210 shapes, divided by ``scale``, with
    random gradients; plus 210 scalar gates (last)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = []
    for (o, i), count in SHAPES.items():
        for _ in range(count):
            numel = (o // scale) * (i // scale)
            shape: tuple[int, ...] = (
                (o // scale, i // scale) if density is None else (max(1, round(numel * density)),)
            )
            p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
            p.grad = torch.randn(shape, generator=gen) * 1e-3
            params.append(p)
    for _ in range(sum(SHAPES.values())):
        a = torch.nn.Parameter(torch.full((), 1e-6))
        a.grad = torch.randn((), generator=gen) * 1e-3
        params.append(a)
    return params


def make_optimizer(params: list[Any], **kwargs: Any) -> Any:
    """AdamW with the train job's two groups (see the module docstring)."""
    import torch

    n = sum(SHAPES.values())
    groups = [
        {"params": params[:n], "lr": 1e-3, "weight_decay": 1.0},
        {"params": params[n:], "lr": 1e-2, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, **kwargs)


def max_abs_diff(density: float | None, kwargs: dict[str, Any], steps: int = 3) -> float:
    """Largest |difference| of the parameters after ``steps`` steps of ``kwargs`` vs the default loop."""

    ref = make_params(density, scale=8)
    new = make_params(density, scale=8)
    opt_ref, opt_new = make_optimizer(ref), make_optimizer(new, **kwargs)
    for _ in range(steps):
        opt_ref.step()
        opt_new.step()
    return max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(ref, new)) if ref else 0.0


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the benchmark; returns (and records) its results entry."""
    import torch

    threads = threads or [torch.get_num_threads()]
    reps = reps or (2 if quick else 5)
    scale = 4 if quick else 1
    t_start = time.time()
    env = environment()
    sets: dict[str, float | None] = {"dense": None, "sparse@0.5": 0.5, "sparse@0.0346": 0.0346}
    results: dict[str, Any] = {}
    rows = []
    for key, density in sets.items():
        equal = {name: max_abs_diff(density, kw) for name, kw in VARIANTS.items()}
        params = make_params(density, scale)
        entries = sum(p.numel() for p in params)
        opts = {name: make_optimizer(params, **kw) for name, kw in VARIANTS.items()}
        per_threads: dict[str, Any] = {}
        for n in threads:
            torch.set_num_threads(n)
            say(f"[optimizer] {key}: {entries:,} entries, threads={n}, {reps} alternating reps")
            times = alternate({k: o.step for k, o in opts.items()}, reps=reps, warmup=1)
            stats = {k: summary(v) for k, v in times.items()}
            base = stats["loop (default)"]["median"]
            per_threads[str(n)] = {
                "seconds": times,
                "stats": stats,
                "vs_loop": {k: s["median"] / base for k, s in stats.items()},
            }
            for k, s in stats.items():
                rows.append(
                    [
                        f"{key} ({n} thr)",
                        k,
                        f"{s['median'] * 1e3:.0f}",
                        f"{s['median'] / base:.3f}",
                        f"{equal[k]:.1e}" if equal[k] else "0 (bitwise)",
                    ]
                )
        results[key] = {"entries": entries, "max_abs_diff_vs_loop": equal, "threads": per_threads}
        del opts, params
    print_table(
        f"AdamW step on the adapter tensors (median of {reps} alternating reps{', quarter shapes' if quick else ''})",
        ["tensors", "AdamW", "ms/step", "x loop", "max |diff| vs loop (3 steps)"],
        rows,
    )
    entry = {
        "benchmark": "optimizer",
        "quick": quick,
        "reps": reps,
        "threads": threads,
        "results": results,
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "wall_s": time.time() - t_start,
    }
    record("optimizer", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    rows = []
    for key, res in entry["results"].items():
        for n, st in res["threads"].items():
            for k in ("foreach", "fused"):
                diff = res["max_abs_diff_vs_loop"][k]
                rows.append(
                    (
                        f"AdamW {k} / loop, {key} ({n} thr)",
                        f"{st['vs_loop'][k]:.3f}x",
                        "(reference)",
                        "bitwise equal" if diff == 0 else f"differs {diff:.1e}",
                    )
                )
    return rows
