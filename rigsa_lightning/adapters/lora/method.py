"""The PEFT methods: ``lora`` and ``qlora`` (LoRA on a 4-bit NF4 base). Registry entries (no torch at import):
the implementation is ``model.py``; the export is a standard PEFT folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.base import AdapterMethod, PreparedModel, base_model_key, load_base
from rigsa_lightning.config.errors import ConfigError


class Lora(AdapterMethod):
    """PEFT LoRA on the frozen full-precision base."""

    name = "lora"
    export_kind = "peft"
    export_file = "adapter_model.safetensors"  # model.ADAPTER_WEIGHTS
    label = "LoRA"
    order = 3
    color = "#2ca02c"

    def prepare(self, cfg: Any, cache_dir: str | os.PathLike | None) -> PreparedModel:
        """The base model wrapped in a PEFT LoRA model."""
        from rigsa_lightning.adapters.lora.model import apply_lora

        model, tok, key = load_base(cfg, cache_dir)
        return PreparedModel(apply_lora(model, cfg.adapter), tok, self.name, key)

    def param_groups(self, prepared: PreparedModel, adapter_cfg: Any) -> list[dict]:
        """The LoRA A/B matrices."""
        from rigsa_lightning.adapters.lora.model import lora_param_groups

        return lora_param_groups(prepared.model, adapter_cfg)

    def export(self, prepared: PreparedModel, cfg: Any, folder: Path) -> Path | None:
        """The PEFT adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``)."""
        from rigsa_lightning.adapters.lora.model import save_peft_adapter

        save_peft_adapter(prepared.model, folder)
        return folder

    def load_export(self, model: Any, folder: Path) -> Any:
        """``PeftModel.from_pretrained``; a one-line ConfigError when the adapter does not fit the base."""
        from peft import PeftModel

        try:
            return PeftModel.from_pretrained(model, str(folder))
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ConfigError(
                "adapter_path", f"PEFT adapter does not fit this base model: {str(exc).splitlines()[0]}"
            ) from exc

    def merge(self, model: Any) -> Any:
        """PEFT's ``merge_and_unload``."""
        return model.merge_and_unload()


class QLora(Lora):
    """LoRA on a 4-bit NF4 base (transformers + bitsandbytes); the base is its own "before"."""

    name = "qlora"
    quantized = True
    label = "QLoRA (4-bit)"
    order = 4
    color = "#d62728"

    def check(self, cfg: Any) -> None:
        """bitsandbytes is importable and the 4-bit settings are valid."""
        from rigsa_lightning.adapters.lora.model import bnb_config

        bnb_config(cfg.adapter)  # raises the one-line error when bitsandbytes is missing

    def prepare(self, cfg: Any, cache_dir: str | os.PathLike | None) -> PreparedModel:
        """The 4-bit base wrapped in a PEFT LoRA model; the model key names the 4-bit settings."""
        from rigsa_lightning.adapters.lora.model import apply_lora, load_qlora_base

        # QLoRA's base is the 4-bit model: its own "before" (and drift reference)
        quant = cfg.adapter.get("quant", None) or {}
        key = base_model_key(cfg, cache_dir) + "|4bit:"
        key += ",".join(f"{k}={quant.get(k)}" for k in ("type", "double_quant", "compute_dtype"))
        model, tok = load_qlora_base(cfg.model, cfg.adapter, cache_dir)
        return PreparedModel(apply_lora(model, cfg.adapter), tok, self.name, key)
