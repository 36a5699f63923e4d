"""What a sparse adapter's mask kept, read from the exported adapter alone, beside how far the model moved.

``python -m rigsa_lightning.report.tickets <sweep folder>`` writes ``tickets.md`` and ``tickets.json`` there: one
row per completed RIGSA-family job whose folder still holds its exported ``adapter/`` (a study's archive leaves it
out for its size), then each RIGSA run beside the random ticket drawn from it (:func:`claims.ticket_pairs`).

Per run (:func:`ticket_anatomy`; the initial ΔW is regenerated from the seeds the adapter records):

* **initial |ΔW0| of the kept entries**: their mean absolute initial value over the mean absolute initial value of
  all entries of the same matrices, weighted by the per-matrix counts. 1 in expectation for a uniformly random
  mask; for ``kaiming_uniform`` ΔW0, keeping the fraction ``p`` largest of a matrix gives ``2 - p``.
* **kept sign**: the share of kept entries whose trained value has the sign of their initial value.
* **‖α·ΔW‖_F**: the Frobenius norm, over all adapted matrices, of the weight change the adapter applies (what
  merging adds to the base weights; pruned entries count with their initial value under ``pruned_value: init``).
* **rows' share**: the share of kept entries that fall in the 10 % of each matrix's rows holding the most of them
  (about 0.1 plus sampling noise for a uniformly random mask; 1 for a mask confined to those rows).

Beside them, from the job's ``metrics.json``: the drift probe's KL(base ‖ tuned) on general prompts and the GSM8k
reference-answer NLL change (:mod:`rigsa_lightning.forgetting`), so a ticket's structure can be read against how
far it moved the model.

**Placements** separate where a ticket's entries sit from what it learned on them: :func:`place_values` (``--place
VALUES POSITIONS OUT``) writes an adapter with one run's trained values and gates on another's kept positions (a
RIGSA run and its random ticket keep the same count in every matrix). Scored with ``python -m
rigsa_lightning.evaluate adapter_path=OUT``, their ``evaluation.json`` files under ``--placements DIR``
(``DIR/<RIGSA run>/{rigsa_values_on_ticket_positions,ticket_values_on_rigsa_positions}/``) add each pair's drift KL
with the values swapped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.io import atomic_write_json, atomic_write_text
from rigsa_lightning.report.claims import ticket_pairs
from rigsa_lightning.report.jobs import Job, _num, find_job_dirs, load_job

#: The share of rows :attr:`TicketAnatomy.row_share` looks at.
TOP_ROWS = 0.1
_METHODS = {"rigsa": "RIGSA", "random_mask": "random ticket"}


@dataclass(frozen=True)
class TicketAnatomy:
    """What one exported sparse adapter kept (see the module docstring for each measure)."""

    density: float
    init_magnitude_ratio: float
    kept_sign: float
    update_norm: float
    row_share: float


def ticket_anatomy(folder: str | Path) -> TicketAnatomy:
    """Measure the exported adapter in ``folder`` (``adapter.safetensors`` + ``adapter_config.json``)."""
    from rigsa_lightning.adapters.rigsa.export import read_sparse_adapter
    from rigsa_lightning.adapters.rigsa.seeding import generate_initial_delta

    config, tensors = read_sparse_adapter(folder)
    init_init = config.get("pruned_value", "zero") == "init"
    kept_abs = random_abs = same_sign = update_sq = top_rows = 0.0
    nnz = numel = 0
    for name, info in config["modules"].items():
        out_features, in_features = info["shape"]
        index = tensors[f"{name}.indices"].long()
        values = tensors[f"{name}.values"].double()
        alpha = float(tensors[f"{name}.alpha"])
        init = (
            generate_initial_delta(
                (out_features, in_features), int(info["init_seed"]), info["init"], float(info["init_std"])
            )
            .reshape(-1)
            .double()
        )
        kept_init = init[index]
        kept_abs += float(kept_init.abs().sum())
        random_abs += index.numel() * float(init.abs().mean())
        same_sign += float((torch.sign(kept_init) == torch.sign(values)).sum())
        delta_sq = float((values**2).sum())
        if init_init:  # the pruned entries stay at their initial value and are merged too
            delta_sq += float((init**2).sum()) - float((kept_init**2).sum())
        update_sq += alpha * alpha * delta_sq
        per_row = torch.bincount(index // in_features, minlength=out_features)
        top_rows += float(
            per_row.sort(descending=True).values[: max(1, round(TOP_ROWS * out_features))].sum()
        )
        nnz += index.numel()
        numel += out_features * in_features
    if nnz == 0:
        return TicketAnatomy(0.0, math.nan, math.nan, math.sqrt(update_sq), math.nan)
    return TicketAnatomy(
        density=nnz / numel,
        init_magnitude_ratio=kept_abs / random_abs,
        kept_sign=same_sign / nnz,
        update_norm=math.sqrt(update_sq),
        row_share=top_rows / nnz,
    )


#: The two placements of a pair, as folder names under ``--placements DIR/<RIGSA run>/``.
PLACEMENTS = ("rigsa_values_on_ticket_positions", "ticket_values_on_rigsa_positions")


def place_values(values_from: str | Path, positions_from: str | Path, out: str | Path) -> Path:
    """Write to ``out`` an exported adapter holding ``values_from``'s trained values (in index order) and gates on
    ``positions_from``'s kept entries, matrix by matrix; its config is ``positions_from``'s. The two adapters must
    adapt the same matrices and keep the same count in each (a RIGSA run and its random ticket do)."""
    from rigsa_lightning.adapters.rigsa.export import read_sparse_adapter, write_adapter_files

    values_cfg, values = read_sparse_adapter(values_from)
    config, positions = read_sparse_adapter(positions_from)
    if set(values_cfg["modules"]) != set(config["modules"]):
        raise ConfigError(
            "--place", "the two adapters adapt different matrices", "pair runs of the same targets"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in config["modules"]:
        kept, index = values[f"{name}.values"], positions[f"{name}.indices"]
        if kept.numel() != index.numel():
            raise ConfigError(
                "--place",
                f"{name} keeps {kept.numel()} entries in {values_from} and {index.numel()} in {positions_from}",
                "place a run's values on the random ticket drawn from it (the same per-matrix counts)",
            )
        tensors |= {
            f"{name}.values": kept,
            f"{name}.indices": index,
            f"{name}.alpha": values[f"{name}.alpha"],
        }
    config = {**config, "extra": {**config.get("extra", {}), "values_from": str(values_from)}}
    return write_adapter_files(out, tensors, config)


def _placed_kl(placements: Path, rigsa_run: str, placement: str) -> float:
    evaluation = placements / rigsa_run / placement / "evaluation.json"
    try:
        return _num(json.loads(evaluation.read_text()).get("forget/drift/kl/after"))
    except (OSError, ValueError, AttributeError):
        return math.nan


def _row(job: Job, anatomy: TicketAnatomy) -> dict[str, Any]:
    method = str(job.metrics.get("method", ""))
    return {
        "run": job.rel,
        "method": _METHODS.get(method, method),
        **asdict(anatomy),
        "drift_kl": _num(job.metrics.get("forget/drift/kl/after")),
        "gsm8k_nll_delta": _num(job.metrics.get("forget/gsm8k/gold_nll/delta")),
    }


def ticket_rows(folder: str | Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]], list[str]]:
    """The measured runs of a sweep folder, the (RIGSA run, random ticket) pairs among them (by folder name), and
    the completed RIGSA-family runs left out (no ``adapter/`` folder)."""
    root = Path(folder)
    jobs = [load_job(p, root) for p in find_job_dirs(root)]
    rows: list[dict[str, Any]] = []
    measured: dict[str, list[Job]] = {"rigsa": [], "random_mask": []}
    left_out: list[str] = []
    for job in sorted(jobs, key=lambda j: j.rel):
        method = job.metrics.get("method")
        if job.status != "completed" or method not in measured:
            continue
        if not (job.path / "adapter" / "adapter_config.json").is_file():
            left_out.append(job.rel)
            continue
        rows.append(_row(job, ticket_anatomy(job.path / "adapter")))
        measured[method].append(job)
    pairs = ticket_pairs(measured["rigsa"], measured["random_mask"]) or []
    return rows, [(r.rel, t.rel) for r, t in pairs], left_out


_COLUMNS = (  # key, title, format spec, scale
    ("density", "density (%)", ".2f", 100.0),
    ("init_magnitude_ratio", "initial magnitude, kept / all", ".3f", 1.0),
    ("kept_sign", "kept sign", ".3f", 1.0),
    ("update_norm", "‖α·ΔW‖_F", ".2f", 1.0),
    ("row_share", f"in top {100 * TOP_ROWS:.0f} % rows", ".3f", 1.0),
    ("drift_kl", "drift KL", ".3f", 1.0),
    ("gsm8k_nll_delta", "GSM8k Δ NLL", "+.3f", 1.0),
)


def _cell(value: float, spec: str) -> str:
    """``value`` formatted with ``spec``; "—" where it was not measured (NaN, inf)."""
    return format(value, spec) if math.isfinite(value) else "—"


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 and math.isfinite(b) else math.nan


def render(
    rows: Sequence[dict[str, Any]],
    pairs: Sequence[tuple[str, str]],
    left_out: Sequence[str],
    placed: dict[str, tuple[float, float]] | None = None,
) -> str:
    """The markdown of :func:`write_tickets` (``placed``: each RIGSA run's drift KL under :data:`PLACEMENTS`)."""
    lines = [
        "# What each sparse adapter kept",
        "",
        "Measured from each run's exported `adapter/` (`python -m rigsa_lightning.report.tickets`): see "
        "`rigsa_lightning/report/tickets.py` for each measure. Drift KL and GSM8k Δ NLL come from the run's "
        "`metrics.json`.",
        "",
        "| run | method | " + " | ".join(title for _, title, _, _ in _COLUMNS) + " |",
        "|---|---|" + "---|" * len(_COLUMNS),
    ]
    for row in rows:
        cells = [f"`{row['run']}`", row["method"]]
        cells += [_cell(scale * row[key], spec) for key, _, spec, scale in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if pairs:
        by_run = {row["run"]: row for row in rows}
        lines += ["", "Each RIGSA run over (or minus, for GSM8k) the random ticket drawn from it:", ""]
        head = "| pair | initial magnitude ratio | ‖α·ΔW‖_F ratio | drift KL ratio | GSM8k Δ NLL difference |"
        if placed:
            head += " drift KL, RIGSA's values on the ticket's positions | the ticket's values on RIGSA's positions |"
        lines += [head, "|---" * head.count(" | ") + "|---|"]
        for rigsa, ticket in pairs:
            a, b = by_run[rigsa], by_run[ticket]
            cells = [
                _cell(_ratio(a["init_magnitude_ratio"], b["init_magnitude_ratio"]), ".2f"),
                _cell(_ratio(a["update_norm"], b["update_norm"]), ".2f"),
                _cell(_ratio(a["drift_kl"], b["drift_kl"]), ".1f"),
                _cell(a["gsm8k_nll_delta"] - b["gsm8k_nll_delta"], "+.3f"),
            ]
            if placed:
                cells += [_cell(kl, ".4f") for kl in placed.get(rigsa, (math.nan, math.nan))]
            lines.append(f"| `{rigsa}` / `{ticket}` | " + " | ".join(cells) + " |")
    if left_out:
        lines += [
            "",
            "Left out (no exported `adapter/` in the job folder): " + ", ".join(f"`{r}`" for r in left_out),
        ]
    return "\n".join(lines) + "\n"


def write_tickets(folder: str | Path, placements: str | Path | None = None) -> dict[str, Path]:
    """Write ``tickets.md`` and ``tickets.json`` into the sweep ``folder``; return their paths. ``placements``: the
    folder of the pairs' scored placements (see the module docstring)."""
    folder = Path(folder)
    rows, pairs, left_out = ticket_rows(folder)
    placed = None
    if placements is not None:
        placed = {r: tuple(_placed_kl(Path(placements), r, p) for p in PLACEMENTS) for r, _ in pairs}
    out = {"md": folder / "tickets.md", "json": folder / "tickets.json"}
    atomic_write_text(out["md"], render(rows, pairs, left_out, placed))
    data: dict[str, Any] = {"runs": rows, "pairs": [list(p) for p in pairs], "left_out": left_out}
    if placed is not None:
        data["placements_drift_kl"] = {r: dict(zip(PLACEMENTS, kls)) for r, kls in placed.items()}
    atomic_write_json(out["json"], data)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rigsa_lightning.report.tickets <folder> [--placements DIR]`` or ``--place VALUES POSITIONS OUT``."""
    parser = argparse.ArgumentParser(prog="python -m rigsa_lightning.report.tickets")
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--placements", help="the pairs' scored placements: DIR/<RIGSA run>/<placement>/")
    parser.add_argument("--place", nargs=3, metavar=("VALUES", "POSITIONS", "OUT"), help="write a placement")
    args = parser.parse_args(argv)
    try:
        if args.place:
            print(place_values(*args.place))
            return
        if not args.folder or not Path(args.folder).is_dir():
            raise ConfigError("folder", f"{args.folder} does not exist", "give the sweep's folder")
        out = write_tickets(args.folder, args.placements)
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        sys.exit(2)
    print(out["md"].read_text())


if __name__ == "__main__":
    main()
