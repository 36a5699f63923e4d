"""LoRA and QLoRA baselines through PEFT, plus the bitsandbytes CPU fix and the standard PEFT adapter export.

* ``lora``: PEFT LoRA on the frozen base (same target matrices as RIGSA).
* ``qlora``: the same on a 4-bit NF4 base loaded through transformers + bitsandbytes (double quantisation,
  configurable compute dtype), as in Dettmers et al. 2023.

k-bit preparation. PEFT's ``prepare_model_for_kbit_training`` casts every non-quantized fp16/bf16 parameter
(embeddings, norms, tied LM head) to fp32 and turns on gradient checkpointing. We do the minimum instead
(:func:`prepare_kbit_model`): freeze the base, keep norms/embeddings in the dtype they were loaded in, and only when
``model.gradient_checkpointing`` is set enable checkpointing plus input require-grads. Measured on SmolLM2-135M
(NF4 + double quant, LoRA r16 on the 7 projections, 2 AdamW steps at 4 x 128 tokens, CPU): with a bfloat16 base,
parameters 129 MB (minimal) vs 186 MB (PEFT: the 28.3M-entry tied embedding goes to fp32), RSS after loading
659 vs 718 MB, peak RSS 2.46 vs 3.30 GB (1.45 vs 1.60 GB with checkpointing); with a float32 base the two are
identical (nothing to upcast; 186 MB, peak ~3.7 GB). ``adapter.kbit_prepare: peft`` selects PEFT's function.

bitsandbytes CPU trap. After any eval-mode/no-grad forward (validation, ``generate``) bitsandbytes 0.50 repacks
a ``Linear4bit`` weight into an AVX512-BF16 inference layout and from then on runs a kernel without autograd
support: gradients through the 4-bit base matmuls are silently wrong. :func:`fix_bnb_cpu` turns the repacking off
(and undoes it where it already happened); :func:`load_qlora_base` calls it right after loading.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rigsa_lightning.adapters.seeds import ADAPTER_SEED
from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.io import atomic_dir

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORAGE_DTYPES = {
    "uint8": torch.uint8,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
KBIT_PREPARE = ("minimal", "peft")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _import_bitsandbytes() -> Any:
    """Import bitsandbytes or raise the one-line error naming the fix."""
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ConfigError(
            "adapter",
            "QLoRA needs bitsandbytes, which is not installed",
            "pip install bitsandbytes, or use adapter=lora",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a broken native library also makes QLoRA impossible
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            "adapter",
            f"QLoRA needs bitsandbytes, which failed to import ({first})",
            "reinstall it, or use adapter=lora",
        ) from exc
    return bitsandbytes


# --------------------------------------------------------------------------------------------------- quantisation
def bnb_config(adapter_cfg: Any) -> Any:
    """The ``transformers.BitsAndBytesConfig`` of ``adapter.quant`` (4-bit, NF4, double quantisation, compute dtype).

    Raises :class:`ConfigError` when bitsandbytes can't be imported or a ``quant`` value is unknown.
    """
    _import_bitsandbytes()
    from transformers import BitsAndBytesConfig

    quant = get(adapter_cfg, "quant", None) or {}
    qtype = str(get(quant, "type", "nf4"))
    if qtype not in QUANT_TYPES:
        raise ConfigError(
            "adapter.quant.type", f"unknown 4-bit type {qtype!r}", f"use one of {list(QUANT_TYPES)}"
        )
    from rigsa_lightning.runtime import resolve_compute_dtype

    compute = resolve_compute_dtype(str(get(quant, "compute_dtype", "auto")), "auto")
    if compute not in COMPUTE_DTYPES:
        raise ConfigError(
            "adapter.quant.compute_dtype",
            f"unknown dtype {compute!r}",
            f"use one of {sorted(COMPUTE_DTYPES)}",
        )
    storage = str(get(quant, "storage_dtype", "uint8"))
    if storage not in STORAGE_DTYPES:
        raise ConfigError(
            "adapter.quant.storage_dtype",
            f"unknown dtype {storage!r}",
            f"use one of {sorted(STORAGE_DTYPES)}",
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qtype,
        bnb_4bit_use_double_quant=bool(get(quant, "double_quant", True)),
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[compute],
        bnb_4bit_quant_storage=STORAGE_DTYPES[storage],
    )


def fix_bnb_cpu(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for AVX512-BF16 inference on CPU; return the ``Linear4bit`` count.

    Sets ``support_avx512bf16_for_cpu = False`` on every ``bitsandbytes.nn.Linear4bit`` so eval/no-grad forwards
    keep the standard layout whose matmul has a correct backward. A weight that was already repacked (the fix came
    after an eval forward) is converted back with bitsandbytes' inverse; with double quantisation that inverse
    re-quantises the block scales, so call this right after loading. Idempotent; 0 without bitsandbytes.
    """
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001 - nothing to fix without bitsandbytes
        return 0
    count = 0
    unpacked = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        count += 1
        weight = module.weight
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, new_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
            if not new_state.nested and new_state.absmax.dim() == 2:
                # bitsandbytes 0.50 restores the [N, K/blocksize] scale layout only for double-quantised weights.
                new_state.absmax = new_state.absmax.T.reshape(-1).float().contiguous()
            weight.quant_state = new_state
            module.quant_state = new_state
            unpacked += 1
    if unpacked:
        log.warning(
            "fix_bnb_cpu: %d 4-bit weights had already been repacked for CPU inference and were converted back; "
            "their block scales were rounded to bfloat16 by the repacking (call fix_bnb_cpu right after loading, "
            "or reload the model, for the exact weights)",
            unpacked,
        )
    return count


def prepare_kbit_model(
    model: nn.Module, gradient_checkpointing: bool = False, upcast: bool = False
) -> nn.Module:
    """Prepare a k-bit model for adapter training without upcasting more than needed.

    Freezes every base parameter. ``upcast=True`` casts non-quantized fp16/bf16 parameters to fp32 (what PEFT's
    ``prepare_model_for_kbit_training`` does); by default norms and embeddings keep their loaded dtype. With
    ``gradient_checkpointing``, turns on HF activation checkpointing (non-reentrant) and makes the input
    embeddings' output require grad, so checkpointed blocks always see an input that requires grad.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if upcast:
        for param in model.parameters():
            if param.dtype in (torch.float16, torch.bfloat16) and type(param).__name__ != "Params4bit":
                param.data = param.data.to(torch.float32)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def load_qlora_base(
    model_cfg: Any, adapter_cfg: Any, cache_dir: str | os.PathLike | None = None
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` with the target linears in 4-bit, CPU-fixed and prepared for k-bit training.

    ``adapter.kbit_prepare``: ``minimal`` (default, :func:`prepare_kbit_model`) or ``peft``
    (``peft.prepare_model_for_kbit_training``, which upcasts non-quantized parameters to fp32).
    ``model.gradient_checkpointing`` turns activation checkpointing on in both cases.
    """
    from rigsa_lightning.models import load_model

    quantization_config = bnb_config(adapter_cfg)
    model, tok = load_model(model_cfg, cache_dir, quantization_config=quantization_config)
    if bool(get(adapter_cfg, "cpu_avx512bf16_fix", True)):
        n = fix_bnb_cpu(model)
        if n == 0:
            log.warning("QLoRA: no bitsandbytes Linear4bit found after loading in 4-bit")
    else:
        log.warning(
            "adapter.cpu_avx512bf16_fix=false: on a CPU with AVX512-BF16, gradients after an eval/no-grad forward "
            "are wrong"
        )
    mode = str(get(adapter_cfg, "kbit_prepare", "minimal"))
    if mode not in KBIT_PREPARE:
        raise ConfigError(
            "adapter.kbit_prepare", f"unknown mode {mode!r}", f"use one of {list(KBIT_PREPARE)}"
        )
    checkpointing = bool(get(model_cfg, "gradient_checkpointing", False))
    if mode == "peft":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        if checkpointing:
            model.enable_input_require_grads()
    else:
        prepare_kbit_model(model, gradient_checkpointing=checkpointing, upcast=False)
    return model, tok


# --------------------------------------------------------------------------------------------------- LoRA
def peft_target_modules(model: nn.Module, targets: Any) -> list[str] | str:
    """PEFT ``target_modules`` for ``adapter.targets`` (validated with the shared matcher first).

    Every entry must match a decoder-block linear (:func:`rigsa_lightning.adapters.targets.find_target_linears`,
    else :class:`ConfigError`). Plain entries are module-name suffixes and are passed to PEFT as a list (PEFT
    matches ``name.endswith("." + t)``). ``"re:<pattern>"`` entries are resolved by the shared matcher (searched in
    the full name, decoder-block linears only) and everything becomes one anchored regex for PEFT.
    """
    from rigsa_lightning.adapters.targets import find_target_linears

    entries = [str(t) for t in ([targets] if isinstance(targets, str) else (targets or []))]
    find_target_linears(
        model, entries
    )  # raises ConfigError("adapter.targets", ...) on an entry matching nothing
    patterns = [t for t in entries if t.startswith("re:")]
    suffixes = [t for t in entries if not t.startswith("re:")]
    if not patterns:
        return suffixes
    names = sorted(find_target_linears(model, patterns))
    parts = []
    if suffixes:
        parts.append(r"(?:.*\.)?(?:" + "|".join(re.escape(s) for s in suffixes) + ")")
    parts.extend(re.escape(n) for n in names)
    return "^(?:" + "|".join(parts) + ")$"


def _rng_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def apply_lora(model: nn.Module, adapter_cfg: Any) -> Any:
    """Wrap ``model`` in a ``peft.PeftModel`` with LoRA on ``adapter.targets``; only the LoRA tensors are trainable.

    ``r``, ``lora_alpha``, ``dropout`` come from the config (defaults 16 / 32 / 0.05), ``bias="none"``,
    ``task_type=CAUSAL_LM``. The LoRA A init is drawn from ``adapter.seed`` inside a forked RNG (the global RNG
    state is left untouched); B starts at zero as in PEFT.
    """
    from peft import LoraConfig, get_peft_model

    r = int(get(adapter_cfg, "r", 16))
    if r <= 0:
        raise ConfigError("adapter.r", f"rank must be positive, got {r}", "use e.g. adapter.r=16")
    dropout = float(get(adapter_cfg, "dropout", 0.05))
    if not 0.0 <= dropout < 1.0:
        raise ConfigError("adapter.dropout", f"{dropout} is outside [0, 1)", "use e.g. 0.05")
    targets = get(adapter_cfg, "targets", list(DEFAULT_TARGETS))
    config = LoraConfig(
        r=r,
        lora_alpha=float(get(adapter_cfg, "lora_alpha", 2 * r)),
        lora_dropout=dropout,
        target_modules=peft_target_modules(model, targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    seed = int(get(adapter_cfg, "seed", ADAPTER_SEED))
    with torch.random.fork_rng(devices=_rng_devices()):
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as exc:
            if "not found in the base model" in str(exc) or "Target module" in str(exc):
                raise ConfigError(
                    "adapter.targets",
                    f"{list(targets)} match no module of the model",
                    "use module-name suffixes such as q_proj, or 're:<regex>'",
                ) from exc
            raise
    for name, param in peft_model.named_parameters():
        param.requires_grad_("lora_" in name)
    return peft_model


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The LoRA tensors (``lora_A`` / ``lora_B`` ...) of a PEFT model, by parameter name."""
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def lora_param_groups(model: nn.Module, adapter_cfg: Any) -> list[dict]:
    """AdamW parameter groups: one group with every trainable (LoRA) tensor, ``adapter.lr`` and ``weight_decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("adapter", "the LoRA model has no trainable parameters", "call apply_lora first")
    return [
        {
            "params": params,
            "lr": float(get(adapter_cfg, "lr", 2.0e-4)),
            "weight_decay": float(get(adapter_cfg, "weight_decay", 0.0)),
            "name": "lora",
        }
    ]


def save_peft_adapter(model: Any, folder: str | os.PathLike) -> Path:
    """Write the standard PEFT adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``) atomically.

    The adapter is saved into a temporary sibling folder which is then renamed to ``folder`` (an existing folder
    is replaced only after the new one is complete). Reload with ``PeftModel.from_pretrained(base, folder)``.
    """
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for required in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            if not (tmp / required).is_file():
                raise RuntimeError(
                    f"PEFT did not write {required} (is the model a PeftModel with one adapter?)"
                )
    return folder


def adapter_stats(model: nn.Module, folder: str | os.PathLike | None = None) -> dict[str, int]:
    """Budget numbers of a LoRA model.

    ``trainable_params`` (tensors with requires_grad), ``adapter_params`` (all LoRA entries),
    ``nonzero_adapter_entries`` (LoRA entries != 0; B is all zero before the first step), ``adapter_bytes``
    (in memory), ``lora_modules`` (wrapped linears), and ``adapter_bytes_on_disk`` when ``folder`` is given.
    """
    lora = lora_parameters(model)
    stats = {
        "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "adapter_params": int(sum(p.numel() for p in lora.values())),
        "nonzero_adapter_entries": int(sum(int(torch.count_nonzero(p.detach())) for p in lora.values())),
        "adapter_bytes": int(sum(p.numel() * p.element_size() for p in lora.values())),
        "lora_modules": len({n.split(".lora_")[0] for n in lora}),
    }
    if folder is not None:
        folder = Path(folder)
        stats["adapter_bytes_on_disk"] = int(sum(f.stat().st_size for f in folder.iterdir() if f.is_file()))
    return stats
