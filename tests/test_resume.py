"""Resuming and failures: SIGKILL mid-round and resume bit-for-bit, NaN stops, atomic writes, run-folder guards.

The kill is real: ``RIGSA_TEST_KILL_AT_STEP=<n>`` makes the training process SIGKILL itself when global step ``n``
starts (rigsa_lightning/training/faults.py), so nothing in the process gets a chance to clean up.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import SMALL, load_ckpt, only_run_dir, run_cli, run_dirs, tail

IGNORED_METRICS = ("time/", "memory/", "run_dir", "adapter/path", "resumed_from")


def comparable_metrics(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = {k: v for k, v in metrics.items() if not k.startswith(IGNORED_METRICS)}
    if "prune/history" in out:  # wall-clock seconds per prune differ between processes
        out["prune/history"] = [{k: v for k, v in r.items() if k != "seconds"} for r in out["prune/history"]]
    return out


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(a) == sorted(b), what
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def reference_and_killed(tmp_path: Path, args: list[str], kill_step: int) -> tuple[Path, Path]:
    """An uninterrupted run (under ``tmp_path/ref``) and the same run SIGKILLed as step ``kill_step`` starts (under
    ``tmp_path/kill``); returns both run folders."""
    ref_root, kill_root = tmp_path / "ref", tmp_path / "kill"
    ref_root.mkdir()
    kill_root.mkdir()
    ref = run_cli(args, ref_root)
    assert ref.returncode == 0, tail(ref)
    killed = run_cli(args, kill_root, env={"RIGSA_TEST_KILL_AT_STEP": str(kill_step)})
    assert killed.returncode == -signal.SIGKILL, tail(killed)
    return only_run_dir(ref_root), only_run_dir(kill_root)


def kill_and_resume(
    tmp_path: Path, args: list[str], kill_step: int
) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """Reference run, a run SIGKILLed at ``kill_step``, then ``resume=<its folder>``; returns both folders."""
    ref_dir, run_dir = reference_and_killed(tmp_path, args, kill_step)
    kill_root = tmp_path / "kill"
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "adapter").exists()

    resumed = run_cli([f"resume={run_dir}"], kill_root)  # the run's own overrides come from its folder
    assert resumed.returncode == 0, tail(resumed)
    assert "resume: continuing" in resumed.stdout
    assert run_dirs(kill_root) == [run_dir], "a resume continues in the run's own folder"
    return ref_dir, run_dir, resumed


def test_sigkill_in_round_2_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    """rigsa_75 = 2 IMP rounds + final retraining (3 epochs of 8 steps); killed in round 2 (epoch 1, step 12)."""
    from safetensors.torch import load_file

    args = ["experiment=rigsa_75", *SMALL]
    ref_dir, run_dir = reference_and_killed(tmp_path, args, kill_step=12)
    kill_root = tmp_path / "kill"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "adapter").exists()
    # The checkpoint left behind is the end of epoch 0, after IMP round 1 (masks at density 0.5), with the state
    # needed for an exact continuation.
    ckpt_file = run_dir / "checkpoints" / "last.ckpt"
    ckpt = load_ckpt(ckpt_file)
    assert ckpt["global_step"] == 8
    assert ckpt["callbacks"]["IterativeMagnitudePruning"]["round"] == 1
    # Stored sparse after the prune (adapter.storage=auto on one device): kept values + sorted flat indices only.
    state = ckpt["state_dict"]
    assert not any(k.endswith((".mask", ".delta")) for k in state)
    exported = json.loads((ref_dir / "adapter" / "adapter_config.json").read_text())
    shapes = {f"model.{n}": info["shape"] for n, info in exported["modules"].items()}
    for prefix, (rows, cols) in shapes.items():
        indices, values = state[f"{prefix}.indices"], state[f"{prefix}.values"]
        assert indices.dtype == torch.int32 and values.shape == indices.shape
        assert indices.numel() == round(0.5 * rows * cols)
        assert bool((indices[1:] > indices[:-1]).all()) and int(indices.max()) < rows * cols
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"][0]["last_epoch"] == 8
    assert {"torch", "numpy", "python"} <= set(ckpt["rigsa"]["rng"])
    del ckpt

    # A resume with a different trajectory option is refused before anything runs; the run is left as it was.
    mtime = ckpt_file.stat().st_mtime_ns
    bad = run_cli([f"resume={run_dir}", "adapter.lr=0.5"], kill_root)
    assert bad.returncode == 2, tail(bad)
    assert bad.stderr.strip().splitlines()[-1].startswith("error: resume: options differ"), tail(bad)
    assert "adapter.lr=0.5" in bad.stderr and "Traceback" not in bad.stderr
    assert ckpt_file.stat().st_mtime_ns == mtime and not (run_dir / "metrics.json").exists()

    t0 = time.time()
    resumed = run_cli([f"resume={run_dir}"], kill_root)  # the run's own overrides are read from its folder
    assert resumed.returncode == 0, tail(resumed)
    assert "resume: continuing" in resumed.stdout
    assert run_dirs(kill_root) == [run_dir], "a resume continues in the run's own folder"
    print(f"resume took {time.time() - t0:.1f} s")

    # Masks, ΔW values and indices, gates: the exported adapters are identical, as are the final checkpoints.
    assert_same_tensors(
        load_file(str(ref_dir / "adapter" / "adapter.safetensors")),
        load_file(str(run_dir / "adapter" / "adapter.safetensors")),
        "exported adapter",
    )
    ref_ckpt, res_ckpt = load_ckpt(ref_dir / "checkpoints" / "last.ckpt"), load_ckpt(ckpt_file)
    assert ref_ckpt["global_step"] == res_ckpt["global_step"] == 24
    assert_same_tensors(
        ref_ckpt["state_dict"], res_ckpt["state_dict"], "final checkpoint state (masks, ΔW, alpha)"
    )
    # Metrics: accuracy, final losses, alpha statistics, densities, prune history - exactly equal.
    ref_metrics, res_metrics = comparable_metrics(ref_dir), comparable_metrics(run_dir)
    assert res_metrics == ref_metrics
    assert ref_metrics["adapter/density"] == 0.25
    for key in ("textual_mnist/acc", "final_val/loss", "alpha/mean"):
        assert key in ref_metrics
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from"] == str(ckpt_file)
    # The CSV history is continuous: every row of the uninterrupted run, the steps before the kill included.
    ref_rows, res_rows = csv_rows(ref_dir), csv_rows(run_dir)
    assert [r["step"] for r in res_rows] == [r["step"] for r in ref_rows]
    # log_every_n_steps=5: step rows at 4 and 9 straddle the checkpoint (8); 14 and 19 come after the kill (12)
    assert {r["step"] for r in ref_rows if "train/loss_step" in r} == {"4", "9", "14", "19"}
    assert res_rows == ref_rows


def test_sigkill_after_a_mid_epoch_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    """checkpoint.every_n_train_steps=3 and validation twice per epoch: killed as step 13 starts (round 2, epoch 1 of
    8-step epochs), the last checkpoint is global step 12, after 4 of the epoch's batches; the resumed run continues
    that epoch's order at its batch 4 (not from its start) and ends identical to the uninterrupted run: adapter,
    checkpoint, metrics.json and every CSV row (train/loss_epoch of the resumed epoch and the per-epoch parameter
    counts included)."""
    from safetensors.torch import load_file

    args = [
        "experiment=rigsa_75",
        *SMALL,
        "checkpoint.every_n_train_steps=3",
        "trainer.val_check_interval=0.5",
    ]
    ref_dir, run_dir, resumed = kill_and_resume(tmp_path, args, kill_step=12)
    # the loader's position is in the checkpoint: no replay warning
    assert "saved mid-epoch" not in resumed.stdout + resumed.stderr
    assert_same_tensors(
        load_file(str(ref_dir / "adapter" / "adapter.safetensors")),
        load_file(str(run_dir / "adapter" / "adapter.safetensors")),
        "exported adapter",
    )
    ref_ckpt = load_ckpt(ref_dir / "checkpoints" / "last.ckpt")
    res_ckpt = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert ref_ckpt["global_step"] == res_ckpt["global_step"] == 24
    assert_same_tensors(ref_ckpt["state_dict"], res_ckpt["state_dict"], "final checkpoint state")
    assert comparable_metrics(run_dir) == comparable_metrics(ref_dir)
    assert csv_rows(run_dir) == csv_rows(ref_dir)
    # The wall times are the whole run's: the checkpoints carry the fit seconds before the kill, so the stage totals
    # (checkpointed too) and the rest of the fit add up to time/train_s without clipping, as in an uninterrupted run.
    ref_m, res_m = (json.loads((d / "metrics.json").read_text()) for d in (ref_dir, run_dir))
    assert ref_m["time/train_before_s"] == 0.0
    before, train = res_m["time/train_before_s"], res_m["time/train_s"]
    assert 0.0 < before < res_ckpt["callbacks"]["StageTimer"]["fit_s"] <= train <= res_m["time/total_s"]
    parts = ("steps_s", "val_s", "curve_s", "prune_s", "fit_other_s")
    assert res_m["time/fit_other_s"] > 0.0
    assert sum(res_m[f"time/{k}"] for k in parts) == pytest.approx(train, rel=1e-9)
    assert res_m["time/steps_n"] == ref_m["time/steps_n"] == 24
    val_steps = sorted({int(r["step"]) for r in csv_rows(ref_dir) if "val/acc" in r})
    # twice per 8-step epoch; the checkpoint (global step 12) was saved before that step's validation (logged at
    # step 11), which the resumed run runs
    assert val_steps == [3, 7, 11, 15, 19, 23]


def test_resume_keeps_the_step_row_of_the_batch_a_mid_epoch_checkpoint_was_saved_at(tmp_path: Path) -> None:
    """A checkpoint saved at a batch's end (every 5 steps: global step 10 after batch 9) comes before that batch's
    step row (step 9, log_every_n_steps=5) is logged; the resumed run does not log it again, so the CSV keeps it:
    every row equals the uninterrupted run's (the row was lost before the fix)."""
    args = [
        "experiment=rigsa_75",
        *SMALL,
        "checkpoint.every_n_train_steps=5",
        "trainer.val_check_interval=0.5",
    ]
    ref_dir, run_dir, _ = kill_and_resume(tmp_path, args, kill_step=12)
    ref_rows = csv_rows(ref_dir)
    assert any(r["step"] == "9" and "train/loss_step" in r for r in ref_rows)
    assert csv_rows(run_dir) == ref_rows


def test_resumable_loader_continues_the_epoch_order_after_the_batches_it_handed_out() -> None:
    """The loader's state is its epoch and the batches it yielded; loading it skips exactly those, once."""
    from rigsa_lightning.data.batching import EpochSeededSampler, ResumableLoader

    sampler = EpochSeededSampler(10, seed=3)
    loader = ResumableLoader(list(range(10)), batch_size=3, sampler=sampler)
    sampler.set_epoch(1)
    whole = [b.tolist() for b in loader]
    assert sorted(sum(whole, [])) == list(range(10)) and [len(b) for b in whole] == [3, 3, 3, 1]
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 2}

    fresh_sampler = EpochSeededSampler(10, seed=3)
    fresh = ResumableLoader(list(range(10)), batch_size=3, sampler=fresh_sampler)
    fresh.load_state_dict(state)
    fresh_sampler.set_epoch(1)  # Lightning sets the epoch before the first batch is drawn
    assert [b.tolist() for b in fresh] == whole[2:]
    assert fresh.state_dict() == {"epoch": 1, "batches": 4}
    assert [b.tolist() for b in fresh] == whole  # only the first iteration after loading is shortened

    other_epoch = ResumableLoader(list(range(10)), batch_size=3, sampler=EpochSeededSampler(10, seed=3))
    other_epoch.load_state_dict({"epoch": 0, "batches": 2})  # saved at an epoch end: the next epoch is whole
    other_epoch.sampler.set_epoch(1)
    assert [b.tolist() for b in other_epoch] == whole


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """The non-empty cells of every row of ``csv/metrics.csv`` (wall-clock columns left out: time/*, memory/*,
    prune/seconds), in file order."""
    import csv

    with (run_dir / "csv" / "metrics.csv").open(newline="") as fh:
        return [
            {
                k: v
                for k, v in row.items()
                if v not in ("", None) and not k.startswith(IGNORED_METRICS) and k != "prune/seconds"
            }
            for row in csv.DictReader(fh)
        ]


@pytest.mark.parametrize("every_n", [None, 1], ids=["epoch_end_checkpoint", "mid_epoch_checkpoint"])
def test_lora_dropout_resume_restores_rng_states(tmp_path: Path, every_n: int | None) -> None:
    """LoRA dropout draws from the global torch RNG: only restored RNG states make the continuation exact. Killed
    at step 6 of 3 epochs of 4 steps, from the epoch-end checkpoint (step 4) or a mid-epoch one (step 5: the resumed
    run creates epoch 1's loader iterator mid-epoch, which must not draw from the global RNG)."""
    from safetensors.torch import load_file

    args = ["experiment=lora_r16", *SMALL, "data.train_size=16"]  # 3 epochs of 4 steps
    if every_n:
        args.append(f"checkpoint.every_n_train_steps={every_n}")
    ref_dir, run_dir, _ = kill_and_resume(tmp_path, args, kill_step=6)
    assert load_ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 12  # the resumed run's end
    assert_same_tensors(
        load_file(str(ref_dir / "adapter" / "adapter_model.safetensors")),
        load_file(str(run_dir / "adapter" / "adapter_model.safetensors")),
        "LoRA adapter",
    )
    assert comparable_metrics(run_dir) == comparable_metrics(ref_dir)


def test_nan_gate_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    """A gate turned NaN in epoch 1 (step 10): exit != 0, one clear line, failed.json, epoch-0 checkpoint intact."""
    res = run_cli(["experiment=rigsa_75", *SMALL], tmp_path, env={"RIGSA_TEST_NAN_AT_STEP": "10"})
    assert res.returncode == 1, tail(res)
    assert "Traceback" not in res.stderr
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("error: non-finite"))
    assert "global step 10" in line and ".alpha (nan)" in line and "last good checkpoint" in line
    run_dir = only_run_dir(tmp_path)
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["kind"] == "non_finite" and "global step 10" in failed["error"]
    assert failed["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert "run stopped" in (run_dir / "train.log").read_text()
    assert not (run_dir / "metrics.json").exists()
    ckpt = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 8  # the end of epoch 0, not the bad state
    for key, value in ckpt["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key


def test_checkpoint_save_refuses_non_finite_state(tiny_model: tuple[Any, Any]) -> None:
    """The save hook raises before Lightning writes a file, so a NaN ΔW never replaces last.ckpt."""
    from hydra import compose, initialize_config_dir

    from rigsa_lightning.adapters import PreparedModel
    from rigsa_lightning.adapters.rigsa.inject import inject_rigsa
    from rigsa_lightning.config.access import CONFIG_DIR
    from rigsa_lightning.training.checkpoint import restore_rng_state
    from rigsa_lightning.training.module import NonFiniteError, RigsaLitModule

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=rigsa_50", "model=tiny"])
    model, tok = tiny_model
    gated = inject_rigsa(model, cfg.adapter)
    lit = RigsaLitModule(PreparedModel(model, tok, "rigsa", "tiny", gated=gated), cfg, list(range(10)))

    good: dict[str, Any] = {"state_dict": lit.state_dict()}
    lit.on_save_checkpoint(good)
    assert all("base_layer" not in k for k in good["state_dict"])  # only adapter tensors are kept
    expected = torch.rand(3)
    restore_rng_state(good["rigsa"]["rng"])
    assert torch.equal(torch.rand(3), expected)

    name = next(iter(gated))
    with torch.no_grad():
        gated[name].delta[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=rf"{name}\.delta"):
        lit.on_save_checkpoint({"state_dict": lit.state_dict()})


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    from rigsa_lightning.training.checkpoint import capture_rng_state, restore_rng_state

    np.random.normal()  # a cached Gaussian in NumPy's state
    random.gauss(0, 1)
    state = capture_rng_state()
    torch.save({"rng": state}, tmp_path / "x.ckpt")
    loaded = torch.load(tmp_path / "x.ckpt", weights_only=True)["rng"]
    expected = (random.random(), np.random.rand(), torch.rand(2), random.gauss(0, 1), np.random.normal())
    restore_rng_state(loaded)
    got = (random.random(), np.random.rand(), torch.rand(2), random.gauss(0, 1), np.random.normal())
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert got[3:] == expected[3:]


# ------------------------------------------------------------------------------------------------ resume errors
def test_resume_of_missing_folder_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    res = run_cli(["resume=outputs/runs/nope", *SMALL], tmp_path)
    assert res.returncode == 2, tail(res)
    assert res.stderr.strip().splitlines()[-1].startswith("error: resume: "), tail(res)
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "outputs").exists()


def test_resume_of_completed_or_checkpointless_run_is_refused(tmp_path: Path) -> None:
    from rigsa_lightning.config.errors import ConfigError
    from rigsa_lightning.config.validation import check_resume_folder

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no checkpoints/last.ckpt"):
        check_resume_folder(run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert check_resume_folder(run) == run
    (run / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="already completed"):
        check_resume_folder(run)
    with pytest.raises(ConfigError, match="run folder to continue"):
        check_resume_folder("true")


def test_truncated_checkpoint_is_a_one_line_resume_error(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from rigsa_lightning.config.errors import ConfigError
    from rigsa_lightning.config.validation import check_checkpoint

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    with pytest.raises(ConfigError, match="can't be loaded safely") as info:
        check_checkpoint(OmegaConf.create({}), ckpt, "resume")
    assert "\n" not in info.value.one_line()


def test_pickled_object_in_checkpoint_is_refused(tmp_path: Path) -> None:
    """weights_only: a checkpoint carrying arbitrary Python objects is not unpickled."""
    from omegaconf import OmegaConf

    from rigsa_lightning.config.errors import ConfigError
    from rigsa_lightning.config.validation import check_checkpoint

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("/")}, ckpt)
    with pytest.raises(ConfigError, match="weights-only"):
        check_checkpoint(OmegaConf.create({}), ckpt, "ckpt_path")


# ------------------------------------------------------------------------------------------------ atomic writes
def test_atomic_write_that_fails_leaves_neither_file_nor_temp(tmp_path: Path) -> None:
    from rigsa_lightning.io import atomic_write, atomic_write_json

    target = tmp_path / "metrics.json"

    def half_then_crash(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write('{"status": "compl')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(target, {"status": "completed"})
    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"status": "completed"}  # the old complete file survives
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_sigkill_during_metrics_writes_never_leaves_a_partial_metrics_json(tmp_path: Path) -> None:
    """A process rewriting a large metrics.json in a loop is SIGKILLed: the visible file always parses."""
    code = (
        "import sys\n"
        "from rigsa_lightning.io import atomic_write_json\n"
        "i = 0\n"
        "while True:\n"
        "    atomic_write_json(sys.argv[1], {'status': 'completed', 'i': i, 'pad': ['x' * 100] * 20000})\n"
        "    i += 1\n"
        "    if i == 3:\n"
        "        print('ready', flush=True)\n"
    )
    target = tmp_path / "metrics.json"
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    data = json.loads(target.read_text())
    assert data["status"] == "completed" and data["i"] >= 2
    # Leftovers of the interrupted write are hidden temp names, never a file that looks complete.
    assert all(
        p.name == "metrics.json" or (p.name.startswith(".metrics.json.") and p.name.endswith(".tmp"))
        for p in tmp_path.iterdir()
    )


def test_train_and_result_writers_use_the_atomic_helpers() -> None:
    """No plain write of results in the train path (metrics, failure markers, adapters, forgetting, evaluation)."""
    root = Path(__file__).resolve().parents[1] / "rigsa_lightning"
    for rel in (
        "train.py",
        "training/scoring.py",
        "training/summary.py",
        "adapters/rigsa/export.py",
        "adapters/model_card.py",
        "export/__init__.py",
        "export/__main__.py",
        "forgetting/__init__.py",
        "adapters/full/model.py",
    ):
        text = (root / rel).read_text()
        for needle in (".write_text(", ".write_bytes(", "json.dump(", "torch.save("):
            assert needle not in text, f"{rel} writes with {needle} instead of rigsa_lightning.io"


# ------------------------------------------------------------------------------------------------ run folders
def test_new_run_never_writes_into_an_existing_run_folder(tmp_path: Path) -> None:
    other = tmp_path / "other_run"
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "config.yaml").write_text("original: true\n")
    (other / "metrics.json").write_text('{"status": "completed"}\n')
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    res = run_cli(["experiment=rigsa_50", *SMALL, f"hydra.run.dir={other}"], tmp_path)
    assert res.returncode == 2, tail(res)
    assert res.stderr.strip().splitlines()[-1].startswith("error: hydra.run.dir: "), tail(res)
    assert f"resume={other}" in res.stderr
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before  # untouched, even .hydra


def test_run_folder_guard_inside_train(tmp_path: Path) -> None:
    from rigsa_lightning.config.errors import ConfigError
    from rigsa_lightning.config.validation import check_run_folder_free

    check_run_folder_free(tmp_path)  # a fresh (or only-.hydra) folder is fine
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        check_run_folder_free(tmp_path)
