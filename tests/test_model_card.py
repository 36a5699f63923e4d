"""The model card (README.md with YAML front matter) in every exported adapter folder: metadata, the run's numbers
(Textual MNIST accuracy, forgetting deltas with their CIs), the command and how to load it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from rigsa_lightning.adapters.model_card import CARD_MEASURES, write_model_card, write_run_cards
from rigsa_lightning.adapters.rigsa.inject import inject_rigsa
from rigsa_lightning.adapters.rigsa.peft_export import export_peft
from rigsa_lightning.export import main, save_sparse_adapter

ROOT = Path(__file__).resolve().parent.parent
#: A real run of the claims study (metrics.json, forgetting.json with paired CIs, .hydra/).
STUDY_JOB = ROOT / "docs" / "results" / "study_cpu" / "jobs" / "rigsa_paper_s1"
ADAPTER = {
    "method": "rigsa",
    "seed": 1234,
    "alpha_init": 1e-6,
    "gate": "matrix",
    "targets": ["q_proj", "up_proj"],
}


def _front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _run(tmp_path: Path, model, *, embedded: bool = True) -> Path:
    """A run folder holding a real sparse export of the tiny model next to a real study run's records."""
    run = tmp_path / "run"
    shutil.copytree(STUDY_JOB / ".hydra", run / ".hydra")
    for name in ("metrics.json", "forgetting.json"):
        shutil.copy(STUDY_JOB / name, run / name)
    adapters = inject_rigsa(model, ADAPTER)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in adapters.values():
            m.apply_mask(torch.rand(m.delta.shape, generator=g) < 0.1, rewind=False)
            m.alpha.fill_(0.5)
    save_sparse_adapter(
        adapters,
        run / "adapter",
        base_model="embedded:smollm2-135m-instruct" if embedded else "tiny",
        adapter_cfg=ADAPTER,
        pruning_cfg={"enabled": True, "rounds": 1, "sparsity": 0.9},
    )
    return run


def _expected_rows(forgetting: dict) -> list[str]:
    """The table rows the card must show, computed from forgetting.json here (not by the card's code)."""
    rows = []
    for task, measure in CARD_MEASURES:
        key = f"forget/{task}/{measure}"
        if f"{key}/delta" not in forgetting:
            continue
        cell = f"{forgetting[f'{key}/delta']:+.4f}"
        if f"{key}/delta_ci_lo" in forgetting:
            cell += f" [{forgetting[f'{key}/delta_ci_lo']:+.4f}, {forgetting[f'{key}/delta_ci_hi']:+.4f}]"
        rows.append(
            f"| {task} | {measure} | {forgetting[f'{key}/before']:.4f} | {forgetting[f'{key}/after']:.4f} | {cell} |"
        )
    return rows


def test_sparse_card_holds_metadata_numbers_command_and_loading(tiny_model, tmp_path):
    model, _ = tiny_model
    run = _run(tmp_path, model)
    written = write_run_cards(run)
    assert written == [run / "adapter" / "README.md"]
    meta, body = _front_matter(written[0].read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    forgetting = json.loads((run / "forgetting.json").read_text())["metrics"]
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())

    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "rigsa-lightning"
    assert "rigsa" in meta["tags"] and meta["method"] == "rigsa"
    assert meta["density"] == config["density"] and 0.05 < meta["density"] < 0.15
    assert meta["seed"] == 1 and meta["dataset"] == "textual_mnist/digits"
    assert meta["textual_mnist_test_acc"] == metrics["textual_mnist/acc"]
    assert meta["forgetting_delta"]["piqa/acc"] == forgetting["forget/piqa/acc/delta"]
    assert meta["forgetting_delta"]["gsm8k/gold_nll"] == forgetting["forget/gsm8k/gold_nll/delta"]

    assert f"Textual MNIST test accuracy: **{metrics['textual_mnist/acc']:.4f}**" in body
    rows = _expected_rows(forgetting)
    assert len(rows) >= 7
    for row in rows:
        assert row in body, row
    assert "python -m rigsa_lightning.train experiment=rigsa_paper seed=1 +sweep=study threads=1" in body
    assert "load_sparse_adapter" in body and "--to peft" in body and "merge_to=merged/" in body


def test_peft_export_card_single_and_split(tiny_model, tmp_path):
    model, _ = tiny_model
    run = _run(tmp_path, model)
    export_peft(run / "adapter", run / "adapter_peft")
    meta, body = _front_matter((run / "adapter_peft" / "README.md").read_text())
    assert meta["library_name"] == "peft" and {"rigsa", "shira"} <= set(meta["tags"])
    assert (
        meta["textual_mnist_test_acc"] == json.loads((run / "metrics.json").read_text())["textual_mnist/acc"]
    )
    assert 'PeftModel.from_pretrained(base, "<this folder>")' in body and "merge_and_unload()" in body
    assert "experiment=rigsa_paper" in body

    # Every entry kept in up_proj (128x64): no single r holds it, the export is split and the card says how to load.
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    name = next(n for n in cfg["modules"] if n.endswith("up_proj"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / "adapter" / "adapter.safetensors"))
    numel = cfg["modules"][name]["shape"][0] * cfg["modules"][name]["shape"][1]
    tensors[f"{name}.indices"] = torch.arange(numel, dtype=torch.int32)
    tensors[f"{name}.values"] = torch.ones(numel)
    save_file(tensors, str(run / "adapter" / "adapter.safetensors"))
    folders = export_peft(run / "adapter", run / "adapter_peft")
    assert len(folders) >= 2
    _, body = _front_matter((run / "adapter_peft" / "README.md").read_text())
    assert "load_adapter" in body and f"split over {len(folders)} folders" in body
    for folder in folders:
        assert f'"<this folder>/{folder.name}"' in body
    # write_run_cards finds both exports of the run again.
    assert write_run_cards(run) == [run / "adapter" / "README.md", run / "adapter_peft" / "README.md"]


def test_card_without_a_run_and_the_card_command(tiny_model, tmp_path, capsys):
    model, _ = tiny_model
    run = _run(tmp_path, model, embedded=False)
    for name in ("metrics.json", "forgetting.json"):
        (run / name).unlink()
    shutil.rmtree(run / ".hydra")
    card = write_model_card(
        run / "adapter", kind="sparse", adapter_config={"base_model": "tiny", "density": 0.1}
    )
    meta, body = _front_matter(card.read_text())
    assert meta["base_model"] == "tiny" and meta["density"] == 0.1 and "textual_mnist_test_acc" not in meta
    assert "No measured numbers were found" in body and "not recorded" in body

    main([str(run / "adapter"), "--card"])
    assert "model card:" in capsys.readouterr().out
    meta, _ = _front_matter((run / "adapter" / "README.md").read_text())
    assert meta["method"] == "rigsa" and meta["density"] == pytest.approx(0.1, abs=0.03)


def test_lora_and_full_exports_get_their_cards(tmp_path):
    """Every method's export folder gets a card: PEFT LoRA (replacing PEFT's template) and full fine-tuning."""
    run = tmp_path / "run"
    shutil.copytree(STUDY_JOB / ".hydra", run / ".hydra")
    shutil.copy(STUDY_JOB / "metrics.json", run / "metrics.json")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    )
    (run / "adapter" / "README.md").write_text("PEFT's template card\n")
    assert write_run_cards(run) == [run / "adapter" / "README.md"]
    meta, body = _front_matter((run / "adapter" / "README.md").read_text())
    assert meta["library_name"] == "peft" and meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert 'PeftModel.from_pretrained(base, "<this folder>")' in body and "template" not in body

    shutil.rmtree(run / "adapter")
    (run / "adapter").mkdir()
    (run / "adapter" / "full_weights.safetensors").write_bytes(b"")
    write_run_cards(run)
    meta, body = _front_matter((run / "adapter" / "README.md").read_text())
    assert meta["library_name"] == "rigsa-lightning" and "adapter_path=<this folder>" in body
    assert (
        meta["textual_mnist_test_acc"] == json.loads((run / "metrics.json").read_text())["textual_mnist/acc"]
    )
