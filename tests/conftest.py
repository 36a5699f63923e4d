"""Test setup: offline hub, one torch thread, a per-session cache shared across tests (model conversion once)."""

from __future__ import annotations

import os

# Must be set before datasets/transformers/lm_eval are imported, or every hub call waits ~23 s before failing.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Models, tokenised data and "before" numbers are cached across test sessions (the first run converts the GGUF).
os.environ.setdefault("RIGSA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "rigsa_lightning"))

# The real benchmark copies (issue 13): tests that score real items ask for them through `forgetting_data`; every
# other test keeps eval.data_dir unset (the environment default of the train command) so it does not score them.
_FORGETTING_DATA = os.environ.pop("RIGSA_EVAL_DATA", None) or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared",
    "data",
    "forgetting",
)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def forgetting_data():
    """The real PIQA / HellaSwag / GSM8k copies (../shared/data/forgetting or $RIGSA_EVAL_DATA)."""
    from pathlib import Path

    path = Path(_FORGETTING_DATA)
    if not (path / "piqa" / "validation.jsonl").is_file():
        pytest.skip(f"real benchmark data not found at {path} (set RIGSA_EVAL_DATA)")
    return path


@pytest.fixture(scope="session")
def cache_dir() -> str:
    """The shared cache folder (converted models, tokenised data)."""
    return os.environ["RIGSA_CACHE"]


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir: str) -> str:
    """Folder of the tiny random Llama (built once) with the embedded SmolLM2 tokenizer."""
    from rigsa_lightning.models import tiny_model_path

    return str(tiny_model_path({}, cache_dir))


@pytest.fixture(scope="session")
def smollm2_dir(cache_dir: str) -> str:
    """Folder of the converted embedded SmolLM2-135M-Instruct."""
    from rigsa_lightning.models import convert_embedded

    return str(convert_embedded("smollm2-135m-instruct", cache_dir))


@pytest.fixture()
def tiny_model(tiny_model_dir: str):
    """A fresh (model, tokenizer) pair of the tiny random Llama in fp32."""
    from rigsa_lightning.models import load_model

    return load_model({"name_or_path": tiny_model_dir, "dtype": "float32"})
