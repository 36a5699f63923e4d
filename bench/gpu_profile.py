"""Per-phase memory and throughput of RIGSA on one device: the GPU profile of SmolLM2-1.7B (runs on CPU too).

``python -m bench.gpu_profile --model HuggingFaceTB/SmolLM2-1.7B-Instruct --device cuda --batch 8 --seq 860``

Phases, in order, on one model (each reports peak memory and, for training phases, s/step and tokens/s):

1. ``load``: the base model on the device (``--dtype``, bf16 by default on CUDA);
2. ``dense``: RIGSA at density 1 on the 7 projections (fp32 ΔW, merged form), AdamW - the paper's first epoch;
3. ``prune``: one IMP round (per-matrix, sign_magnitude, rewind) to ``--density`` (3.46%), optimizer state dropped;
4. ``sparse_dense_storage``: training after the prune with the dense-storage adapter (what the train job does now);
5. ``sparse_storage``: the same after :func:`~rigsa_lightning.adapters.rigsa.storage.convert_adapters` to the
   memory-lean storage (new AdamW: the parameters changed);
6. ``lora_r16``: the adapters removed, PEFT LoRA r16 on the same projections (the QLoRA-style reference without the
   4-bit base).

Memory is ``torch.cuda.max_memory_allocated`` (reset per phase) on CUDA, peak RSS on CPU. Results go to
``outputs/bench/<date>/gpu_profile_<device>.json``. On the 2-core CPU use ``--batch 2 --seq 64 --steps 2`` to check
the script (the embedded SmolLM2-135M is the default model).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

from bench.common import MODEL_NAME, TARGETS, fmt_bytes, out_dir, print_table, say, setup_environment


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=MODEL_NAME, help="hub id, local folder or embedded:<name>")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="base weights (cuda: bf16)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=860, help="tokens per example (28x28 Textual MNIST: ~860)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per training phase")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--density", type=float, default=0.0346)
    p.add_argument("--checkpointing", action="store_true", help="HF activation checkpointing")
    p.add_argument("--no-autocast", action="store_true", help="no bf16 autocast")
    p.add_argument(
        "--grad-mode",
        default="auto",
        choices=["auto", "sampled", "dense"],
        help="sparse storage weight gradient",
    )
    return p.parse_args(argv)


class Meter:
    """Peak memory per phase (CUDA allocator or RSS) and wall time."""

    def __init__(self, device: str) -> None:
        self.device = device

    def reset(self) -> None:
        """Start a phase."""
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            from bench.common import reset_peak_rss, trim_malloc

            trim_malloc()
            reset_peak_rss()

    def sync(self) -> None:
        """Wait for queued device work."""
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def current(self) -> int:
        """Bytes in use now."""
        import torch

        from bench.common import rss_bytes

        return int(torch.cuda.memory_allocated()) if self.device == "cuda" else rss_bytes()

    def peak(self) -> int:
        """Peak bytes since :meth:`reset`."""
        import torch

        from bench.common import peak_rss_bytes

        return int(torch.cuda.max_memory_allocated()) if self.device == "cuda" else peak_rss_bytes()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the profile; print the table and write the JSON."""
    setup_environment()
    args = _parse(argv)
    import torch

    from bench.steps import train_step
    from rigsa_lightning.adapters.rigsa.inject import adapter_param_groups, inject_rigsa
    from rigsa_lightning.adapters.rigsa.sparse import sparse_param_groups
    from rigsa_lightning.adapters.rigsa.storage import adapter_state_bytes, convert_adapters
    from rigsa_lightning.adapters.targets import replace_module
    from rigsa_lightning.models import default_cache_dir, load_model
    from rigsa_lightning.pruning import IterativeMagnitudePruning

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu (with a small --batch/--seq) to check the script")
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    autocast = args.device == "cuda" and not args.no_autocast
    meter = Meter(args.device)
    phases: dict[str, dict[str, Any]] = {}

    meter.reset()
    t0 = time.perf_counter()
    model, _ = load_model({"name_or_path": args.model, "dtype": dtype}, default_cache_dir())
    model.to(args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    meter.sync()
    phases["load"] = {
        "seconds": time.perf_counter() - t0,
        "peak_bytes": meter.peak(),
        "after_bytes": meter.current(),
    }
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(model.config.vocab_size), (args.batch, args.seq), generator=gen)
    batch = {
        k: v.to(args.device)
        for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}.items()
    }
    tokens = args.batch * args.seq

    def train_phase(name: str, opt: Any, params: list, adapters: dict | None, post: Any = None) -> None:
        ctx = (
            torch.autocast(args.device, dtype=torch.bfloat16)
            if autocast
            else torch.autocast(args.device, enabled=False)
        )
        for _ in range(args.warmup):
            with ctx:
                train_step(model, batch, opt, params, post)
        meter.reset()
        meter.sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            with ctx:
                train_step(model, batch, opt, params, post)
        meter.sync()
        sec = (time.perf_counter() - t) / max(1, args.steps)
        phases[name] = {
            "s_per_step": sec,
            "tokens_per_s": tokens / sec,
            "peak_bytes": meter.peak(),
            "after_bytes": meter.current(),
            "adapter_state": adapter_state_bytes(adapters, opt) if adapters else None,
            "trainable": int(sum(p.numel() for p in params)),
        }
        say(f"[gpu_profile] {name}: {sec:.3f} s/step, peak {fmt_bytes(phases[name]['peak_bytes'])}")

    adapter_cfg = {"targets": TARGETS, "seed": 1234, "lr": 1e-3, "alpha_lr": 1e-3, "weight_decay": 1.0}
    adapters = inject_rigsa(model, adapter_cfg)
    opt = torch.optim.AdamW(adapter_param_groups(adapters, adapter_cfg))
    params = [p for g in opt.param_groups for p in g["params"]]
    train_phase("dense", opt, params, adapters)

    meter.reset()
    t = time.perf_counter()
    pruner = IterativeMagnitudePruning(
        {"rounds": 1, "densities": [args.density], "epochs_per_round": 1, "final_epochs": 1},
        log_per_module=False,
    )
    record = pruner.prune(adapters, optimizer=opt)
    meter.sync()
    phases["prune"] = {
        "seconds": time.perf_counter() - t,
        "peak_bytes": meter.peak(),
        "density": record["density"],
    }

    def enforce() -> None:
        for m in adapters.values():
            m.enforce_mask()

    train_phase("sparse_dense_storage", opt, params, adapters, enforce)
    del opt, params
    sparse = convert_adapters(model, adapters, "sparse", grad_mode=args.grad_mode)
    adapters = {}  # the dense tensors are freed once the optimizer and the model drop them
    opt = torch.optim.AdamW(sparse_param_groups(sparse, adapter_cfg))
    params = [p for g in opt.param_groups for p in g["params"]]
    train_phase("sparse_storage", opt, params, sparse)
    for name, module in sparse.items():
        replace_module(model, name, module.base_layer)
    del opt, params, sparse

    from rigsa_lightning.adapters.lora.model import apply_lora, lora_param_groups

    lora_cfg = {"r": 16, "lora_alpha": 32, "dropout": 0.05, "targets": TARGETS, "lr": 2e-4, "seed": 1234}
    peft_model = apply_lora(model, lora_cfg)
    peft_model.train()
    model = peft_model
    opt = torch.optim.AdamW(lora_param_groups(peft_model, lora_cfg))
    params = [p for g in opt.param_groups for p in g["params"]]
    train_phase("lora_r16", opt, params, None)

    rows = []
    for name, ph in phases.items():
        state = ph.get("adapter_state")
        rows.append(
            [
                name,
                f"{ph['s_per_step']:.3f}" if "s_per_step" in ph else f"{ph.get('seconds', 0):.2f} (total)",
                f"{ph['tokens_per_s']:.0f}" if "tokens_per_s" in ph else "",
                fmt_bytes(ph["peak_bytes"]),
                fmt_bytes(state["total"]) if state else "",
            ]
        )
    print_table(
        f"Profile: {args.model} on {args.device} ({dtype}{', bf16 autocast' if autocast else ''}), "
        f"batch {args.batch}x{args.seq}",
        ["phase", "s/step", "tokens/s", "peak memory", "adapter state"],
        rows,
    )
    result = {"args": vars(args), "dtype": dtype, "autocast": autocast, "phases": phases}
    path = out_dir() / f"gpu_profile_{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"written: {path}")
    return result


if __name__ == "__main__":
    main()
