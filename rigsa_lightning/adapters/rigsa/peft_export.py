"""The sparse RIGSA adapter as PEFT SHiRA adapter folders (``PeftModel.from_pretrained`` loads them, no custom code).

PEFT's SHiRA tuner stores, per adapted linear, ``shira_weight`` (fp32 values) and ``shira_indices`` (int32, shape
``(2, N)``: rows, cols) and adds them to the base weight on merge (``W0 += sparse(indices, weight)``). On load the
stored indices replace whatever mask the config's mask function would draw (none here: ``mask_type`` is not
``random``), so RIGSA's learned mask loads as it is. The stored values are ``α·ΔW`` at the kept entries, computed in
fp32 exactly as :func:`rigsa_lightning.export.merge_adapter` does, so the merged weights are bit-identical.

SHiRA's limits shape the layout:

* a module stores exactly ``r·(in+out)`` entries: the kept ones, padded with zero-valued entries at positions the
  adapter does not use (adding zero leaves the base weight unchanged);
* one ``r`` per adapter folder, and ``r·(in+out) <= in·out``.

So module ``m`` fits a folder whose ``r`` lies in ``[ceil(nnz_m/(in+out)), floor(in·out/(in+out))]``. The modules
are grouped by the fewest common points of these intervals (greedy by right end); when one folder cannot hold them
all, the export writes ``adapter_0``, ``adapter_1``, ... inside the output folder (each loaded with ``load_adapter``
and all merged together). A module holding more entries than any ``r`` allows (a near-dense non-square matrix) has
its kept entries split over several folders; the folders' entries never overlap, so the merge stays exact.

``pruned_value: init`` adapters are dense (pruned entries keep their initial value) and cannot be exported sparse.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rigsa_lightning.adapters.rigsa.constants import PEFT_VALUE_DTYPES, SPLIT_MANIFEST
from rigsa_lightning.config.errors import ConfigError

#: The output folder's list of adapter sub-folders when the export is split (absent for a single folder).
#: The SHiRA ``mask_type`` written into the configs: anything but ``random`` makes PEFT draw no mask on load.
MASK_TYPE = "rigsa"
#: Value dtypes the export can round ``α·ΔW`` to (the base model's dtype: merge adds the update in it).
VALUE_DTYPES = {name: getattr(torch, name) for name in PEFT_VALUE_DTYPES}
WEIGHTS_NAME_PEFT = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"


@dataclass
class _Part:
    """The kept entries of one module that go into one adapter folder."""

    name: str
    shape: tuple[int, int]  # (out, in)
    flat: torch.Tensor  # sorted flat row-major indices (int64)
    values: torch.Tensor  # α·ΔW at those indices (fp32)
    all_kept: torch.Tensor  # every kept flat index of the module (for the padding positions)

    @property
    def low_r(self) -> int:
        """The smallest ``r`` whose ``r·(in+out)`` holds this part (at least 1)."""
        out_f, in_f = self.shape
        return max(1, math.ceil(self.flat.numel() / (in_f + out_f)))


@dataclass
class PeftFolder:
    """One SHiRA adapter folder of the export: its ``r`` and the module parts it holds."""

    r: int
    parts: list[_Part] = field(default_factory=list)

    @property
    def target_modules(self) -> list[str]:
        """The module names this folder adapts."""
        return [p.name for p in self.parts]


def max_r(shape: tuple[int, int]) -> int:
    """The largest SHiRA ``r`` of an ``(out, in)`` linear: ``floor(in·out/(in+out))``."""
    out_f, in_f = shape
    return (out_f * in_f) // (out_f + in_f)


def _bad(problem: str, fix: str | None = None, option: str = "adapter") -> ConfigError:
    return ConfigError(option, problem, fix)


def _module_parts(name: str, info: dict, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> list[_Part]:
    """The module's kept entries as ``α·ΔW`` (fp32; rounded through ``dtype``), split into as few near-equal parts
    as SHiRA's largest ``r`` needs."""
    out_f, in_f = (int(s) for s in info["shape"])
    shape = (out_f, in_f)
    top = max_r(shape)
    if top < 1:
        raise _bad(
            f"module {name} of shape {list(shape)} is too small for a SHiRA adapter (r·(in+out) <= in·out has no "
            "r >= 1)",
            "export the adapter without this module or use this package's loader",
        )
    flat = tensors[f"{name}.indices"].to(torch.int64)
    alpha = tensors[f"{name}.alpha"].to(torch.float32).reshape(())
    # The same fp32 product merge_adapter adds: alpha * (ΔW ⊙ mask) at the kept entries.
    values = alpha * tensors[f"{name}.values"].to(torch.float32)
    if dtype != torch.float32:  # merge adds the update in the base weight's dtype: round it the same way
        values = values.to(dtype).to(torch.float32)
    n_parts = max(1, math.ceil(flat.numel() / (top * (in_f + out_f))))
    return [
        _Part(name, shape, f, v, flat)
        for f, v in zip(torch.tensor_split(flat, n_parts), torch.tensor_split(values, n_parts), strict=True)
    ]


def plan_folders(parts_by_module: dict[str, list[_Part]]) -> list[PeftFolder]:
    """Group module parts into the fewest SHiRA folders (one ``r`` each), each ``r`` as small as its parts allow.

    Each module's parts need ``r`` in ``[low, max_r]``; modules are stabbed greedily by right end (the minimum
    number of common points), then a group's parts of the same module go to different folders.
    """
    order = sorted(parts_by_module, key=lambda n: (max_r(parts_by_module[n][0].shape), n))
    groups: list[list[str]] = []
    point = None
    for name in order:
        low = max(p.low_r for p in parts_by_module[name])
        # Not stabbed by the current point: open a new group at this module's right end.
        if point is None or low > point:
            groups.append([])
            point = max_r(parts_by_module[name][0].shape)
        groups[-1].append(name)
    folders: list[PeftFolder] = []
    model_order = {name: i for i, name in enumerate(parts_by_module)}
    for group in groups:
        group.sort(key=model_order.__getitem__)
        for k in range(max(len(parts_by_module[n]) for n in group)):
            parts = [parts_by_module[n][k] for n in group if k < len(parts_by_module[n])]
            folders.append(PeftFolder(r=max(p.low_r for p in parts), parts=parts))
    return folders


def _padded(part: _Part, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``shira_indices`` (int32, (2, r·(in+out))) and ``shira_weight`` (fp32): the part's entries plus zero-valued
    ones, first at positions the module does not use, then at its other parts' positions (row-major order)."""
    out_f, in_f = part.shape
    numel = out_f * in_f
    total = r * (in_f + out_f)
    pad = total - part.flat.numel()
    if pad < 0 or total > numel:  # plan_folders guarantees low_r <= r <= max_r
        raise AssertionError(f"{part.name}: r={r} does not fit {part.flat.numel()} entries of {part.shape}")
    kept = torch.zeros(numel, dtype=torch.bool)
    kept[part.all_kept] = True
    in_part = torch.zeros(numel, dtype=torch.bool)
    in_part[part.flat] = True
    unused = (~kept).nonzero().reshape(-1)
    others = (kept & ~in_part).nonzero().reshape(-1)
    filler = torch.cat([unused, others])[:pad]
    flat = torch.cat([part.flat, filler])
    values = torch.cat([part.values, torch.zeros(pad, dtype=torch.float32)])
    order = torch.argsort(flat)
    flat, values = flat[order], values[order]
    indices = torch.stack([flat // in_f, flat % in_f]).to(torch.int32).contiguous()
    return indices, values.contiguous()


def read_rigsa_for_peft(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The validated sparse RIGSA export in ``folder`` (config, tensors); ConfigError when it is not one, or when
    it cannot be sparse (``pruned_value: init``)."""
    from rigsa_lightning.adapters.registry import method_for_export
    from rigsa_lightning.adapters.rigsa.export import CONFIG_NAME, WEIGHTS_NAME, read_sparse_adapter

    folder = Path(folder)
    if not folder.is_dir():
        raise _bad(f"{folder} is not a folder", "point it at the adapter/ folder of a RIGSA run")
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        if (folder / WEIGHTS_NAME_PEFT).is_file():
            what = "a PEFT adapter, not a RIGSA export"
        else:
            try:
                kind = method_for_export(folder).name
            except ConfigError:
                kind = None
            what = f"a {kind} export, not a RIGSA one" if kind else f"not a RIGSA export (no {WEIGHTS_NAME})"
        inside = folder / "adapter"
        fix = f"use {inside}" if (inside / WEIGHTS_NAME).is_file() else None
        raise _bad(
            f"{folder} is {what}", fix or "point it at the adapter/ folder of a rigsa or random_mask run"
        )
    try:
        config, tensors = read_sparse_adapter(folder)
    except ConfigError as exc:
        raise _bad(exc.problem, exc.fix) from exc
    if str(config.get("pruned_value", "zero")) == "init":
        raise _bad(
            f"{folder} was trained with pruning.pruned_value=init: pruned entries keep their initial ΔW, so the "
            "update is dense and cannot be a sparse PEFT adapter",
            "use this package's loader (load_sparse_adapter + merge_adapter) or train with pruning.pruned_value=zero",
        )
    return config, tensors


def _check_destination(src: Path, dst: Path) -> None:
    """Refuse to replace the source, a folder holding it, or a non-empty folder that is not a previous export."""
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or dst_r in src_r.parents or src_r in dst_r.parents:
        raise _bad(
            f"{dst} overlaps the RIGSA adapter folder {src}", "write the PEFT folder elsewhere", "--to"
        )
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        previous = (dst / PEFT_CONFIG_NAME).is_file() or (dst / SPLIT_MANIFEST).is_file()
        if not previous:
            raise _bad(
                f"{dst} exists and is not a PEFT export of this package",
                "choose a new folder or remove it",
                "--to",
            )


def export_peft(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: str = "float32",
    card: bool = True,
    run_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write the RIGSA export in ``src`` as SHiRA adapter folder(s) in ``dst``; return the adapter folders.

    One folder when one ``r`` fits every module (``dst`` itself), else ``dst/adapter_0``, ``dst/adapter_1``, ...
    (listed in ``dst/rigsa_peft_adapters.json``). ``dtype``: round ``α·ΔW`` to the base weights' dtype first
    (``merge`` adds the update in it). ``card``: also write ``dst/README.md`` (the model card; ``run_dir`` holds the
    run's numbers, default: ``src``'s parent). ``dst`` is built beside its final name and renamed into place.
    """
    from safetensors.torch import save_file

    from rigsa_lightning.io import atomic_dir, atomic_write_json

    if dtype not in VALUE_DTYPES:
        raise _bad(f"unknown value dtype {dtype!r}", f"use one of {' | '.join(VALUE_DTYPES)}", "--dtype")
    src, dst = Path(src), Path(dst)
    config, tensors = read_rigsa_for_peft(src)
    _check_destination(src, dst)
    parts = {
        name: _module_parts(name, info, tensors, VALUE_DTYPES[dtype])
        for name, info in config["modules"].items()
    }
    folders = plan_folders(parts)
    split = len(folders) > 1
    names = [f"adapter_{i}" for i in range(len(folders))] if split else ["."]
    with atomic_dir(dst) as tmp:
        for sub, folder in zip(names, folders, strict=True):
            out = tmp / sub
            out.mkdir(parents=True, exist_ok=True)
            _write_folder(out, folder, config, save_file)
        if split:
            atomic_write_json(
                tmp / SPLIT_MANIFEST,
                {
                    "adapters": names,
                    "r": [f.r for f in folders],
                    "modules": [f.target_modules for f in folders],
                    "source": str(src.resolve()),
                    "note": "load every adapter (load_adapter) and merge them together: their entries never overlap",
                },
            )
        if card:
            from rigsa_lightning.adapters.model_card import write_model_card

            write_model_card(
                tmp,
                kind="shira",
                adapter_config=config,
                run_dir=Path(run_dir) if run_dir is not None else src.resolve().parent,
                peft_adapters=names if split else None,
                base_dtype=dtype,
            )
    return [dst / n if split else dst for n in names]


def _write_folder(out: Path, folder: PeftFolder, config: dict[str, Any], save_file: Any) -> None:
    """``adapter_config.json`` (PEFT's own ShiraConfig) and ``adapter_model.safetensors`` of one folder."""
    from peft import ShiraConfig

    tensors: dict[str, torch.Tensor] = {}
    for part in folder.parts:
        indices, values = _padded(part, folder.r)
        tensors[f"base_model.model.{part.name}.shira_indices"] = indices
        tensors[f"base_model.model.{part.name}.shira_weight"] = values
    peft_cfg = ShiraConfig(
        r=folder.r,
        target_modules=folder.target_modules,
        mask_type=MASK_TYPE,
        inference_mode=True,
        base_model_name_or_path=_peft_base_model(str(config.get("base_model", ""))),
    )
    peft_cfg.save_pretrained(str(out))
    save_file(tensors, str(out / WEIGHTS_NAME_PEFT), metadata={"format": "pt"})
    with open(out / WEIGHTS_NAME_PEFT, "rb") as fh:
        os.fsync(fh.fileno())


def _peft_base_model(base_model: str) -> str | None:
    """The base model as PEFT records it (the hub id of the embedded model; local names as they are)."""
    from rigsa_lightning.adapters.model_card import hub_base_model

    return hub_base_model(base_model) or base_model or None


def load_peft_export(base: Any, folder: str | os.PathLike) -> Any:
    """Load a (possibly split) export onto ``base`` with PEFT, every adapter active; returns the ``PeftModel``
    (``merge_and_unload()`` bakes the active adapters, so all of them, into plain weights)."""
    import json

    from peft import PeftModel

    folder = Path(folder)
    manifest = folder / SPLIT_MANIFEST
    subs = json.loads(manifest.read_text())["adapters"] if manifest.is_file() else ["."]
    names = ["default"] if subs == ["."] else list(subs)
    model = PeftModel.from_pretrained(base, str(folder / subs[0]), adapter_name=names[0])
    for sub, name in zip(subs[1:], names[1:], strict=True):
        model.load_adapter(str(folder / sub), adapter_name=name)
    model.base_model.set_adapter(names)
    return model
