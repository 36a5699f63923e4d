"""`python -m rigsa_lightning.evaluate`: base vs base + exported adapter, merge to a plain model, bad adapter paths."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import only_run_dir, run_cli

FAST = [
    "model=tiny",
    "data.train_size=16",
    "data.val_size=8",
    "data.test_size=8",
    "data.batch_size=4",
    "eval.drift.num_prompts=2",
    "eval.drift.max_new_tokens=8",
]


def run_eval(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m rigsa_lightning.evaluate`` offline with one thread."""
    return run_cli(args, cwd, module="rigsa_lightning.evaluate")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    res = run_cli(["experiment=rigsa_50", "debug=fast", *FAST], root)
    assert res.returncode == 0, res.stderr[-3000:]
    return only_run_dir(root)


def test_evaluate_adapter_matches_training_metrics_and_merges(trained_run: Path, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    res = run_eval([*FAST, f"adapter_path={trained_run / 'adapter'}", f"merge_to={merged}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(next((tmp_path / "outputs" / "runs").glob("*/*_evaluate/evaluation.json")).read_text())
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert out["adapter_kind"] == "sparse"
    # The exported adapter reproduces the trained model on the same test split.
    assert out["textual_mnist/acc/after"] == pytest.approx(trained["textual_mnist/acc"])
    assert out["textual_mnist/gen_acc/after"] == pytest.approx(trained["textual_mnist/gen_acc"])
    assert out["forget/drift/kl/after"] == pytest.approx(trained["forget/drift/kl/after"], abs=1e-5)

    # The merged folder is an ordinary transformers model giving the adapted logits.
    from transformers import AutoModelForCausalLM

    from rigsa_lightning.export import load_sparse_adapter
    from rigsa_lightning.models import load_model

    plain = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    adapted, _ = load_model({"name_or_path": "tiny", "dtype": "float32"})
    load_sparse_adapter(adapted, trained_run / "adapter")
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, adapted(ids).logits, rtol=1e-5, atol=1e-5)


def test_evaluate_rejects_a_folder_without_adapter(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = run_eval([*FAST, f"adapter_path={tmp_path / 'empty'}"], tmp_path)
    assert res.returncode == 2
    assert "error: adapter_path" in res.stderr and "Traceback" not in res.stderr
    assert not list((tmp_path / "outputs" / "runs").glob("*/*"))


@pytest.mark.parametrize("boost", [0.0, 3.0, 1000.0])
def test_gen_acc_shortcut_equals_full_greedy_generation(
    tiny_model_dir: str, cache_dir: str, boost: float
) -> None:
    """gen_acc skips generate() where the first greedy token is a digit; it must equal generating for every example."""
    from omegaconf import OmegaConf

    from rigsa_lightning.data.textual_mnist import TextualMNISTDataModule, parse_first_digit
    from rigsa_lightning.models import load_model
    from rigsa_lightning.training.scoring import score_textual_mnist

    model, tok = load_model({"name_or_path": tiny_model_dir})
    with torch.no_grad():  # make digit "3" (more or less) likely everywhere: mixes both code paths
        model.get_output_embeddings().weight[tok.convert_tokens_to_ids("3")] *= 1.0 + boost
    data = OmegaConf.create(
        {
            "source": "digits",
            "train_size": 8,
            "val_size": 8,
            "test_size": 24,
            "batch_size": 4,
            "eval_batch_size": 8,
            "seed": 0,
            "gen_max_new_tokens": 4,
        }
    )
    dm = TextualMNISTDataModule(data, tok, cache_dir=cache_dir, seed=0)
    dm.prepare_data()
    dm.setup("test")
    cfg = OmegaConf.create({"data": data})
    fast = score_textual_mnist(model, dm, "test", "32-true", cfg=cfg)
    correct = n = 0
    with torch.no_grad():
        for batch in dm.generation_batches("test", 8):
            out = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            texts = tok.batch_decode(out[:, batch["input_ids"].size(1) :], skip_special_tokens=True)
            correct += sum(parse_first_digit(t) == d for t, d in zip(texts, batch["digit"].tolist()))
            n += len(texts)
    assert fast["n"] == n == 24
    assert fast["gen_acc"] == pytest.approx(correct / n)
