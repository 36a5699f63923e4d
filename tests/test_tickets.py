"""What a sparse adapter kept (rigsa_lightning.report.tickets): exact maths on exported adapters of a tiny model
whose masks are built to known answers, the merged weight change as the norm's reference, and the sweep command."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rigsa_lightning.adapters.rigsa.export import read_sparse_adapter
from rigsa_lightning.adapters.rigsa.inject import inject_rigsa
from rigsa_lightning.adapters.rigsa.seeding import generate_initial_delta
from rigsa_lightning.export import save_sparse_adapter
from rigsa_lightning.report.tickets import (
    PLACEMENTS,
    TOP_ROWS,
    main,
    place_values,
    ticket_anatomy,
    write_tickets,
)

ADAPTER = {
    "method": "rigsa",
    "seed": 11,
    "alpha_init": 1e-6,
    "gate": "matrix",
    "targets": ["q_proj", "down_proj"],
}
PRUNING = {"enabled": True, "rounds": 1, "sparsity": 0.75, "epochs_per_round": 1, "final_epochs": 1}


def _export(adapters: dict[str, Any], folder: Path, pruned_value: str = "zero") -> Path:
    pruning = {**PRUNING, "pruned_value": pruned_value}
    return save_sparse_adapter(adapters, folder, base_model="tiny", adapter_cfg=ADAPTER, pruning_cfg=pruning)


def _set(
    mod: Any, mask: torch.Tensor, values: torch.Tensor, alpha: float, pruned_value: str = "zero"
) -> None:
    mod.apply_mask(mask, rewind=False, pruned_value=pruned_value)
    with torch.no_grad():
        mod.delta[mask] = values
        mod.alpha.fill_(alpha)


def test_largest_initial_entries_score_two_minus_p_and_a_random_mask_one(
    tiny_model: tuple[Any, Any], tmp_path: Path
) -> None:
    """kaiming_uniform ΔW0 is uniform on ±b: the largest fraction p of |ΔW0| averages b(1 - p/2) against b/2 for
    all entries, so keeping them scores 2 - p; a uniformly random mask scores 1."""
    p = 0.25
    model, _ = tiny_model
    adapters = inject_rigsa(model, ADAPTER)
    gen = torch.Generator().manual_seed(0)
    for mod in adapters.values():
        init = generate_initial_delta(mod.delta.shape, mod.init_seed)
        keep = init.abs() >= init.abs().flatten().kthvalue(round((1 - p) * init.numel()) + 1).values
        _set(mod, keep, init[keep], 0.5)
    largest = ticket_anatomy(_export(adapters, tmp_path / "largest"))
    assert largest.density == pytest.approx(p, abs=1e-3)
    assert largest.init_magnitude_ratio == pytest.approx(2 - p, abs=0.03)
    assert largest.kept_sign == 1.0

    for mod in adapters.values():
        keep = torch.rand(mod.delta.shape, generator=gen) < p
        _set(mod, keep, generate_initial_delta(mod.delta.shape, mod.init_seed)[keep], 0.5)
    rand = ticket_anatomy(_export(adapters, tmp_path / "random"))
    assert rand.init_magnitude_ratio == pytest.approx(1.0, abs=0.04)
    assert TOP_ROWS < rand.row_share < 2 * TOP_ROWS  # the busiest tenth of rows, by chance a little over 10 %


@pytest.mark.parametrize("pruned_value", ["zero", "init"])
def test_update_norm_is_the_merged_weight_change_and_signs_count_exactly(
    tiny_model: tuple[Any, Any], tmp_path: Path, pruned_value: str
) -> None:
    model, _ = tiny_model
    adapters = inject_rigsa(model, ADAPTER)
    gen = torch.Generator().manual_seed(1)
    flipped = 0
    for i, mod in enumerate(adapters.values()):
        init = generate_initial_delta(mod.delta.shape, mod.init_seed)
        keep = torch.rand(init.shape, generator=gen) < 0.3
        values = init[keep] * 1.5
        values[: 7 * (i + 1)] *= -1  # exactly these kept entries change sign
        flipped += 7 * (i + 1)
        _set(mod, keep, values, 0.3 + 0.2 * i, pruned_value)
    reference = math.sqrt(
        sum(float((m.get_delta_weight().detach().double() ** 2).sum()) for m in adapters.values())
    )
    nnz = sum(int(m.mask.sum()) for m in adapters.values())
    got = ticket_anatomy(_export(adapters, tmp_path / "adapter", pruned_value))
    assert got.update_norm == pytest.approx(reference, rel=1e-6)
    assert got.kept_sign == pytest.approx(1 - flipped / nnz, abs=1e-12)


def test_a_mask_confined_to_the_busiest_tenth_of_rows_has_all_its_entries_there(
    tiny_model: tuple[Any, Any], tmp_path: Path
) -> None:
    model, _ = tiny_model
    adapters = inject_rigsa(model, ADAPTER)
    for mod in adapters.values():
        rows = round(TOP_ROWS * mod.out_features)
        keep = torch.zeros(mod.delta.shape, dtype=torch.bool)
        keep[1 : 1 + rows, ::3] = True
        _set(mod, keep, torch.ones(int(keep.sum())), 1.0)
    assert ticket_anatomy(_export(adapters, tmp_path / "rows")).row_share == 1.0


def _job(root: Path, name: str, method: str, adapters: dict[str, Any] | None, **metrics: float) -> None:
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    source = f"density_from: {root / 'rigsa_paper_s0'}\n" if method == "random_mask" else ""
    (folder / ".hydra" / "config.yaml").write_text(f"adapter:\n  method: {method}\n  {source}")
    payload = {"status": "completed", "method": method, "name": name.rsplit("_s", 1)[0]}
    payload |= {"forget/gsm8k/gold_nll/delta": metrics["nll"]}
    if "kl" in metrics:  # a run with the drift probe off has no drift KL
        payload["forget/drift/kl/after"] = metrics["kl"]
    (folder / "metrics.json").write_text(json.dumps(payload))
    if adapters is not None:
        _export(adapters, folder / "adapter")


def test_sweep_command_pairs_each_ticket_with_its_rigsa_run(
    tiny_model: tuple[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = tiny_model
    adapters = inject_rigsa(model, ADAPTER)
    for mod in adapters.values():
        init = generate_initial_delta(mod.delta.shape, mod.init_seed)
        _set(mod, init.abs() > 0.5 * init.abs().max(), init[init.abs() > 0.5 * init.abs().max()], 0.4)
    _job(tmp_path, "rigsa_paper_s0", "rigsa", adapters, kl=0.6, nll=0.25)
    for mod in adapters.values():  # the random ticket: same counts, entries drawn uniformly
        counts = int(mod.mask.sum())
        keep = torch.zeros(mod.delta.numel(), dtype=torch.bool)
        keep[torch.randperm(mod.delta.numel(), generator=torch.Generator().manual_seed(2))[:counts]] = True
        keep = keep.view(mod.delta.shape)
        _set(mod, keep, generate_initial_delta(mod.delta.shape, mod.init_seed)[keep], 0.8)
    _job(tmp_path, "random_ticket_s0", "random_mask", adapters, kl=0.05, nll=0.05)
    _job(tmp_path, "rigsa_paper_s1", "rigsa", None, kl=0.7, nll=0.3)  # archived: no adapter/
    _job(tmp_path, "rigsa_paper_s2", "rigsa", adapters, nll=0.125)  # no random ticket, no drift probe
    _job(tmp_path, "qlora_r16_s0", "qlora", None, kl=0.2, nll=0.1)

    out = write_tickets(tmp_path)
    data = json.loads(out["json"].read_text())
    assert [r["run"] for r in data["runs"]] == ["random_ticket_s0", "rigsa_paper_s0", "rigsa_paper_s2"]
    assert data["pairs"] == [["rigsa_paper_s0", "random_ticket_s0"]] and data["left_out"] == [
        "rigsa_paper_s1"
    ]
    by_run = {r["run"]: r for r in data["runs"]}
    assert by_run["rigsa_paper_s0"]["density"] == by_run["random_ticket_s0"]["density"]
    assert (
        by_run["rigsa_paper_s0"]["init_magnitude_ratio"]
        > 1.5
        > by_run["random_ticket_s0"]["init_magnitude_ratio"]
    )
    kl_ratio = f"{0.6 / 0.05:.1f}"
    md = out["md"].read_text()
    assert "| `rigsa_paper_s0` / `random_ticket_s0` |" in md and f"| {kl_ratio} | +0.200 |" in md
    assert "Left out (no exported `adapter/` in the job folder): `rigsa_paper_s1`" in md
    assert next(line for line in md.splitlines() if "`rigsa_paper_s2`" in line).endswith("| — | +0.125 |")
    assert all(line.count("|") == md.splitlines()[4].count("|") for line in md.splitlines()[4:9] if line)

    # Placements: each pair's drift KL with the values swapped, read from the scored placements' evaluation.json.
    placements = tmp_path.parent / f"{tmp_path.name}_placements"
    for placement, kl in zip(PLACEMENTS, (0.0123, 0.0456)):
        (placements / "rigsa_paper_s0" / placement).mkdir(parents=True)
        (placements / "rigsa_paper_s0" / placement / "evaluation.json").write_text(
            json.dumps({"forget/drift/kl/after": kl})
        )
    out = write_tickets(tmp_path, placements)
    pair_line = next(line for line in out["md"].read_text().splitlines() if "/ `random_ticket_s0`" in line)
    assert pair_line.endswith(f"| {kl_ratio} | +0.200 | 0.0123 | 0.0456 |")
    assert json.loads(out["json"].read_text())["placements_drift_kl"] == {
        "rigsa_paper_s0": dict(zip(PLACEMENTS, (0.0123, 0.0456)))
    }

    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "missing")])
    assert err.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: folder: {tmp_path / 'missing'} does not exist -> give the sweep's folder"
    ]


def test_placing_one_runs_values_on_anothers_positions(
    tiny_model: tuple[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The placed adapter holds the first run's values and gates on the second's kept entries, loads as any
    exported adapter, and two runs with different per-matrix counts are refused in one line (exit 2)."""
    model, _ = tiny_model
    adapters = inject_rigsa(model, ADAPTER)
    gen = torch.Generator().manual_seed(3)
    folders = []
    for k, alpha in ((0, 0.7), (1, 0.2)):
        for mod in adapters.values():
            keep = torch.zeros(mod.delta.numel(), dtype=torch.bool)
            keep[torch.randperm(mod.delta.numel(), generator=gen)[: mod.delta.numel() // 5]] = True
            _set(mod, keep.view(mod.delta.shape), torch.randn(int(keep.sum()), generator=gen), alpha)
        folders.append(_export(adapters, tmp_path / f"run{k}"))
    placed = place_values(folders[0], folders[1], tmp_path / "placed")
    _, values = read_sparse_adapter(folders[0])
    _, positions = read_sparse_adapter(folders[1])
    _, got = read_sparse_adapter(placed)
    for name in adapters:
        assert torch.equal(got[f"{name}.values"], values[f"{name}.values"])
        assert torch.equal(got[f"{name}.alpha"], values[f"{name}.alpha"])
        assert torch.equal(got[f"{name}.indices"], positions[f"{name}.indices"])
        assert not torch.equal(got[f"{name}.indices"], values[f"{name}.indices"])

    mod = next(iter(adapters.values()))
    keep = mod.mask.clone()
    keep.view(-1)[keep.view(-1).nonzero()[0]] = False  # one entry fewer in one matrix
    _set(mod, keep, torch.ones(int(keep.sum())), 0.5)
    fewer = _export(adapters, tmp_path / "fewer")
    with pytest.raises(SystemExit) as err:
        main(["--place", str(folders[0]), str(fewer), str(tmp_path / "refused")])
    assert err.value.code == 2 and not (tmp_path / "refused").exists()
    line = capsys.readouterr().err.strip()
    assert (
        line.startswith("error: --place: ")
        and "-> place a run's values on the random ticket drawn from it" in line
    )
    assert "\n" not in line
