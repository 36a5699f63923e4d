"""``python -m rigsa_lightning.export``: convert a RIGSA run's ``adapter/`` export to PEFT SHiRA folder(s), or
(re)write its model card."""

from __future__ import annotations

import json
from pathlib import Path

from rigsa_lightning.adapters.rigsa.export import read_sparse_adapter
from rigsa_lightning.config.errors import ConfigError


def main(argv: list[str] | None = None) -> None:
    """``python -m rigsa_lightning.export <run>/adapter --to peft <folder>``: the RIGSA export as PEFT SHiRA
    adapter folder(s) with a model card; ``--card`` (re)writes the model card of ``<run>/adapter`` itself. Bad input:
    one line, exit 2."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m rigsa_lightning.export",
        description="Convert an exported RIGSA adapter (the adapter/ folder of a rigsa or random_mask run).",
    )
    parser.add_argument("adapter", help="the RIGSA adapter folder, e.g. outputs/runs/<run>/adapter")
    parser.add_argument(
        "--to",
        nargs=2,
        metavar=("FORMAT", "FOLDER"),
        help="'peft FOLDER': write PEFT SHiRA adapter folder(s) (split into FOLDER/adapter_<i> when one cannot "
        "hold every module) with a README.md model card",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="round α·ΔW to the base weights' dtype first, as merging does (auto: the run's model.dtype, else "
        "float32 | bfloat16 | float16)",
    )
    parser.add_argument(
        "--card", action="store_true", help="(re)write the adapter folder's README.md model card"
    )
    args = parser.parse_args(argv)
    try:
        if args.to is None and not args.card:
            raise ConfigError("--to", "nothing to do", "pass --to peft <folder> and/or --card")
        if args.to is not None:
            fmt, out = args.to
            if fmt != "peft":
                raise ConfigError("--to", f"unknown format {fmt!r}", "use --to peft <folder>")
            _export_peft_cli(Path(args.adapter), Path(out), args.dtype)
        if args.card:
            from rigsa_lightning.adapters.model_card import write_model_card

            config, _ = read_sparse_adapter(args.adapter)
            folder = Path(args.adapter)
            card = write_model_card(
                folder, kind="sparse", adapter_config=config, run_dir=folder.resolve().parent
            )
            print(f"model card: {card}")
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        sys.exit(2)


def _export_peft_cli(src: Path, dst: Path, dtype: str) -> None:
    """Run the PEFT export and say what it wrote (and that it split the modules, when it did)."""
    from rigsa_lightning.adapters.model_card import run_model_dtype
    from rigsa_lightning.adapters.rigsa.peft_export import export_peft

    if dtype == "auto":
        dtype = run_model_dtype(src.resolve().parent) or "float32"
    folders = export_peft(src, dst, dtype=dtype)
    if len(folders) == 1:
        print(f"peft: wrote {folders[0]} (SHiRA; PeftModel.from_pretrained(base, folder); card: README.md)")
        return
    print(
        f"peft: one SHiRA folder cannot hold every module (one r per folder, r·(in+out) <= in·out): split into "
        f"{len(folders)} adapters, load all of them (load_adapter) and merge them together (see {dst / 'README.md'}):"
    )
    for folder in folders:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        print(f"  {folder}  r={cfg['r']}  {len(cfg['target_modules'])} modules")


if __name__ == "__main__":
    main()
