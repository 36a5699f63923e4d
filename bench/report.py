"""``python -m bench.report [results.json]``: the summary of a results file as a markdown table (for the README)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from bench.common import results_path
from bench.run import BENCHMARKS


def markdown(path: Path) -> str:
    """One row per headline figure of every benchmark entry in ``path``."""
    data = json.loads(path.read_text())
    lines = [
        "| benchmark | figure | measured | target | verdict | run (load avg) |",
        "|---|---|---|---|---|---|",
    ]
    for name, module_name in BENCHMARKS.items():
        entry = data.get(name)
        if entry is None:
            continue
        module = importlib.import_module(module_name)
        env = entry.get("env", {})
        when = f"{env.get('date', '?')} ({', '.join(f'{x:.1f}' for x in env.get('loadavg', [])[:1])})"
        try:
            rows = module.headline(entry)
        except (KeyError, TypeError) as exc:  # an entry written by an older version of the benchmark
            lines.append(f"| {name} | (entry from an older bench version: {exc!r}) | | | | {when} |")
            continue
        for figure, measured, target, verdict in rows:
            lines.append(f"| {name} | {figure} | {measured} | {target} | {verdict} | {when} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the markdown table of ``argv[0]`` (default: today's results file)."""
    args = sys.argv[1:] if argv is None else argv
    print(markdown(Path(args[0]) if args else results_path()))


if __name__ == "__main__":
    main()
