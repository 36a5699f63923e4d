"""Benchmark - every method's training step against the frozen forward+backward floor (same process, alternating).

The main job's step: the embedded SmolLM2-135M in fp32 under CPU bf16 autocast (``trainer.precision=bf16-mixed``),
one real Textual MNIST training batch (8 x ~105 tokens of 8x8 digits, labels on the answer digit and the
end-of-turn token), the LM head at the supervised positions only (``rigsa_lightning.models.head``), fused AdamW
(``optim.impl``). Variants, all timed side by side in one run:

* ``floor``: nothing trains; the input embeddings' output requires grad so backward runs through every layer - the
  cost no adapter method can go under (restricted head too);
* ``rigsa_dense``: the dense RIGSA round (DenseDeltaLinear at density 1, merged form, 106 M ΔW entries);
* ``rigsa_sparse@0.5`` / ``rigsa_sparse@0.0346``: the sparse storage after pruning to that density (0.0346: the
  paper's);
* ``random_mask@0.5``: a fixed random mask (``random_mask_``) stored sparse from the start (random_mask_50);
* ``lora_r16`` / ``qlora_r16``: PEFT LoRA r16 (alpha 32, dropout 0.05) on the same 210 matrices, QLoRA on a 4-bit
  NF4 base (bf16 compute), each on its own model copy;
* ``shira_r16``: PEFT SHiRA (random sparse high-rank adapter, ``ShiraConfig(r=16)``: the same trainable-parameter
  budget as LoRA r16, ``r * (in + out)`` entries per matrix, density 3.8-11.1%) on its own model copy;
* ``full``: full fine-tuning of the 210 matrices;
* before: ``floor_full_head`` and ``rigsa_dense_before`` (the head over every position, the whole logits cast to
  fp32, AdamW's per-tensor loop: the step as it was before the restricted head and the fused optimizer).

Every step is reported as a paired ratio to ``floor`` (timed back to back in each repetition). Targets (issue 15):
``rigsa_sparse@0.0346 / floor <= 1.05`` and ``rigsa_dense / full <= 1.02``. Steps run at 2 threads on a quiet
machine and at 1 thread when a probe shows 2 threads not clearly faster (another job on the machine);
``--threads`` overrides.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    alternate,
    cache_dir,
    environment,
    load_smollm2,
    print_table,
    record,
    say,
    summary,
    thread_probe,
    verdict,
)

SPARSE_TARGET = 1.05  # rigsa_sparse@0.0346 / floor
DENSE_TARGET = 1.02  # rigsa_dense / full
NAMES = [
    "floor",
    "rigsa_dense",
    "rigsa_sparse@0.5",
    "rigsa_sparse@0.0346",
    "random_mask@0.5",
    "lora_r16",
    "qlora_r16",
    "shira_r16",
    "full",
    "floor_full_head",
    "rigsa_dense_before",
]
BEFORE = {"floor_full_head", "rigsa_dense_before"}


def task_batch(tokenizer: Any, batch_size: int) -> dict[str, Any]:
    """The first training batch of the main job's data (``conf/data/digits.yaml``, data seed 0)."""
    from omegaconf import OmegaConf

    from rigsa_lightning.config.access import CONFIG_DIR
    from rigsa_lightning.data.textual_mnist import TextualMNISTDataModule

    data = OmegaConf.load(f"{CONFIG_DIR}/data/digits.yaml")
    data.batch_size = batch_size
    dm = TextualMNISTDataModule(data, tokenizer, cache_dir=str(cache_dir()), seed=0)
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def qlora_model(r: int = 16) -> tuple[Any, list[Any], Any]:
    """A separate 4-bit NF4 SmolLM2 with PEFT LoRA as ``conf/adapter/qlora.yaml`` (bf16 compute), and its AdamW."""
    from omegaconf import OmegaConf

    from bench.common import MODEL_NAME, TARGETS
    from bench.steps import adamw
    from rigsa_lightning.adapters.lora.model import apply_lora, load_qlora_base, lora_param_groups
    from rigsa_lightning.config.access import CONFIG_DIR

    cfg = OmegaConf.merge(
        OmegaConf.load(f"{CONFIG_DIR}/adapter/lora.yaml"),
        OmegaConf.load(f"{CONFIG_DIR}/adapter/qlora.yaml"),
        {"r": r, "lora_alpha": 2 * r, "targets": TARGETS, "seed": 1234},
    )
    cfg.pop("defaults", None)
    model, _ = load_qlora_base({"name_or_path": MODEL_NAME, "dtype": "float32"}, cfg, cache_dir())
    peft_model = apply_lora(model, cfg)
    peft_model.train()
    groups = lora_param_groups(peft_model, cfg)
    return peft_model, [p for g in groups for p in g["params"]], adamw(groups)


def shira_model(r: int = 16) -> tuple[Any, list[Any], Any]:
    """A separate SmolLM2 with PEFT SHiRA (random mask, seed 0) on the same 210 matrices, and its AdamW."""
    from peft import ShiraConfig, get_peft_model

    from bench.common import TARGETS
    from bench.steps import adamw

    model, _ = load_smollm2()
    peft_model = get_peft_model(model, ShiraConfig(r=r, target_modules=TARGETS, random_seed=0))
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return peft_model, params, adamw([{"params": params, "lr": 1e-3, "weight_decay": 0.0}])


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the benchmark; returns (and records) its results entry."""
    import torch

    from bench.sparse_phase import random_masks, set_masks
    from bench.steps import (
        Host,
        frozen_variant,
        full_variant,
        lora_model,
        rigsa_adapters,
        rigsa_variant,
        train_step,
    )
    from rigsa_lightning.adapters.rigsa.seeding import random_mask_
    from rigsa_lightning.adapters.rigsa.storage import to_sparse_storage

    probe = thread_probe()
    busy = probe["speedup_2_over_1"] < 1.3
    step_threads = threads or ([1] if (busy or quick) else [2])
    if busy and not threads:
        say(f"[limit] machine busy (2 threads {probe['speedup_2_over_1']:.2f}x the speed of 1): 1 thread")
    reps = reps or (1 if quick else 3)
    t_start = time.time()
    env = environment()
    torch.manual_seed(0)
    model, tok = load_smollm2()
    batch = task_batch(tok, 2 if quick else 8)
    host = Host(model)
    host.add("floor", frozen_variant())
    host.add("full", full_variant(host))
    dense = rigsa_adapters(host)
    host.add("rigsa_dense", rigsa_variant(dense))
    host.add("rigsa_dense_before", rigsa_variant(dense, impl="loop"))  # same adapters, the old optimizer
    for d in (0.5, 0.0346):
        pruned = rigsa_adapters(host, seed=99)
        set_masks(pruned, random_masks(pruned, d, seed=int(d * 1e4)))
        host.add(f"rigsa_sparse@{d}", rigsa_variant({n: to_sparse_storage(m) for n, m in pruned.items()}))
        del pruned
    rand = rigsa_adapters(host, seed=7)
    random_mask_(rand, 0.5, seed=0)  # type: ignore[arg-type]
    host.add("random_mask@0.5", rigsa_variant({n: to_sparse_storage(m) for n, m in rand.items()}))  # type: ignore[arg-type]
    del rand
    lora, lora_params, lora_opt = lora_model(16)
    qlora, qlora_params, qlora_opt = qlora_model(16)
    shira, shira_params, shira_opt = shira_model(16)
    fns: dict[str, Any] = {}
    for name in NAMES:
        if name == "lora_r16":
            fns[name] = lambda: train_step(lora, batch, lora_opt, lora_params, bf16=True)
        elif name == "qlora_r16":
            fns[name] = lambda: train_step(qlora, batch, qlora_opt, qlora_params, bf16=True)
        elif name == "shira_r16":
            fns[name] = lambda: train_step(shira, batch, shira_opt, shira_params, bf16=True)
        elif name == "floor_full_head":
            fns[name] = host.step_fn("floor", batch, full_head=True, bf16=True)
        else:
            fns[name] = host.step_fn(name, batch, full_head=name in BEFORE, bf16=True)
    shape = list(batch["input_ids"].shape)
    supervised = int((batch["labels"] != -100).sum())
    results: dict[str, Any] = {}
    rows = []
    for n in step_threads:
        torch.set_num_threads(n)
        say(f"[limit] threads={n}, batch {shape[0]}x{shape[1]} ({supervised} supervised tokens), {reps} reps")
        times = alternate(fns, reps=reps, warmup=1, log=say)
        stats = {k: summary(v) for k, v in times.items()}
        vs_floor = {k: summary([a / b for a, b in zip(times[k], times["floor"])])["median"] for k in NAMES}
        vs_full = {k: summary([a / b for a, b in zip(times[k], times["full"])])["median"] for k in NAMES}
        results[str(n)] = {"seconds": times, "stats": stats, "vs_floor": vs_floor, "vs_full": vs_full}
        for k in NAMES:
            rows.append(
                [
                    f"{k} ({n} thr){' [before]' if k in BEFORE else ''}",
                    f"{stats[k]['median']:.2f}",
                    f"{stats[k]['min']:.2f}-{stats[k]['max']:.2f}",
                    f"{vs_floor[k]:.3f}",
                    f"{vs_full[k]:.3f}",
                ]
            )
    print_table(
        f"Training step vs the frozen floor, SmolLM2-135M bf16 autocast, batch {shape[0]}x{shape[1]} "
        f"(median of {reps} alternating reps)",
        ["variant", "s/step", "range", "x floor (paired median)", "x full FT"],
        rows,
    )
    first = results[str(step_threads[0])]
    entry = {
        "benchmark": "limit",
        "quick": quick,
        "batch": shape,
        "supervised_tokens": supervised,
        "reps": reps,
        "threads": step_threads,
        "thread_probe": probe,
        "results": results,
        "targets": {"rigsa_sparse@0.0346/floor": SPARSE_TARGET, "rigsa_dense/full": DENSE_TARGET},
        "sparse_over_floor": first["vs_floor"]["rigsa_sparse@0.0346"],
        "dense_over_full": first["vs_full"]["rigsa_dense"],
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "wall_s": time.time() - t_start,
    }
    record("limit", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    quick = entry.get("quick")
    rows = []
    for n, res in entry["results"].items():
        s = res["vs_floor"]["rigsa_sparse@0.0346"]
        d = res["vs_full"]["rigsa_dense"]
        rows.append(
            (
                f"rigsa_sparse@0.0346 / floor ({n} thr)",
                f"{s:.3f}x",
                f"<= {SPARSE_TARGET}x",
                "n/a (quick size)" if quick else verdict(s, SPARSE_TARGET),
            )
        )
        rows.append(
            (
                f"rigsa_dense / full FT ({n} thr)",
                f"{d:.3f}x",
                f"<= {DENSE_TARGET}x",
                "n/a (quick size)" if quick else verdict(d, DENSE_TARGET),
            )
        )
        before = res["stats"]["rigsa_dense_before"]["median"] / res["stats"]["rigsa_dense"]["median"]
        rows.append((f"rigsa_dense step before / after ({n} thr)", f"{before:.3f}x", "(reference)", ""))
        for k in NAMES:
            if k not in ("floor", "rigsa_sparse@0.0346"):
                rows.append((f"{k} / floor ({n} thr)", f"{res['vs_floor'][k]:.3f}x", "(reference)", ""))
    return rows


def markdown(entry: dict[str, Any]) -> str:
    """The step table of a ``limit`` entry as markdown (for the READMEs)."""
    lines = [
        "| variant | s/step (median) | x floor (paired median) | x full FT (paired median) |",
        "|---|---|---|---|",
    ]
    for n, res in entry["results"].items():
        for k in NAMES:
            if k not in res["stats"]:
                continue
            label = f"{k} (before)" if k in BEFORE else k
            lines.append(
                f"| {label}, {n} thr | {res['stats'][k]['median']:.2f} | {res['vs_floor'][k]:.3f} | "
                f"{res['vs_full'][k]:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    from bench.common import results_path

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else results_path()
    print(markdown(json.loads(path.read_text())["limit"]))
