"""The model card (``README.md`` with YAML front matter) written into every exported adapter folder.

Like the cards of PEFT and the hub: metadata (base model, library, tags with the method, density, seed, dataset),
the run's measured numbers when the run folder holds them (Textual MNIST test accuracy from ``metrics.json``, the
forgetting deltas with their paired 95 % CIs from ``forgetting.json``), the command that produced the run (its
Hydra overrides from ``.hydra/overrides.yaml``) and how to load the adapter (this package, PEFT, merged).

``write_run_cards(run_dir)`` writes the cards of a run (``adapter/`` and, with ``export.peft``,
``adapter_peft/``); ``write_model_card(folder, ...)`` one card. All write through ``rigsa_lightning.io``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.rigsa.constants import PEFT_VALUE_DTYPES, SPLIT_MANIFEST
from rigsa_lightning.io import atomic_write_text

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
LIBRARY = "rigsa-lightning"
#: Hub ids of the models ``model.name_or_path`` names by another spelling.
HUB_IDS = {"embedded:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
#: Sub-folders of a run that hold exports, and the PEFT export's name at the end of a run (``export.peft``).
RUN_EXPORTS = ("adapter", "adapter_peft")
#: The forgetting measures shown in the card's table (others stay in forgetting.json).
CARD_MEASURES = (
    ("piqa", "acc"),
    ("piqa", "acc_norm"),
    ("hellaswag", "acc"),
    ("hellaswag", "acc_norm"),
    ("gsm8k", "exact_match_strict-match"),
    ("gsm8k", "exact_match_flexible-extract"),
    ("gsm8k", "gold_nll"),
    ("drift", "kl"),
    ("drift", "nll"),
)


def hub_base_model(name: str) -> str | None:
    """The hub id of a base model name (the embedded model's id; ``org/name`` that is not a local path), else None."""
    name = str(name or "")
    if name in HUB_IDS:
        return HUB_IDS[name]
    parts = name.split("/")
    if len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not os.path.exists(name):
        return name
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def run_record(run_dir: str | os.PathLike | None) -> dict[str, Any]:
    """What a run folder says about its run: ``metrics`` (metrics.json), ``forgetting`` (forgetting.json's
    metrics), ``overrides`` (list of Hydra overrides) and ``config`` (the resolved config), each empty if absent."""
    if run_dir is None:
        return {"metrics": {}, "forgetting": {}, "overrides": None, "config": {}}
    run_dir = Path(run_dir)
    forgetting = _read_json(run_dir / "forgetting.json").get("metrics")
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml")
    config = _read_yaml(run_dir / ".hydra" / "config.yaml")
    return {
        "metrics": _read_json(run_dir / "metrics.json"),
        "forgetting": forgetting if isinstance(forgetting, dict) else {},
        "overrides": [str(o) for o in overrides] if isinstance(overrides, list) else None,
        "config": config if isinstance(config, dict) else {},
    }


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _dataset(config: dict[str, Any]) -> str | None:
    """The training data in words (Textual MNIST and its digit source, or the chat file / hub id)."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    source = data.get("source")
    if source in ("digits", "mnist5k", "mnist"):
        return f"textual_mnist/{source}"
    if source == "chat":
        return str(data.get("hub_id") or data.get("path") or "chat")
    return str(source) if source else None


def forgetting_rows(forgetting: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measured forgetting measure: task, measure, before, after, delta, CI bounds, p (None if absent)."""
    rows = []
    for task, measure in CARD_MEASURES:
        key = f"forget/{task}/{measure}"
        delta = _num(forgetting.get(f"{key}/delta"))
        if delta is None:
            continue
        rows.append(
            {
                "task": task,
                "measure": measure,
                "before": _num(forgetting.get(f"{key}/before")),
                "after": _num(forgetting.get(f"{key}/after")),
                "delta": delta,
                "ci_lo": _num(forgetting.get(f"{key}/delta_ci_lo")),
                "ci_hi": _num(forgetting.get(f"{key}/delta_ci_hi")),
                "p": _num(forgetting.get(f"{key}/delta_p")),
            }
        )
    return rows


def card_metadata(kind: str, adapter_config: dict[str, Any] | None, record: dict[str, Any]) -> dict[str, Any]:
    """The YAML front matter: base model, library, tags (method, kind), density, seed, dataset, measured numbers."""
    adapter_config = adapter_config or {}
    config, metrics = record["config"], record["metrics"]
    model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {}
    base = str(adapter_config.get("base_model") or model_cfg.get("name_or_path") or "")
    adapter_group = config.get("adapter") if isinstance(config.get("adapter"), dict) else {}
    method = metrics.get("method") or adapter_config.get("method") or adapter_group.get("method")
    method = str(method) if method else None
    density = _num(adapter_config.get("density"))
    if density is None:
        density = _num(metrics.get("adapter/density"))
    seed = metrics.get("seed", config.get("seed"))
    meta: dict[str, Any] = {}
    hub = hub_base_model(base)
    meta["base_model"] = hub or base or None
    meta["library_name"] = "peft" if kind in ("shira", "lora") else LIBRARY
    tags = [LIBRARY, method, "sparse-adapter" if kind in ("sparse", "shira") else kind]
    tags += ["shira", "peft"] if kind == "shira" else []
    meta["tags"] = list(dict.fromkeys(t for t in tags if t))
    meta["method"] = method
    meta["density"] = density
    meta["seed"] = int(seed) if isinstance(seed, int) else None
    meta["dataset"] = _dataset(config)
    acc = _num(metrics.get("textual_mnist/acc"))
    if acc is not None:
        meta["textual_mnist_test_acc"] = acc
    deltas = {f"{r['task']}/{r['measure']}": r["delta"] for r in forgetting_rows(record["forgetting"])}
    if deltas:
        meta["forgetting_delta"] = deltas
    return {k: v for k, v in meta.items() if v is not None}


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _command(record: dict[str, Any]) -> str | None:
    overrides = record["overrides"]
    if overrides is None:
        return None
    task = str(record["config"].get("task_name") or "train")
    entry = "evaluate" if task == "evaluate" else "train"
    return " ".join(["python -m rigsa_lightning." + entry, *(shlex.quote(o) for o in overrides)])


def _load_section(
    kind: str, base: str, peft_adapters: list[str] | None, base_dtype: str = "float32"
) -> list[str]:
    """How to load the folder: this package, PEFT and as a merged plain model (``base_dtype``: the dtype the SHiRA
    values were rounded to, the base weights' dtype that merges them exactly).

    (Over ~80 lines: the card's loading instructions per export kind, mostly text.)
    """
    model = hub_base_model(base) or base or "<base model>"
    lines = ["## How to load", ""]
    if kind == "sparse":
        lines += [
            "With this package (the exact training-time forward, or merged into plain weights):",
            "",
            "```python",
            "from rigsa_lightning.models import load_model",
            "from rigsa_lightning.export import load_sparse_adapter, merge_adapter",
            "",
            f'model, tok = load_model({{"name_or_path": "{base}"}})',
            'load_sparse_adapter(model, "<this folder>")',
            'merge_adapter(model).save_pretrained("merged/")   # W0 + α·ΔW baked in',
            "```",
            "",
            "With PEFT (export it as SHiRA adapters first, then load as any PEFT adapter):",
            "",
            "```bash",
            "python -m rigsa_lightning.export <this folder> --to peft <peft folder>",
            "```",
            "",
            "Merged, from the command line: "
            "`python -m rigsa_lightning.evaluate adapter_path=<this folder> merge_to=merged/`.",
        ]
    elif kind == "shira":
        lines += [
            "With PEFT (SHiRA: the learned sparse mask and α·ΔW, merged bit-identically to this package):",
            "",
        ]
        lines += [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
        ]
        lines += [f'base = AutoModelForCausalLM.from_pretrained("{model}", dtype="{base_dtype}")']
        if peft_adapters:
            first, rest = peft_adapters[0], peft_adapters[1:]
            lines += [
                f'model = PeftModel.from_pretrained(base, "<this folder>/{first}", adapter_name="{first}")'
            ]
            lines += [f'model.load_adapter("<this folder>/{n}", adapter_name="{n}")' for n in rest]
            lines += [f"model.base_model.set_adapter({list(peft_adapters)!r})   # all active together"]
            lines += [f"merged = model.merge_and_unload(adapter_names={list(peft_adapters)!r})"]
        else:
            lines += ['model = PeftModel.from_pretrained(base, "<this folder>")']
            lines += ["merged = model.merge_and_unload()   # a plain transformers model"]
        lines += ["```", ""]
        if peft_adapters:
            lines += [
                f"SHiRA has one `r` per adapter folder and `r·(in+out) <= in·out`, so this adapter is split over "
                f"{len(peft_adapters)} folders ({', '.join(peft_adapters)}); load all of them.",
                "",
            ]
        lines += [
            "With this package: `from rigsa_lightning.adapters.rigsa.peft_export import load_peft_export` "
            '(`load_peft_export(base, "<this folder>")` loads every part).',
        ]
    elif kind == "lora":
        lines += [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{model}")',
            'model = PeftModel.from_pretrained(base, "<this folder>")',
            "merged = model.merge_and_unload()",
            "```",
            "",
            "With this package: `python -m rigsa_lightning.evaluate adapter_path=<this folder> merge_to=merged/`.",
        ]
    else:
        lines += [
            "With this package (the fine-tuned target weights over the base model):",
            "`python -m rigsa_lightning.evaluate adapter_path=<this folder> merge_to=merged/` writes the merged model.",
        ]
    return lines


def render_card(
    kind: str,
    adapter_config: dict[str, Any] | None,
    record: dict[str, Any],
    *,
    peft_adapters: list[str] | None = None,
    base_dtype: str = "float32",
) -> str:
    """The card's text: YAML front matter, the run's numbers, the command, how to load."""
    import yaml

    meta = card_metadata(kind, adapter_config, record)
    base = str((adapter_config or {}).get("base_model") or meta.get("base_model", ""))
    method = meta.get("method", "adapter")
    title = {"sparse": "sparse adapter", "shira": "PEFT SHiRA adapter", "lora": "PEFT adapter"}.get(
        kind, "export"
    )
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {method} {title} of {meta.get('base_model', base) or 'a causal LM'}", ""]
    facts = []
    if meta.get("density") is not None:
        facts.append(f"density {meta['density']:.4f} (kept ΔW entries / adapted entries)")
    if meta.get("dataset"):
        facts.append(f"trained on {meta['dataset']}")
    if meta.get("seed") is not None:
        facts.append(f"seed {meta['seed']}")
    lines += [f"Trained with `{LIBRARY}`" + (": " + ", ".join(facts) if facts else "") + ".", ""]

    metrics = record["metrics"]
    lines += ["## Results", ""]
    acc = _num(metrics.get("textual_mnist/acc"))
    if acc is not None:
        n = metrics.get("textual_mnist/n")
        zero = _num(metrics.get("textual_mnist/zero_shot_acc"))
        text = f"Textual MNIST test accuracy: **{acc:.4f}**" + (f" on {int(n)} examples" if _num(n) else "")
        text += f" (base model zero-shot: {zero:.4f})." if zero is not None else "."
        lines += [text, ""]
    rows = forgetting_rows(record["forgetting"])
    if rows:
        lines += [
            "Forgetting (after − before on the same items; paired bootstrap 95 % CI, McNemar p for 0/1 measures):",
            "",
            "| benchmark | measure | before | after | delta [95 % CI] | p |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            ci = f" [{_fmt(r['ci_lo'], True)}, {_fmt(r['ci_hi'], True)}]" if r["ci_lo"] is not None else ""
            p = f"{r['p']:.2g}" if r["p"] is not None else "–"
            lines.append(
                f"| {r['task']} | {r['measure']} | {_fmt(r['before'])} | {_fmt(r['after'])} | "
                f"{_fmt(r['delta'], True)}{ci} | {p} |"
            )
        lines.append("")
    if acc is None and not rows:
        lines += [
            "No measured numbers were found next to this adapter (no metrics.json / forgetting.json).",
            "",
        ]

    command = _command(record)
    lines += ["## How it was made", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    else:
        lines += ["The run's command line was not recorded next to this adapter.", ""]
    lines += _load_section(kind, base, peft_adapters, base_dtype)
    return "\n".join(lines) + "\n"


def write_model_card(
    folder: str | os.PathLike,
    *,
    kind: str,
    adapter_config: dict[str, Any] | None = None,
    run_dir: str | os.PathLike | None = None,
    peft_adapters: list[str] | None = None,
    base_dtype: str = "float32",
) -> Path:
    """Write ``folder/README.md`` (atomically) for an export of ``kind`` (``sparse``, ``shira``, ``lora``,
    ``full``); ``run_dir`` is the run folder holding its numbers (None: metadata only); ``base_dtype``: the base
    weights' dtype the SHiRA values were rounded to."""
    record = run_record(run_dir)
    text = render_card(kind, adapter_config, record, peft_adapters=peft_adapters, base_dtype=base_dtype)
    return atomic_write_text(Path(folder) / CARD_NAME, text)


def export_kind(folder: Path) -> tuple[str | None, dict[str, Any] | None, list[str] | None]:
    """What ``folder`` holds: (kind, its adapter config, the split PEFT adapters) or (None, None, None)."""
    manifest = _read_json(folder / SPLIT_MANIFEST)
    if manifest.get("adapters"):
        source = _read_json(Path(str(manifest.get("source", ""))) / "adapter_config.json")
        return "shira", source or None, [str(a) for a in manifest["adapters"]]
    config = _read_json(folder / "adapter_config.json")
    if config.get("format") == "rigsa-sparse-adapter":
        return "sparse", config, None
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type == "SHIRA":
        base = {"base_model": config.get("base_model_name_or_path")}
        return "shira", base, None
    if peft_type:
        return "lora", {"base_model": config.get("base_model_name_or_path")}, None
    if (folder / "full_weights.safetensors").is_file():
        return "full", None, None
    return None, None, None


def write_run_cards(run_dir: str | os.PathLike, metrics: dict[str, Any] | None = None) -> list[Path]:
    """The cards of every export of a finished run (``adapter/``, ``adapter_peft/``); returns the files written.

    ``metrics``: the run's final metrics when ``metrics.json`` is not written yet (the end of a run)."""
    run_dir = Path(run_dir)
    record = run_record(run_dir)
    if metrics is not None:
        record["metrics"] = dict(metrics)
    dtype = model_dtype(record["config"]) or "float32"  # what export.peft rounded the values to
    written = []
    for sub in RUN_EXPORTS:
        folder = run_dir / sub
        if not folder.is_dir():
            continue
        kind, adapter_config, parts = export_kind(folder)
        if kind is None:
            continue
        if kind == "shira" and (run_dir / "adapter" / "adapter_config.json").is_file():
            adapter_config = _read_json(run_dir / "adapter" / "adapter_config.json") or adapter_config
        text = render_card(kind, adapter_config, record, peft_adapters=parts, base_dtype=dtype)
        written.append(atomic_write_text(folder / CARD_NAME, text))
    return written


def run_model_dtype(run_dir: str | os.PathLike) -> str | None:
    """The base weights' dtype a run trained with (``model.dtype`` of ``<run>/.hydra/config.yaml``), or None."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return model_dtype(config)


def model_dtype(config: Any) -> str | None:
    """``model.dtype`` of a resolved run config (a plain dict) when it is a dtype a PEFT export can round to."""
    model = config.get("model") if isinstance(config, dict) else None
    dtype = model.get("dtype") if isinstance(model, dict) else None
    return dtype if dtype in PEFT_VALUE_DTYPES else None
