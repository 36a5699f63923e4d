"""The winning ticket's packed checkpoint (``ticket.ckpt.xz``): exact round trip, refusal of a state that is not a
rewound ticket, and a job archived at its ticket that a fresh folder continues to the uninterrupted run's end."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rigsa_lightning.adapters.rigsa.seeding import generate_initial_delta
from rigsa_lightning.pruning.ticket_checkpoint import TICKET_FILE, pack, unpack
from tests.helpers import SMALL, load_ckpt, only_run_dir, run_cli, run_dirs, tail
from tests.test_resume import assert_same_tensors, comparable_metrics, csv_rows, reference_and_killed


def assert_same(a: Any, b: Any, where: str = "checkpoint") -> None:
    """Recursive exact equality of two checkpoint trees (tensors bit for bit, dtypes included)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(map(str, a)) == sorted(map(str, b)), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def synthetic_ticket(seed: int = 3) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A post-prune checkpoint of two sparse adapters whose kept values are their seeded init."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    modules: dict[str, dict[str, Any]] = {}
    for name, shape, dtype in (("model.a", (12, 40), torch.int32), ("model.b", (40, 12), torch.int64)):
        delta_seed = 1000 + len(modules)
        init = generate_initial_delta(shape, delta_seed).view(-1)
        keep = torch.randperm(init.numel(), generator=gen)[: init.numel() // 10].sort().values
        state[f"{name}.values"] = init[keep].clone()
        state[f"{name}.indices"] = keep.to(dtype)
        state[f"{name}.delta_seed"] = torch.tensor(delta_seed)
        state[f"{name}.alpha"] = torch.tensor(1e-6)
        modules[name] = {"shape": shape, "init": "kaiming_uniform", "init_std": 0.02}
    ckpt = {
        "state_dict": state,
        "global_step": 16,
        "loops": {"fit_loop": {"epoch": 2}},
        "optimizer_states": [{}],
    }
    return ckpt, modules


def test_pack_then_unpack_gives_back_the_checkpoint_bit_for_bit_and_smaller() -> None:
    ckpt, modules = synthetic_ticket()
    blob = pack(ckpt, modules)
    assert_same(unpack(blob), ckpt)
    raw = io.BytesIO()
    torch.save(ckpt, raw)
    assert len(blob) < len(raw.getvalue())
    assert "model.a.values" in ckpt["state_dict"], "pack does not modify its input"


def test_pack_refuses_values_that_are_not_the_rewound_init() -> None:
    ckpt, modules = synthetic_ticket()
    ckpt["state_dict"]["model.b.values"][0] += (
        1e-7  # one trained entry: the state is not a function of the mask
    )
    with pytest.raises(ValueError, match="model.b: the values are not its initial"):
        pack(ckpt, modules)
    ckpt, modules = synthetic_ticket()
    with pytest.raises(ValueError, match="no shape for adapter model.a"):
        pack(ckpt, {"model.b": modules["model.b"]})


def test_job_archived_at_its_ticket_continues_on_a_fresh_folder_to_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    """rigsa_75: rounds end at steps 8 and 16, the final retraining is steps 16-24 (mid-epoch checkpoints every 3
    steps). Killed as step 16 starts, the job folder holds the post-prune checkpoint and its packed ticket, which
    gives it back exactly. Only the archive's files and the ticket are carried to a fresh folder (no checkpoint);
    ``resume=`` there ends as the uninterrupted run: adapter, final checkpoint, metrics and every CSV row."""
    from safetensors.torch import load_file

    from rigsa_lightning.report.archive import restore, save

    args = ["experiment=rigsa_75", *SMALL, "checkpoint.every_n_train_steps=3"]
    ref_dir, run_dir = reference_and_killed(tmp_path, args, kill_step=16)
    kill_root, fresh_root, archive = tmp_path / "kill", tmp_path / "fresh", tmp_path / "archive"
    fresh_root.mkdir()
    post_prune = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert (
        post_prune["global_step"] == 16 and post_prune["callbacks"]["IterativeMagnitudePruning"]["round"] == 2
    )
    ticket = run_dir / TICKET_FILE
    assert ticket.is_file(), (run_dir / "train.log").read_text()[-2000:]
    assert_same(unpack(ticket.read_bytes()), post_prune)
    assert ticket.stat().st_size < (run_dir / "checkpoints" / "last.ckpt").stat().st_size

    runs = kill_root / "outputs" / "runs"
    assert save(runs, archive) == [], "an unfinished job is not saved as completed"
    saved = save(runs, archive, unfinished=True)
    assert len(saved) == 1 and (archive / saved[0] / TICKET_FILE).is_file()
    assert not (archive / saved[0] / "checkpoints").exists()
    assert save(runs, archive, unfinished=True) == [], "unchanged since the last save"
    assert restore(archive, fresh_root) == saved
    fresh_dir = fresh_root / saved[0]

    resumed = run_cli([f"resume={fresh_dir}"], fresh_root)
    assert resumed.returncode == 0, tail(resumed)
    assert_same_tensors(
        load_file(str(ref_dir / "adapter" / "adapter.safetensors")),
        load_file(str(fresh_dir / "adapter" / "adapter.safetensors")),
        "exported adapter",
    )
    ref_ckpt, res_ckpt = (
        load_ckpt(ref_dir / "checkpoints" / "last.ckpt"),
        load_ckpt(fresh_dir / "checkpoints" / "last.ckpt"),
    )
    assert ref_ckpt["global_step"] == res_ckpt["global_step"] == 24
    assert_same_tensors(ref_ckpt["state_dict"], res_ckpt["state_dict"], "final checkpoint state")
    assert comparable_metrics(fresh_dir) == comparable_metrics(ref_dir)
    assert csv_rows(fresh_dir) == csv_rows(ref_dir)


def test_pack_refuses_a_checkpoint_before_the_last_round() -> None:
    ckpt, modules = synthetic_ticket()
    ckpt["callbacks"] = {"IterativeMagnitudePruning": {"round": 1, "rounds": 2}}
    with pytest.raises(ValueError, match="after round 1 of 2, not the last"):
        pack(ckpt, modules)
    ckpt["callbacks"]["IterativeMagnitudePruning"]["round"] = 2
    assert_same(unpack(pack(ckpt, modules)), ckpt)


def _unfinished_job(root: Path, name: str, blob: bytes) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (job / TICKET_FILE).write_bytes(blob)
    return job


def test_unfinished_jobs_are_archived_at_their_ticket_but_not_failed_ones_nor_copies_in_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rigsa_lightning.report.archive import main, save
    from rigsa_lightning.report.jobs import find_job_dirs

    sweep, archive = tmp_path / "v2", tmp_path / "jobs"
    ckpt, modules = synthetic_ticket()
    blob = pack(ckpt, modules)
    _unfinished_job(sweep, "rigsa_paper_s0", blob)
    failed = _unfinished_job(sweep, "rigsa_paper_s1", blob)
    (failed / "failed.json").write_text('{"status": "failed", "kind": "non_finite"}')
    (sweep / "rigsa_paper_s2.partial-123" / ".hydra").mkdir(
        parents=True
    )  # another process's copy in progress
    assert [p.name for p in find_job_dirs(sweep)] == ["rigsa_paper_s0", "rigsa_paper_s1"]
    assert save(sweep, archive, unfinished=True) == ["rigsa_paper_s0"]
    assert (archive / "rigsa_paper_s0" / TICKET_FILE).read_bytes() == blob
    # a completed copy in the archive is never replaced by the unfinished job
    (archive / "rigsa_paper_s0" / "metrics.json").write_text('{"status": "completed"}')
    (sweep / "rigsa_paper_s0" / TICKET_FILE).write_bytes(blob + b"x")
    assert save(sweep, archive, unfinished=True) == []
    assert (archive / "rigsa_paper_s0" / "metrics.json").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["restore", "--unfinished", str(archive), str(tmp_path / "fresh")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --unfinished: only with save ->")


def test_an_unreadable_ticket_is_a_one_line_resume_error_and_unpack_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rigsa_lightning.config.errors import ConfigError
    from rigsa_lightning.config.validation import check_resume_folder
    from rigsa_lightning.pruning.ticket_checkpoint import main

    run = _unfinished_job(tmp_path, "run", b"not an lzma stream")
    with pytest.raises(ConfigError, match="is unreadable") as err:
        check_resume_folder(run)
    assert err.value.option == "resume"
    assert not (run / "checkpoints" / "last.ckpt").exists()

    ckpt, modules = synthetic_ticket()
    (run / TICKET_FILE).write_bytes(pack(ckpt, modules))
    assert check_resume_folder(run) == run  # rebuilt from the ticket
    assert_same(load_ckpt(run / "checkpoints" / "last.ckpt"), ckpt)
    with pytest.raises(SystemExit) as exit_info:
        main(["unpack", str(run)])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: job: ") and "last.ckpt exists (maybe further along) ->" in line


def test_a_new_run_started_from_a_winning_ticket_retrains_it_as_the_original_run_did(tmp_path: Path) -> None:
    """``ckpt_path=<RIGSA run>/ticket.ckpt.xz``: the final retraining again, without the mask search. At the
    original run's options it ends exactly where that run ended (adapter and final state bit for bit); at another
    final rate it trains the same mask to other values, exactly as a whole run at that final rate does (its first
    step included: the restored optimizer's rates are the old run's); a file that is not a ticket is a one-line
    error, exit 2, with no run folder left behind."""
    from safetensors.torch import load_file

    from rigsa_lightning.pruning.ticket_checkpoint import TICKET_START

    args = ["experiment=rigsa_75", *SMALL]
    ref_root, same_root, other_root = tmp_path / "ref", tmp_path / "same", tmp_path / "other"
    whole_root = tmp_path / "whole"
    for root in (ref_root, same_root, other_root, whole_root):
        root.mkdir()
    ref = run_cli(args, ref_root)
    assert ref.returncode == 0, tail(ref)
    ref_dir = only_run_dir(ref_root)
    ticket = ref_dir / TICKET_FILE
    assert ticket.is_file()

    same = run_cli([*args, f"ckpt_path={ticket}"], same_root)
    assert same.returncode == 0, tail(same)
    same_dir = only_run_dir(same_root)
    assert_same(load_ckpt(same_dir / TICKET_START), unpack(ticket.read_bytes()))
    ref_adapter = load_file(str(ref_dir / "adapter" / "adapter.safetensors"))
    assert_same_tensors(ref_adapter, load_file(str(same_dir / "adapter" / "adapter.safetensors")), "adapter")
    ref_ckpt, same_ckpt = (
        load_ckpt(ref_dir / "checkpoints" / "last.ckpt"),
        load_ckpt(same_dir / "checkpoints" / "last.ckpt"),
    )
    assert ref_ckpt["global_step"] == same_ckpt["global_step"] == 24
    assert_same_tensors(ref_ckpt["state_dict"], same_ckpt["state_dict"], "final checkpoint state")
    metrics = json.loads((same_dir / "metrics.json").read_text())
    ref_metrics = json.loads((ref_dir / "metrics.json").read_text())
    assert metrics["started_from"] == str(ticket) and "resumed_from" not in metrics
    assert json.loads((same_dir / "ticket_start.json").read_text()) == {"ticket": str(ticket)}
    assert metrics["prune/history"] == ref_metrics["prune/history"]  # the ticket's mask search, carried over
    steps = [int(r["step"]) for r in csv_rows(same_dir) if "train/loss_step" in r]
    assert steps and min(steps) >= 16, "only the final retraining (steps 16-24) runs again"
    assert any(int(r["step"]) < 16 for r in csv_rows(ref_dir) if "train/loss_step" in r)

    other = run_cli([*args, f"ckpt_path={ticket}", "pruning.final_lr=0.05"], other_root)
    assert other.returncode == 0, tail(other)
    assert "options differ from the checkpoint's run" in other.stdout + other.stderr
    other_adapter = load_file(str(only_run_dir(other_root) / "adapter" / "adapter.safetensors"))
    whole = run_cli(
        [*args, "pruning.final_lr=0.05"], whole_root
    )  # the same rounds, then the final phase at 0.05
    assert whole.returncode == 0, tail(whole)
    whole_adapter = load_file(str(only_run_dir(whole_root) / "adapter" / "adapter.safetensors"))
    assert_same_tensors(whole_adapter, other_adapter, "a ticket retrained at 0.05 = a whole run at 0.05")
    index_keys = [k for k in ref_adapter if k.endswith("indices")]
    value_keys = [k for k in ref_adapter if k.endswith("values")]
    assert index_keys and value_keys
    for key in index_keys:  # the same mask
        assert torch.equal(ref_adapter[key], other_adapter[key]), key
    assert any(not torch.equal(ref_adapter[k], other_adapter[k]) for k in value_keys), (
        "trained at another rate"
    )

    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    bad = bad_root / TICKET_FILE
    bad.write_bytes(b"not an lzma stream")
    res = run_cli([*args, f"ckpt_path={bad}"], bad_root)
    assert res.returncode == 2, tail(res)
    lines = res.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("error: ckpt_path: ")
        and "is not a readable winning-ticket checkpoint" in lines[-1]
    )
    assert " -> point it at a RIGSA run's ticket.ckpt.xz" in lines[-1]
    assert run_dirs(bad_root) == [], "bad input leaves no run folder"
