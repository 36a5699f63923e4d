"""Benchmark 2 - the sparse phase: adapter training state and step time after pruning to density d.

For d in {0.5, 0.1, 0.0346} (random masks of that density on all 210 matrices of SmolLM2-135M):

* **state bytes**, measured on the tensors that exist right after a training step's ``optimizer.step()`` (before
  ``zero_grad``): ΔW (or kept values), their gradients, AdamW's moments, masks (bool) or indices (int32), for
  (a) the dense-storage :class:`DenseDeltaLinear` and (b) :class:`SparseDeltaLinear`
  (``rigsa_lightning/adapters/rigsa/sparse.py``). Target at d <= 0.1: sparse <= (d + 0.02) x dense.
* **step time** (same process, alternating): dense storage (masked, ``enforce_mask`` after each step as the IMP
  callback does), sparse storage (``grad_mode=auto``: the sampled product below density 0.2, otherwise the dense
  weight-gradient matmul + gather), sparse with the dense gather at 0.0346 (to isolate the sampled product's gain),
  PEFT LoRA r16 (dropout 0.05 as configured, and 0) and the frozen forward+backward floor. Moonshot: sparse at
  0.0346 no slower than LoRA r16. The dense storage does the same dense work at any density, so its step is timed
  at d = 0.0346 only. Steps run at 2 threads on a quiet machine and at 1 thread when a probe shows 2 threads not
  clearly faster (another job on the machine); ``--threads`` overrides.
* **weight-gradient kernel** (micro-benchmark, threads 1 and 2, 1 when busy): the per-step cost of the weight
  gradient over all 210 matrices at T = 1,600 tokens, dense ``gᵀx`` (+ gather) vs the sampled product, per density.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    alternate,
    environment,
    fmt_bytes,
    load_smollm2,
    print_table,
    random_batch,
    record,
    say,
    summary,
    thread_probe,
    verdict,
)

DENSITIES = (0.5, 0.1, 0.0346)
STEP_DENSITY = 0.0346
#: SmolLM2-135M block linears: (out, in) -> count over the 30 layers.
SHAPES = {(576, 576): 60, (192, 576): 60, (1536, 576): 60, (576, 1536): 30}


def random_masks(adapters: dict[str, Any], density: float, seed: int) -> dict[str, Any]:
    """A uniformly random bool mask of (about) ``density`` per module."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.delta.shape, generator=gen) < density for n, m in adapters.items()}


def set_masks(adapters: dict[str, Any], masks: dict[str, Any]) -> None:
    """Install masks by reference (timing only: ΔW values at pruned entries are left as they are)."""
    for name, module in adapters.items():
        module.mask = masks[name]
        module._full = None


def state_after_step(adapters: dict[str, Any], variant: Any, model: Any, batch: dict) -> dict[str, int]:
    """Adapter state bytes right after ``optimizer.step()`` (gradients still alive), then ``zero_grad``."""
    from bench.steps import lm_loss
    from rigsa_lightning.adapters.rigsa.storage import adapter_state_bytes

    loss = lm_loss(model, batch)
    loss.backward()
    variant.optimizer.step()
    state = adapter_state_bytes(adapters, variant.optimizer)
    variant.optimizer.zero_grad(set_to_none=True)
    if variant.post:
        variant.post()
    return state


def kernel_micro(densities: tuple[float, ...], threads: list[int], tokens: int, reps: int) -> dict[str, Any]:
    """Per-step weight-gradient time over the 210 matrices: dense gᵀx (+gather) vs sampled, per density."""
    import torch

    from rigsa_lightning.adapters.rigsa.sparse import sampled_weight_grad

    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    for n in threads:
        torch.set_num_threads(n)
        per_d: dict[str, Any] = {}
        for d in densities:
            totals = {"dense_gather": 0.0, "sampled": 0.0}
            for (o, i), count in SHAPES.items():
                g = torch.randn(tokens, o, generator=gen)
                x = torch.randn(tokens, i, generator=gen)
                idx = (torch.rand(o * i, generator=gen) < d).nonzero().reshape(-1).to(torch.int32)
                fns = {
                    "dense_gather": lambda g=g, x=x, idx=idx: (g.t() @ x).view(-1)[idx],
                    "sampled": lambda g=g, x=x, idx=idx, o=o, i=i: sampled_weight_grad(g, x, idx, (o, i)),
                }
                times = alternate(fns, reps=reps, warmup=1)
                for k, v in times.items():
                    totals[k] += summary(v)["median"] * count
            totals["sampled/dense"] = totals["sampled"] / totals["dense_gather"]
            per_d[str(d)] = totals
        out[str(n)] = per_d
    return out


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the benchmark; returns (and records) its results entry."""
    import torch

    from bench.steps import Host, frozen_variant, lora_model, rigsa_adapters, rigsa_variant, train_step
    from rigsa_lightning.adapters.rigsa.storage import to_sparse_storage

    probe = thread_probe()
    busy = probe["speedup_2_over_1"] < 1.3  # 2 threads not clearly faster: another job holds a core
    # Steps: the fastest clean setting (2 threads on a quiet machine, else 1); ``--threads`` overrides.
    step_threads = threads or ([1] if (busy or quick) else [2])
    micro_threads = threads or ([1] if (busy or quick) else [1, 2])
    if busy and not threads:
        say(
            f"[sparse_phase] machine busy (2 threads {probe['speedup_2_over_1']:.2f}x the speed of 1): 1 thread"
        )
    reps = reps or (1 if quick else 3)
    batch_shape = (2, 64) if quick else (8, 200)
    t_start = time.time()
    env = environment()
    torch.manual_seed(0)
    model, _ = load_smollm2()
    vocab = int(model.config.vocab_size)
    host = Host(model)
    dense_adapters = rigsa_adapters(host)
    dense_var = rigsa_variant(dense_adapters, enforce=True)
    host.add("dense", dense_var)
    small = random_batch(vocab, 2, 32, seed=1)
    batch = random_batch(vocab, *batch_shape, seed=0)

    masks = {d: random_masks(dense_adapters, d, seed=int(d * 1e4)) for d in DENSITIES}
    state: dict[str, Any] = {}
    sparse_sets: dict[float, dict[str, Any]] = {}
    for d in DENSITIES:
        set_masks(dense_adapters, masks[d])
        host.activate("dense")
        dense_state = state_after_step(dense_adapters, dense_var, model, small)
        sparse = {n: to_sparse_storage(m) for n, m in dense_adapters.items()}
        sparse_var = rigsa_variant(sparse)
        key = f"sparse@{d}"
        host.add(key, sparse_var)
        host.activate(key)
        sparse_state = state_after_step(sparse, sparse_var, model, small)
        nnz = sum(m.nnz() for m in sparse.values())
        numel = sum(m.delta.numel() for m in dense_adapters.values())
        state[str(d)] = {
            "density": nnz / numel,
            "nnz": nnz,
            "dense": dense_state,
            "sparse": sparse_state,
            "ratio": sparse_state["total"] / dense_state["total"],
            "target_ratio": d + 0.02,
            "verdict": verdict(sparse_state["total"] / dense_state["total"], d + 0.02) if d <= 0.1 else "n/a",
        }
        sparse_sets[d] = sparse
        if d != STEP_DENSITY:
            host.remove(key)  # step time of sparse@0.5/0.1 re-added below (keeps memory low between phases)
    rows = []
    for d, s in state.items():
        rows.append(
            [
                d,
                f"{s['density']:.4f}",
                fmt_bytes(s["dense"]["total"]),
                fmt_bytes(s["sparse"]["total"]),
                f"{s['ratio']:.4f}",
                f"<= {s['target_ratio']:.4f}" if float(d) <= 0.1 else "-",
                s["verdict"],
            ]
        )
    print_table(
        "Sparse phase: adapter training state (ΔW/values + grads + AdamW moments + masks/indices + gates)",
        ["density", "actual", "dense storage", "sparse storage", "sparse/dense", "target", "verdict"],
        rows,
    )

    # ------------------------------------------------------------------ step time
    set_masks(dense_adapters, masks[STEP_DENSITY])
    host.add("floor", frozen_variant())
    for d in DENSITIES:
        if f"sparse@{d}" not in host.variants:
            host.add(f"sparse@{d}", rigsa_variant(sparse_sets[d]))
    gather = {n: to_sparse_storage(m, grad_mode="dense") for n, m in dense_adapters.items()}
    host.add(f"sparse_gather@{STEP_DENSITY}", rigsa_variant(gather))
    lora, lora_params, lora_opt = lora_model(16)
    lora0, lora0_params, lora0_opt = lora_model(16, dropout=0.0)
    names = [
        f"dense@{STEP_DENSITY}",
        *[f"sparse@{d}" for d in DENSITIES],
        f"sparse_gather@{STEP_DENSITY}",
        "lora_r16",
        "lora_r16_nodrop",
        "floor",
    ]

    def fns_for(b: dict) -> dict[str, Any]:
        fns: dict[str, Any] = {f"dense@{STEP_DENSITY}": host.step_fn("dense", b)}
        for k in names:
            if k in host.variants:
                fns[k] = host.step_fn(k, b)
        fns["lora_r16"] = lambda: train_step(lora, b, lora_opt, lora_params)
        fns["lora_r16_nodrop"] = lambda: train_step(lora0, b, lora0_opt, lora0_params)
        return {k: fns[k] for k in names}

    for fn in fns_for(small).values():
        fn()
    tokens = batch_shape[0] * batch_shape[1]
    steps: dict[str, Any] = {}
    rows = []
    for n in step_threads:
        torch.set_num_threads(n)
        say(f"[sparse_phase] threads={n}, batch {batch_shape[0]}x{batch_shape[1]}, {reps} alternating reps")
        times = alternate(fns_for(batch), reps=reps, warmup=0, log=say)
        stats = {k: summary(v) for k, v in times.items()}
        vs_lora = {k: summary([a / b for a, b in zip(times[k], times["lora_r16"])])["median"] for k in names}
        vs_lora0 = {
            k: summary([a / b for a, b in zip(times[k], times["lora_r16_nodrop"])])["median"] for k in names
        }
        vs_dense = {
            k: summary([a / b for a, b in zip(times[k], times[f"dense@{STEP_DENSITY}"])])["median"]
            for k in names
        }
        steps[str(n)] = {
            "seconds": times,
            "stats": stats,
            "vs_lora_r16": vs_lora,
            "vs_lora_r16_nodrop": vs_lora0,
            "vs_dense_storage": vs_dense,
        }
        for k in names:
            rows.append(
                [
                    f"{k} ({n} thr)",
                    f"{stats[k]['median']:.2f}",
                    f"{stats[k]['min']:.2f}-{stats[k]['max']:.2f}",
                    f"{tokens / stats[k]['median']:.0f}",
                    f"{vs_dense[k]:.3f}",
                    f"{vs_lora[k]:.3f}",
                    f"{vs_lora0[k]:.3f}",
                ]
            )
    print_table(
        f"Sparse phase step, batch {batch_shape[0]}x{batch_shape[1]} (median of {reps} alternating reps)",
        ["variant", "s/step", "range", "tokens/s", "x dense storage", "x LoRA r16", "x LoRA r16 no dropout"],
        rows,
    )

    # ------------------------------------------------------------------ kernel micro-benchmark
    micro = kernel_micro(DENSITIES, micro_threads, tokens, reps=2 if quick else 5)
    rows = []
    for n, per_d in micro.items():
        for d, t in per_d.items():
            rows.append(
                [
                    f"d={d} ({n} thr)",
                    f"{t['dense_gather'] * 1e3:.0f}",
                    f"{t['sampled'] * 1e3:.0f}",
                    f"{t['sampled/dense']:.3f}",
                ]
            )
    print_table(
        f"Weight gradient of all 210 matrices per step (T = {tokens} tokens), ms",
        ["density", "dense gᵀx + gather", "sampled (SDDMM)", "sampled/dense"],
        rows,
    )
    moon = steps[str(step_threads[0])]["vs_lora_r16"][f"sparse@{STEP_DENSITY}"]
    moon0 = steps[str(step_threads[0])]["vs_lora_r16_nodrop"][f"sparse@{STEP_DENSITY}"]
    entry = {
        "benchmark": "sparse_phase",
        "quick": quick,
        "batch": list(batch_shape),
        "reps": reps,
        "state": state,
        "steps": steps,
        "weight_grad_kernel_s": micro,
        "thread_probe": probe,
        "targets": {"state_ratio": "<= d + 0.02 at d <= 0.1", "moonshot": "sparse@0.0346 / lora_r16 <= 1.0"},
        "moonshot_ratio": moon,
        "moonshot_verdict": verdict(moon, 1.0),
        "moonshot_ratio_vs_nodrop": moon0,
        "moonshot_verdict_vs_nodrop": verdict(moon0, 1.0),
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "wall_s": time.time() - t_start,
    }
    record("sparse_phase", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    rows = []
    for d, s in entry["state"].items():
        if float(d) <= 0.1:
            rows.append(
                (
                    f"state sparse/dense at d={d}",
                    f"{s['ratio']:.4f}",
                    f"<= {s['target_ratio']:.4f}",
                    s["verdict"],
                )
            )
    for n, st in entry["steps"].items():
        r = st["vs_lora_r16"][f"sparse@{STEP_DENSITY}"]
        q = entry.get("quick")
        rows.append(
            (
                f"step sparse@0.0346 / LoRA r16 ({n} thr)",
                f"{r:.3f}x",
                "<= 1.0x (moonshot)",
                "n/a (quick size)" if q else verdict(r, 1.0),
            )
        )
        r0 = st.get("vs_lora_r16_nodrop", {}).get(f"sparse@{STEP_DENSITY}", float("nan"))
        rows.append(
            (
                f"step sparse@0.0346 / LoRA r16 dropout 0 ({n} thr)",
                f"{r0:.3f}x",
                "<= 1.0x (stricter)",
                "n/a (quick size)" if q else verdict(r0, 1.0),
            )
        )
        r2 = st["vs_dense_storage"][f"sparse@{STEP_DENSITY}"]
        rows.append((f"step sparse / dense storage @0.0346 ({n} thr)", f"{r2:.3f}x", "(reference)", ""))
    return rows
