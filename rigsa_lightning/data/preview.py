"""Print a few Textual MNIST examples as the model sees them, with labels and prompt lengths in tokens.

Usage::

    python -m rigsa_lightning.data.preview                       # data=digits, 3 training examples
    python -m rigsa_lightning.data.preview source=mnist5k resolution=14 n=2 split=test
    python -m rigsa_lightning.data.preview data=mnist path=/data/mnist --full

``key=value`` arguments override the options of ``conf/data/<data>.yaml`` (``data.`` prefixes are accepted);
``n``, ``split``, ``data`` and ``tokenizer`` (a folder; default: the embedded SmolLM2 tokenizer) drive the preview.
``--full`` prints the whole chat prompt instead of the grid only. Nothing is cached or written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from rigsa_lightning.config.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "data"


def load_data_cfg(name: str = "digits", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options of ``conf/data/<name>.yaml`` as a dict, with ``overrides`` applied."""
    path = CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
        raise ConfigError("data", f"no data config {name!r}", f"use one of {choices}")
    cfg = yaml.safe_load(path.read_text()) or {}
    cfg = {k: v for k, v in cfg.items() if k != "defaults"}
    for key, value in (overrides or {}).items():
        key = key.removeprefix("data.")
        if key not in cfg:
            raise ConfigError(f"data.{key}", "unknown option", f"known: {', '.join(sorted(cfg))}")
        cfg[key] = value
    return cfg


def preview_text(data_cfg: Any, tokenizer: Any, n: int = 3, split: str = "train", full: bool = False) -> str:
    """Render the first ``n`` examples of ``split`` (prompt built exactly as in training) as printable text."""
    from rigsa_lightning.config.access import get
    from rigsa_lightning.data.prompt import DEFAULT_PROMPT, PromptFormatter
    from rigsa_lightning.data.render import render_batch
    from rigsa_lightning.data.sources import load_source, make_splits, prepare_images

    images, labels, hint = load_source(data_cfg)
    index = make_splits(labels, hint, data_cfg)
    if split not in index:
        raise ConfigError("split", f"unknown split {split!r}", "use train, val or test")
    idx = index[split][: max(0, int(n))]
    grids = render_batch(
        prepare_images(images[idx], data_cfg),
        levels=int(get(data_cfg, "levels", 10)),
        separator=str(get(data_cfg, "separator", "")),
    )
    fmt = PromptFormatter(
        tokenizer,
        system_prompt=get(data_cfg, "system_prompt", None),
        question=get(data_cfg, "prompt", DEFAULT_PROMPT),
        supervise_eos=bool(get(data_cfg, "supervise_eos", True)),
    )
    prompts = fmt.encode_prompts(grids)
    shape = prepare_images(images[:1], data_cfg).shape[1:]
    sizes = {k: len(v) for k, v in index.items()}
    lines = [
        f"source={get(data_cfg, 'source')} grid={shape[0]}x{shape[1]} levels={get(data_cfg, 'levels', 10)} "
        f"splits={sizes} digit tokens={fmt.digit_token_ids}"
    ]
    for i, (src, grid, ids) in enumerate(zip(idx, grids, prompts)):
        digit = int(labels[src])
        grid_tokens = len(tokenizer(grid, add_special_tokens=False)["input_ids"])
        answer = tokenizer.decode(fmt.answer_ids[digit], skip_special_tokens=False)
        lines.append(
            f"--- {split}[{i}] (source index {int(src)}) label={digit} | prompt {len(ids)} tokens "
            f"(grid {grid_tokens}) + answer {len(fmt.answer_ids[digit])} tokens {answer!r}"
        )
        lines.append(fmt.prompt_text(grid) if full else grid)
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "overrides", nargs="*", help="key=value: data=<config>, n=, split=, tokenizer=, or data options"
    )
    parser.add_argument("--n", type=int, default=None, help="number of examples (default 3)")
    parser.add_argument("--split", default=None, help="train | val | test (default train)")
    parser.add_argument("--full", action="store_true", help="print the whole chat prompt, not only the grid")
    args = parser.parse_args(argv)
    opts: dict[str, Any] = {}
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        opts[key.strip()] = _parse_value(value)
    try:
        name = str(opts.pop("data", "digits"))
        n = int(args.n if args.n is not None else opts.pop("n", 3))
        opts.pop("n", None)
        split = str(args.split or opts.pop("split", "train"))
        opts.pop("split", None)
        tok_path = opts.pop("tokenizer", None)
        cfg = load_data_cfg(name, opts)
        from rigsa_lightning.models import load_tokenizer, resolve_model_path

        if tok_path is None:
            tok_path = resolve_model_path({"name_or_path": "embedded:smollm2-135m-instruct"})
        print(preview_text(cfg, load_tokenizer(str(tok_path)), n=n, split=split, full=args.full))
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
