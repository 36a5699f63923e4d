"""Benchmark 3 - one IMP pruning event over all 210 adapted matrices of SmolLM2-135M (~106M entries), and a
bounded-memory global threshold over 1.7B entries (SmolLM2-1.7B's adapted size).

**Round over 106M entries.** 210 ``DenseDeltaLinear`` modules of SmolLM2-135M's shapes around uninitialised
(never touched, so never resident) base layers; ΔW = its seeded initial value plus noise (a stand-in for one epoch of
training; ~10% of the signs flip). One round of :class:`rigsa_lightning.pruning.IterativeMagnitudePruning` as
``experiment=rigsa_50`` configures it (sparsity 0.5, sign_magnitude, rewind to init, pruned entries zero), with
``scope`` per_matrix and global, alternating with two naive references that select the same entries:

* ``naive_per_matrix``: ``torch.topk`` on each matrix's masked scores;
* ``naive_global``: concatenate every score into one tensor, ``torch.kthvalue`` for the threshold.

All variants select exactly the library's entries (the ``same masks`` column compares mask digests). (Entries
recorded before 2026-12-05 also hold ``lean_per_matrix`` / ``lean_global``, a first memory-lean prototype of the
round since removed: the library round streams over row chunks itself.)

Every measurement regenerates the adapters from the same seeds (identical inputs), returns freed memory to the OS
(``malloc_trim``), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) and reads ``VmHWM`` afterwards:
the *extra* peak memory of the prune is ``VmHWM - RSS before``. Timing runs (one fresh process per thread count)
use the default allocator (``extra peak RSS``: what the process really grows by, glibc's heap reuse and
fragmentation included); one more fresh process runs with a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``)
so every freed tensor goes back to the OS and RSS follows live tensor memory (``extra live peak``; its timings are
not used: every allocation then pays page faults).
Targets: <= 2 s on 2 cores; extra peak <= 2 x the largest matrix (fp32: 2 x 3.5 MB = 7.1 MB). The same live-memory
measurement is repeated on one block of SmolLM2-1.7B (7 matrices, largest 8192 x 2048), where fixed-size buffers
(the radix histograms, ~3 MB) no longer weigh against a 3.5 MB matrix.

**1.7B entries.** :func:`rigsa_lightning.pruning.iter_global_keep_masks` over the 168 matrices of SmolLM2-1.7B
(24 layers x 7; 1,610,612,736 entries) whose scores are *generated one matrix at a time from seeds* (a lazy
sequence: nothing but the current matrix exists), in a fresh process: peak RSS stays a few times the largest matrix
(8192 x 2048 fp32 = 64 MiB), where concatenating the scores would need 6.4 GB.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any

from bench.common import (
    environment,
    fmt_bytes,
    peak_rss_bytes,
    print_table,
    record,
    reset_peak_rss,
    rss_bytes,
    run_worker,
    say,
    summary,
    trim_malloc,
    verdict,
)

SMOLLM2_135M = {"hidden": 576, "mlp": 1536, "layers": 30, "kv": 192}
SMOLLM2_1_7B = {"hidden": 2048, "mlp": 8192, "layers": 24, "kv": 2048}
IMP_CFG = {
    "enabled": True,
    "rounds": 1,
    "sparsity": 0.5,
    "epochs_per_round": 1,
    "final_epochs": 1,
    "criterion": "sign_magnitude",
    "keep_of": "all",
    "rewind": "init",
    "pruned_value": "zero",
}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
TIME_TARGET_S = 2.0


def layer_shapes(spec: dict[str, int]) -> list[tuple[str, tuple[int, int]]]:
    """(name, (out, in)) of the 7 projections of every block of a Llama-style model."""
    h, m, kv = spec["hidden"], spec["mlp"], spec["kv"]
    per_layer = [
        ("self_attn.q_proj", (h, h)),
        ("self_attn.k_proj", (kv, h)),
        ("self_attn.v_proj", (kv, h)),
        ("self_attn.o_proj", (h, h)),
        ("mlp.gate_proj", (m, h)),
        ("mlp.up_proj", (m, h)),
        ("mlp.down_proj", (h, m)),
    ]
    return [(f"model.layers.{i}.{n}", s) for i in range(spec["layers"]) for n, s in per_layer]


SPECS = {"135m": SMOLLM2_135M, "1.7b_block": {**SMOLLM2_1_7B, "layers": 1}}


def build_adapters(seed: int = 1234, noise: float = 0.3, model: str = "135m") -> dict[str, Any]:
    """DenseDeltaLinear modules of a model's shapes (``135m``: SmolLM2-135M's 210; ``1.7b_block``: one block of
    SmolLM2-1.7B, 7 matrices, 67M entries); ΔW = initial + noise (deterministic in ``seed``)."""
    import torch
    from torch import nn

    from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear
    from rigsa_lightning.adapters.rigsa.seeding import derive_seed

    gen = torch.Generator().manual_seed(seed)
    adapters = {}
    for name, (o, i) in layer_shapes(SPECS[model]):
        base = torch.nn.utils.skip_init(nn.Linear, i, o, bias=False)  # uninitialised: never resident
        mod = DenseDeltaLinear(base, init_seed=derive_seed(seed, name), gate_key=name)
        with torch.no_grad():
            bound = 1.0 / i**0.5
            mod.delta.add_(torch.randn(mod.delta.shape, generator=gen), alpha=noise * bound)
        adapters[name] = mod
    return adapters


def _naive(adapters: dict[str, Any], scope: str, density: float) -> None:
    """The straightforward round: same candidates and the same number kept, selected with topk / kthvalue."""
    import torch

    from rigsa_lightning.pruning import sign_stable

    cands, scores = {}, {}
    for name, mod in adapters.items():
        init = mod.initial_delta()
        cands[name] = mod.mask & sign_stable(mod.delta.detach(), init)
        scores[name] = torch.where(cands[name], mod.delta.detach().abs(), torch.full_like(init, -1.0))
    if scope == "per_matrix":
        for name, mod in adapters.items():
            k = int(round(density * mod.mask.numel()))
            flat = scores[name].reshape(-1)
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[torch.topk(flat, k, sorted=False).indices] = True
            mod.apply_mask((keep & cands[name].reshape(-1)).view(mod.mask.shape), rewind=True)
    else:
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        total = flat.numel()
        k = int(round(density * total))
        threshold = torch.kthvalue(
            flat, total - k + 1
        ).values  # ties may keep a few extra: fine for a reference
        del flat
        for name, mod in adapters.items():
            mod.apply_mask((scores[name] >= threshold) & cands[name], rewind=True)


def mask_digest(adapters: dict[str, Any]) -> str:
    """sha1 of every module's mask bytes (module order): equal digests = identical masks."""
    import hashlib

    h = hashlib.sha1()
    for mod in adapters.values():
        h.update(mod.mask.contiguous().view(-1).numpy().tobytes())
    return h.hexdigest()[:16]


def _run_variant(variant: str, adapters: dict[str, Any]) -> None:
    from rigsa_lightning.pruning import IterativeMagnitudePruning

    if variant in ("per_matrix", "global"):
        cb = IterativeMagnitudePruning({**IMP_CFG, "scope": variant}, log_per_module=False)
        cb.prune(adapters)
    else:
        _naive(adapters, variant.removeprefix("naive_"), 0.5)


def _warm_up(variants: list[str]) -> None:
    """Run every variant once on two small matrices: the kernels' code pages and allocator arenas a first call
    maps would otherwise count as the first measured variant's extra peak memory."""
    import torch
    from torch import nn

    from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear

    for variant in variants:
        small = {
            f"m{i}": DenseDeltaLinear(nn.Linear(96, 64 * (i + 1), bias=False), init_seed=i) for i in range(2)
        }
        with torch.no_grad():
            for m in small.values():
                m.delta.add_(torch.randn(m.delta.shape) * 0.01)
        _run_variant(variant, small)


def measure_round(threads: int, reps: int, variants: list[str], model: str = "135m") -> dict[str, Any]:
    """Worker: alternate the variants ``reps`` times; each on freshly built adapters; time + extra peak RSS."""
    import torch

    torch.set_num_threads(threads)
    _warm_up(variants)
    out: dict[str, dict[str, list[float]]] = {v: {"seconds": [], "extra_peak_bytes": []} for v in variants}
    clear_refs = True
    numel = 0
    largest = 0
    for rep in range(reps):
        order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
        for variant in order:
            adapters = build_adapters(model=model)
            numel = sum(m.delta.numel() for m in adapters.values())
            largest = max(m.delta.numel() for m in adapters.values())
            gc.collect()
            trim_malloc()
            before = rss_bytes()
            clear_refs = reset_peak_rss() and clear_refs
            t0 = time.perf_counter()
            _run_variant(variant, adapters)
            seconds = time.perf_counter() - t0
            peak = peak_rss_bytes()
            density = sum(int(m.mask.sum()) for m in adapters.values()) / numel
            out[variant]["seconds"].append(seconds)
            out[variant]["extra_peak_bytes"].append(peak - before)
            out[variant].setdefault("density", []).append(density)  # type: ignore[arg-type]
            out[variant].setdefault("mask_digest", []).append(mask_digest(adapters))  # type: ignore[arg-type]
            del adapters
    return {
        "threads": threads,
        "numel": numel,
        "largest_matrix_entries": largest,
        "clear_refs": clear_refs,
        "variants": out,
    }


class _LazyCandidates(Sequence):
    """Candidate masks generated on access (all alive: a first round with ``criterion: magnitude``)."""

    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        self.shapes = shapes

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        import torch

        if isinstance(i, slice):
            raise TypeError("no slicing")
        if i >= len(self.shapes):
            raise IndexError(i)
        return torch.ones(self.shapes[i], dtype=torch.bool)


def measure_streamed_global(threads: int, density: float = 0.0346, scale: float = 1.0) -> dict[str, Any]:
    """Worker: global threshold over SmolLM2-1.7B's 1.61B entries, scores regenerated per matrix from seeds."""
    import torch

    from rigsa_lightning.pruning import count_true, iter_global_keep_masks

    torch.set_num_threads(threads)
    shapes = [s for _, s in layer_shapes(SMOLLM2_1_7B)]
    if scale < 1.0:  # quick mode: fewer layers, same matrix sizes
        shapes = shapes[: max(7, int(len(shapes) * scale) // 7 * 7)]
    numel = sum(o * i for o, i in shapes)
    largest = max(o * i for o, i in shapes)
    calls = [0]

    def score_fn(i: int) -> Any:
        def fn() -> Any:
            calls[0] += 1
            gen = torch.Generator().manual_seed(1000 + i)
            return torch.rand(shapes[i], generator=gen)  # |ΔW|-like non-negative scores

        return fn

    k = int(round(density * numel))
    gc.collect()
    trim_malloc()
    before = rss_bytes()
    reset_peak_rss()
    t0 = time.perf_counter()
    kept = 0
    for mask in iter_global_keep_masks([score_fn(i) for i in range(len(shapes))], _LazyCandidates(shapes), k):
        kept += count_true(mask)
        del mask
    seconds = time.perf_counter() - t0
    peak = peak_rss_bytes()
    return {
        "threads": threads,
        "matrices": len(shapes),
        "numel": numel,
        "largest_matrix_bytes_fp32": largest * 4,
        "k": k,
        "kept": kept,
        "exact": kept == k,
        "seconds": seconds,
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "extra_peak_bytes": peak - before,
        "score_regenerations": calls[0],
        "concatenated_scores_bytes": numel * 4,
    }


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the benchmark (workers in fresh processes); returns (and records) its results entry."""
    threads = threads or ([1] if quick else [1, 2])
    reps = reps or (1 if quick else 3)
    t_start = time.time()
    env = environment()
    variants = ["per_matrix", "global"]
    variants += [] if quick else ["naive_per_matrix", "naive_global"]
    rounds: dict[str, Any] = {}
    for n in threads:
        say(f"[pruning] 106M-entry round, threads={n}, {reps} alternating reps (fresh process)")
        rounds[str(n)] = run_worker(
            "bench.pruning_event:measure_round", {"threads": n, "reps": reps, "variants": variants}
        )
    say("[pruning] live-memory run (fixed glibc mmap threshold, 1 thread, fresh process)")
    live = run_worker(
        "bench.pruning_event:measure_round", {"threads": 1, "reps": 1, "variants": variants}, env=MALLOC_ENV
    )
    say("[pruning] live memory on one SmolLM2-1.7B block (7 matrices, largest 64 MiB; fresh process)")
    block = run_worker(
        "bench.pruning_event:measure_round",
        {"threads": 1, "reps": 1, "variants": variants[:4], "model": "1.7b_block"},
        env=MALLOC_ENV,
    )
    block_largest = block["largest_matrix_entries"] * 4
    block_rows = [
        [
            v,
            fmt_bytes(block["variants"][v]["extra_peak_bytes"][0]),
            f"{block['variants'][v]['extra_peak_bytes'][0] / block_largest:.2f}",
            verdict(block["variants"][v]["extra_peak_bytes"][0], 2 * block_largest),
        ]
        for v in variants[:4]
    ]
    largest_bytes = live["largest_matrix_entries"] * 4
    rows = []
    summaries: dict[str, Any] = {}

    def ref_of(v: str) -> str:
        return "global" if v.endswith("global") else "per_matrix"

    for v in variants:
        live_peak = summary(live["variants"][v]["extra_peak_bytes"])["median"]
        summaries[v] = {
            "extra_live_peak_bytes": live_peak,
            "extra_live_peak_over_largest": live_peak / largest_bytes,
        }
        for n in threads:
            res = rounds[str(n)]["variants"][v]
            secs = summary(res["seconds"])
            rss = summary(res["extra_peak_bytes"])["median"]
            summaries[v][f"seconds_{n}thr"] = secs
            summaries[v][f"extra_rss_peak_bytes_{n}thr"] = rss
            rows.append(
                [
                    f"{v} ({n} thr)",
                    f"{secs['median']:.2f}",
                    f"{secs['min']:.2f}-{secs['max']:.2f}",
                    fmt_bytes(rss),
                    fmt_bytes(live_peak),
                    f"{live_peak / largest_bytes:.1f}",
                    f"{res['density'][0]:.4f}",
                    str(res["mask_digest"][0] == rounds[str(n)]["variants"][ref_of(v)]["mask_digest"][0]),
                ]
            )
    numel = live["numel"]
    print_table(
        f"IMP round over 210 matrices ({numel / 1e6:.1f}M entries; largest {fmt_bytes(largest_bytes)} fp32), "
        f"median of {reps}",
        [
            "variant",
            "seconds",
            "range",
            "extra peak RSS",
            "extra live peak",
            "live x largest",
            "density",
            "same masks",
        ],
        rows,
    )
    print_table(
        "Extra live peak of a round on one SmolLM2-1.7B block (largest matrix 8192 x 2048 fp32 = 64 MiB)",
        ["variant", "extra live peak", "x largest", "<= 2x"],
        block_rows,
    )
    say("[pruning] streamed global threshold over SmolLM2-1.7B's adapted entries (fresh process)")
    streamed = run_worker(
        "bench.pruning_event:measure_streamed_global",
        {"threads": 1, "scale": 1 / 6 if quick else 1.0},
        timeout=1800,
    )
    print_table(
        "Global threshold, scores generated one matrix at a time (1 thread)",
        [
            "entries",
            "matrices",
            "seconds",
            "peak RSS",
            "extra peak",
            "x largest matrix",
            "concatenated",
            "exact k",
        ],
        [
            [
                f"{streamed['numel'] / 1e9:.3f}B",
                streamed["matrices"],
                f"{streamed['seconds']:.1f}",
                fmt_bytes(streamed["peak_rss_bytes"]),
                fmt_bytes(streamed["extra_peak_bytes"]),
                f"{streamed['extra_peak_bytes'] / streamed['largest_matrix_bytes_fp32']:.1f}",
                fmt_bytes(streamed["concatenated_scores_bytes"]),
                streamed["exact"],
            ]
        ],
    )
    verdicts = {}
    for v in ("per_matrix", "global"):
        best = min(summaries[v][f"seconds_{n}thr"]["median"] for n in threads)
        verdicts[v] = {
            "seconds_best": best,
            "time_verdict": verdict(best, TIME_TARGET_S),
            "extra_live_peak_bytes": summaries[v]["extra_live_peak_bytes"],
            "memory_verdict": verdict(summaries[v]["extra_live_peak_bytes"], 2 * largest_bytes),
        }
    entry = {
        "benchmark": "pruning",
        "quick": quick,
        "reps": reps,
        "threads": threads,
        "config": IMP_CFG,
        "rounds": rounds,
        "live_memory_run": live,
        "live_memory_1_7b_block": block,
        "summary": summaries,
        "streamed_1_7b": streamed,
        "targets": {"seconds": TIME_TARGET_S, "extra_peak_bytes": 2 * largest_bytes},
        "verdicts": verdicts,
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "wall_s": time.time() - t_start,
    }
    record("pruning", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    rows = []
    target_mem = entry["targets"]["extra_peak_bytes"]
    for v, r in entry["verdicts"].items():
        # Entries recorded before 2026-12-05 also hold the lean_* prototype (since removed): a reference row.
        ref = v.startswith("lean_")
        rows.append(
            (
                f"IMP round {v}: time (best thr)",
                f"{r['seconds_best']:.2f} s",
                "(reference)" if ref else "<= 2 s",
                "" if ref else r["time_verdict"],
            )
        )
        rows.append(
            (
                f"IMP round {v}: extra live peak",
                fmt_bytes(r["extra_live_peak_bytes"]),
                "(reference)" if ref else f"<= {fmt_bytes(target_mem)}",
                "" if ref else r["memory_verdict"],
            )
        )
    block = entry.get("live_memory_1_7b_block")
    if block:
        largest = block["largest_matrix_entries"] * 4
        for v, r in block["variants"].items():
            peak = r["extra_peak_bytes"][0]
            ref = v.startswith("lean_")
            rows.append(
                (
                    f"{v} on a 1.7B block: extra live peak",
                    f"{peak / largest:.2f}x largest",
                    "(reference)" if ref else "<= 2x",
                    "" if ref else verdict(peak, 2 * largest),
                )
            )
    s = entry["streamed_1_7b"]
    rows.append(
        (
            f"global threshold {s['numel'] / 1e9:.2f}B entries: peak RSS",
            fmt_bytes(s["peak_rss_bytes"]),
            f"bounded (concatenated: {fmt_bytes(s['concatenated_scores_bytes'])})",
            "met" if s["extra_peak_bytes"] < 10 * s["largest_matrix_bytes_fp32"] else "missed",
        )
    )
    return rows
