"""Using a trained adapter outside training: the public export API and the end of a run's exports.

* RIGSA's sparse export (``adapter/`` of a run): :func:`save_sparse_adapter`, :func:`read_sparse_adapter`,
  :func:`load_sparse_adapter`, :func:`merge_adapter` (implemented with the method, in
  ``rigsa_lightning.adapters.rigsa.export``).
* PEFT: :func:`export_peft` writes PEFT SHiRA folder(s), :func:`load_peft_export` loads them with PEFT.
* :func:`finish_run_exports`: the end of a training run's exports (``export.peft``, then a model card per export).
* ``python -m rigsa_lightning.export <run>/adapter --to peft <folder> | --card``: the command line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.rigsa.export import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_sparse_adapter,
    merge_adapter,
    read_sparse_adapter,
    save_sparse_adapter,
)
from rigsa_lightning.adapters.rigsa.peft_export import export_peft, load_peft_export

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "export_peft",
    "finish_run_exports",
    "load_peft_export",
    "load_sparse_adapter",
    "main",
    "merge_adapter",
    "read_sparse_adapter",
    "save_sparse_adapter",
]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    """The command line (``python -m rigsa_lightning.export``); see :mod:`rigsa_lightning.export.__main__`."""
    from rigsa_lightning.export.__main__ import main as cli

    cli(argv)


def finish_run_exports(cfg: Any, run_dir: str | os.PathLike, metrics: dict[str, Any]) -> dict[str, Any]:
    """The end of a run's exports: ``export.peft`` (gated methods) writes ``adapter_peft/`` (SHiRA folders, values
    rounded to ``model.dtype``), then every export gets its card. Returns the metrics to add (``adapter/peft_*``)."""
    from rigsa_lightning.adapters.model_card import write_run_cards
    from rigsa_lightning.adapters.registry import find_method
    from rigsa_lightning.adapters.rigsa.peft_export import VALUE_DTYPES
    from rigsa_lightning.config.access import get

    run_dir = Path(run_dir)
    added: dict[str, Any] = {}
    spec = find_method(get(cfg, "adapter.method"))
    if get(cfg, "export.peft", False) and spec is not None and spec.gated and (run_dir / "adapter").is_dir():
        dtype = str(get(cfg, "model.dtype", "float32"))
        target = run_dir / "adapter_peft"
        folders = export_peft(
            run_dir / "adapter", target, dtype=dtype if dtype in VALUE_DTYPES else "float32", card=False
        )
        added["adapter/peft_path"] = str(target)
        added["adapter/peft_adapters"] = len(folders)
        if len(folders) > 1:
            log.info(
                "export.peft: one SHiRA folder cannot hold every module (one r per folder): split into %d adapters "
                "in %s (load all of them, see its README.md)",
                len(folders),
                target,
            )
        else:
            log.info("export.peft: PEFT SHiRA adapter in %s", target)
    write_run_cards(run_dir, {**metrics, **added})
    return added
