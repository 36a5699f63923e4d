"""The results table a training run prints at its end, and the paths users copy from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    """The run's main numbers as a table (paired changes with their 95 % CIs), then the run folder, metrics and
    adapter paths as plain lines."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics.get('name')} — results", show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys = [
        "textual_mnist/zero_shot_acc",
        "textual_mnist/zero_shot_gen_acc",
        "textual_mnist/acc",
        "textual_mnist/gen_acc",
        "chat/zero_shot_exact_match",
        "chat/exact_match",
        "chat/loss",
        "adapter/density",
        "params/trainable",
        "params/adapter_nnz",
        "adapter/bytes",
        "forget/drift/kl/after",
        "forget/drift/nll/before",
        "forget/drift/nll/after",
        "time/total_s",
        "memory/peak_rss_gb",
    ]
    keys += sorted(
        k for k in metrics if k.startswith("forget/") and k.endswith("/delta") and "drift" not in k
    )
    for key in keys:
        if key in metrics:
            v = metrics[key]
            text = f"{v:.4f}" if isinstance(v, float) else str(v)
            if f"{key}_ci_lo" in metrics:  # paired change with its 95% bootstrap CI (and McNemar's p)
                text += f" [{metrics[key + '_ci_lo']:+.4f}, {metrics[key + '_ci_hi']:+.4f}]"
                if f"{key}_p" in metrics:
                    text += f" p={metrics[key + '_p']:.2g}"
            table.add_row(key, text)
    console = Console()
    console.print(table)
    if metrics.get("forget/skipped"):
        console.print(
            f"forgetting benchmarks skipped: {', '.join(metrics['forget/skipped'])} (see the log line above)"
        )
    # Plain prints: paths must never be wrapped or styled, users copy them.
    print(f"run folder : {run_dir}")
    print(f"metrics    : {run_dir / 'metrics.json'}")
    if metrics.get("adapter/path"):
        print(f"adapter    : {metrics['adapter/path']}")
