"""Process-level choices made for the user: trainer.precision=auto and adapter.quant.compute_dtype=auto pick bf16
only where this machine runs it natively."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rigsa_lightning import runtime


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16-mixed"),
        ({"avx2", "amx_bf16"}, "bf16-mixed"),
        ({"avx2", "avx512f"}, "32-true"),  # AVX-512 without BF16: emulated bf16
        ({"avx2"}, "32-true"),
    ],
)
def test_auto_precision_follows_native_bf16_on_cpu(monkeypatch, flags: set[str], expected: str) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    assert runtime.resolve_precision("auto", "cpu") == expected
    assert runtime.resolve_compute_dtype("auto", "cpu") == (
        "bfloat16" if expected == "bf16-mixed" else "float32"
    )
    # explicit values are the user's choice
    assert runtime.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert runtime.resolve_precision("32-true", "cpu") == "32-true"
    assert runtime.resolve_compute_dtype("bfloat16", "cpu") == "bfloat16"


def test_cpu_flags_reads_this_machine() -> None:
    flags = runtime.cpu_flags()
    if Path("/proc/cpuinfo").is_file():
        assert flags and all(isinstance(f, str) and f for f in flags)
    assert runtime.native_bf16("cpu") == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_train_resolves_auto_precision_in_the_config(monkeypatch) -> None:
    from rigsa_lightning.config.validation import resolve_auto_precision

    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "auto"}})
    OmegaConf.set_struct(cfg, True)
    assert resolve_auto_precision(cfg) == "32-true" and cfg.trainer.precision == "32-true"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "auto"}})
    assert resolve_auto_precision(cfg) == "bf16-mixed"
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "32-true"}})
    assert resolve_auto_precision(cfg) == "32-true"


def test_qlora_compute_dtype_auto(monkeypatch) -> None:
    pytest.importorskip("bitsandbytes")
    import torch

    from rigsa_lightning.adapters.lora.model import bnb_config

    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bnb_config({"quant": {"compute_dtype": "auto"}}).bnb_4bit_compute_dtype == torch.float32
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    assert bnb_config({"quant": {"compute_dtype": "auto"}}).bnb_4bit_compute_dtype == torch.bfloat16
