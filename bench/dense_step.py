"""Benchmark 1 - the dense RIGSA training step against its references (same process, alternating).

Variants, all on the embedded SmolLM2-135M in fp32, batch 8 x 200 random tokens, the 210 block linears:

* ``rigsa``: DenseDeltaLinear at density 1, merged form ``F.linear(x, W0 + alpha*ΔW)``, AdamW on ΔW + gates;
* ``full``: full fine-tuning of the same 210 weight matrices, AdamW;
* ``floor``: nothing trains; the input embeddings' output requires grad, so backward runs through every layer
  (the activation-gradient matmuls) without any weight gradient - the cost no adapter method can go under;
* ``lora_r16``: PEFT LoRA r16 (alpha 32, dropout 0.05) on the same matrices (a separate model copy), AdamW.

A timed step = forward + loss + backward + grad clipping + AdamW step + zero_grad (see :mod:`bench.steps`).
Target: ``rigsa / full <= 1.10``.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    alternate,
    contended,
    environment,
    load_smollm2,
    print_table,
    random_batch,
    record,
    say,
    summary,
    verdict,
)

TARGET_RATIO = 1.10


def paired_ratios(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Per-repetition ratios ``num/den`` (the two were timed back to back in each repetition)."""
    return [a / b for a, b in zip(times[num], times[den])]


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the benchmark; returns (and records) its results entry."""
    import torch

    from bench.steps import (
        Host,
        frozen_variant,
        full_variant,
        lora_model,
        rigsa_adapters,
        rigsa_variant,
        train_step,
    )

    threads = threads or ([1] if quick else [1, 2])
    reps = reps or (2 if quick else 3)
    batch_shape = (2, 64) if quick else (8, 200)
    t_start = time.time()
    env = environment()
    torch.manual_seed(0)
    model, tok = load_smollm2()
    host = Host(model)
    host.add("floor", frozen_variant())
    host.add("full", full_variant(host))
    host.add("rigsa", rigsa_variant(rigsa_adapters(host)))
    lora, lora_params, lora_opt = lora_model(16)
    vocab = int(model.config.vocab_size)
    batch = random_batch(vocab, *batch_shape, seed=0)
    small = random_batch(vocab, 2, 32, seed=1)
    names = ["rigsa", "full", "floor", "lora_r16"]

    def fns_for(b: dict) -> dict[str, Any]:
        fns = {k: host.step_fn(k, b) for k in ("rigsa", "full", "floor")}
        fns["lora_r16"] = lambda: train_step(lora, b, lora_opt, lora_params)
        return {k: fns[k] for k in names}

    # Warm-up on a small batch: allocates AdamW state and initialises kernels without a full-size step.
    for fn in fns_for(small).values():
        fn()
    tokens = batch_shape[0] * batch_shape[1]
    per_threads: dict[str, Any] = {}
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        say(f"[dense_step] threads={n}, batch {batch_shape[0]}x{batch_shape[1]}, {reps} alternating reps")
        times = alternate(fns_for(batch), reps=reps, warmup=0, log=say)
        stats = {k: summary(v) for k, v in times.items()}
        ratios = {
            f"{k}/full": summary(paired_ratios(times, k, "full"))["median"] for k in names if k != "full"
        }
        per_threads[str(n)] = {
            "seconds": times,
            "stats": stats,
            "tokens_per_s": {k: tokens / stats[k]["median"] for k in names},
            "paired_ratio_median": ratios,
            "ratio_of_medians": {
                f"{k}/full": stats[k]["median"] / stats["full"]["median"] for k in names if k != "full"
            },
        }
        for k in names:
            ratio = 1.0 if k == "full" else ratios[f"{k}/full"]
            rows.append(
                [
                    f"{k} ({n} thr)",
                    f"{stats[k]['median']:.2f}",
                    f"{stats[k]['min']:.2f}-{stats[k]['max']:.2f}",
                    f"{tokens / stats[k]['median']:.0f}",
                    f"{ratio:.3f}",
                ]
            )
    print_table(
        f"Dense step, SmolLM2-135M fp32, batch {batch_shape[0]}x{batch_shape[1]} (median of {reps} alternating reps)",
        ["variant", "s/step", "range", "tokens/s", "x full FT (paired median)"],
        rows,
    )
    busy = contended({str(n): per_threads[str(n)]["stats"]["full"]["median"] for n in threads})
    clean = [n for n in threads if str(n) not in busy] or threads
    worst = max(per_threads[str(n)]["paired_ratio_median"]["rigsa/full"] for n in clean)
    if busy:
        say(f"[dense_step] threads {busy}: slower than 1 thread (machine busy) - left out of the verdict")
    entry = {
        "benchmark": "dense_step",
        "quick": quick,
        "batch": list(batch_shape),
        "reps": reps,
        "threads": threads,
        "results": per_threads,
        "target": {"rigsa/full": TARGET_RATIO},
        "rigsa_over_full_worst": worst,
        "contended_threads": busy,
        "verdict": "n/a (quick size)" if quick else verdict(worst, TARGET_RATIO),
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "wall_s": time.time() - t_start,
    }
    record("dense_step", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    rows = []
    busy = entry.get("contended_threads")
    if busy is None:  # entries written before the check existed
        busy = contended({n: res["stats"]["full"]["median"] for n, res in entry["results"].items()})
    for n, res in entry["results"].items():
        r = res["paired_ratio_median"]
        v = "contended" if n in busy else verdict(r["rigsa/full"], TARGET_RATIO)
        if entry.get("quick"):
            v = "n/a (quick size)"  # the target is for 8 x 200-token steps
        rows.append(
            (
                f"rigsa / full FT step ({n} thr)",
                f"{r['rigsa/full']:.3f}x",
                "<= 1.10x",
                v,
            )
        )
        rows.append((f"lora_r16 / full FT ({n} thr)", f"{r['lora_r16/full']:.3f}x", "(reference)", ""))
        rows.append((f"floor / full FT ({n} thr)", f"{r['floor/full']:.3f}x", "(reference)", ""))
    return rows
