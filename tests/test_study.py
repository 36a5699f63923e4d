"""The study's resumability (issue 16): skip_completed skips finished jobs, continues interrupted ones from their
checkpoint and moves failed attempts aside, and leaves a job another process holds; the study configs compose; the
time estimate counts finished jobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rigsa_lightning.report.sweep_callback import StudyEstimateCallback, sweep_jobs, sweep_params
from rigsa_lightning.task import LOCK_NAME, LOCK_STALE_S, JobClaim, claim_job_folder, secondary_rank
from tests.helpers import SMALL, run_cli, tail


def test_skip_completed_continues_then_skips(tmp_path: Path) -> None:
    run_dir = tmp_path / "study" / "rigsa_75_s0"
    args = ["experiment=rigsa_75", *SMALL, "skip_completed=true", f"hydra.run.dir={run_dir}"]
    killed = run_cli(args, tmp_path, env={"RIGSA_TEST_KILL_AT_STEP": "12"})
    assert killed.returncode == -signal.SIGKILL, tail(killed)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "metrics.json").exists()

    again = run_cli(args, tmp_path)  # the same command: continues the interrupted job
    assert again.returncode == 0, tail(again)
    assert "continuing the interrupted run" in again.stdout + again.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_from"].endswith("last.ckpt")
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns

    own = {n: (run_dir / ".hydra" / n).read_text() for n in ("config.yaml", "overrides.yaml")}
    # once more, from a command that differs (Hydra rewrites .hydra/ before the job can skip): nothing to do, and
    # the job keeps the config of the run that trained it
    third = run_cli([*args, "trainer.log_every_n_steps=7"], tmp_path)
    assert third.returncode == 0, tail(third)
    assert "already holds a completed run: skipped" in third.stdout + third.stderr
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp
    assert {n: (run_dir / ".hydra" / n).read_text() for n in own} == own
    assert "log_every_n_steps=7" not in own["overrides.yaml"]


def test_skip_completed_moves_a_failed_attempt_aside(tmp_path: Path) -> None:
    run_dir = tmp_path / "study" / "rigsa_50_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "failed.json").write_text('{"status": "failed", "error": "boom"}')
    args = ["experiment=rigsa_50", *SMALL, "skip_completed=true", f"hydra.run.dir={run_dir}"]
    res = run_cli(args, tmp_path)
    assert res.returncode == 0, tail(res)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert not (run_dir / "failed.json").exists()
    (aside,) = list(run_dir.parent.glob("rigsa_50_s0.failed-*"))
    assert json.loads((aside / "failed.json").read_text())["error"] == "boom"
    # the claim stayed with the job that ran (and was released at its end), not with the moved attempt
    assert not (aside / LOCK_NAME).exists() and not (run_dir / LOCK_NAME).exists()


def test_study_estimate_counts_the_grid_and_finished_jobs(tmp_path: Path, caplog) -> None:
    assert sweep_jobs({"experiment": "a,b,c", "seed": "0,1,2"}) == 9
    assert sweep_jobs({"experiment": "a", "seed": 0}) == 1
    # b_s0 was resumed: its last process lived 300 s, the whole job 1200 s (checkpointed stage totals + evaluation)
    stages = {"time/steps_s": 900.0, "time/val_s": 200.0, "time/curve_s": 50.0, "time/prune_s": 0.0}
    resumed = {"resumed_from": "b_s0/checkpoints/last.ckpt", **stages, "time/eval_after_s": 50.0}
    for name, times in (("a_s0", {"time/total_s": 600.0}), ("b_s0", {"time/total_s": 300.0, **resumed})):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- experiment={name[0]}\n- seed=0\n")
        (tmp_path / name / "metrics.json").write_text(json.dumps({"status": "completed", **times}))
    other = tmp_path / "zzz_s0"  # a job of another grid sharing the folder: not counted
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "overrides.yaml").write_text("- experiment=zzz\n- seed=0\n")
    (other / "metrics.json").write_text(json.dumps({"status": "completed", "time/total_s": 9999.0}))
    (tmp_path / "c_s0").mkdir()
    (tmp_path / "c_s0" / "failed.json").write_text("{}")
    cfg = OmegaConf.create(
        {
            "hydra": {
                "sweep": {"dir": str(tmp_path)},
                "sweeper": {"params": {"experiment": "a,b,c", "seed": "0,1"}},
            }
        }
    )
    cb = StudyEstimateCallback(job_minutes=30)
    with caplog.at_level("INFO"):
        cb.on_multirun_start(cfg)
    assert cb.estimate == {"jobs": 6.0, "done": 2.0, "minutes_per_job": 15.0, "minutes_left": 60.0}
    assert "estimated 1.0 h left" in caplog.text
    # the command line narrows the grid (one experiment, two seeds) and sweeps a key of its own (two rates)
    cfg.hydra.overrides = {
        "task": ["experiment=a", "adapter.lr=1e-3,1e-2", "eval.tasks=[piqa,gsm8k]", "+x=1"]
    }
    assert sweep_params(cfg) == {"experiment": "a", "seed": "0,1", "adapter.lr": "1e-3,1e-2"}
    cb.on_multirun_start(cfg)
    # only a_s0 is a point of the narrowed grid: 1 of 4 done, at its own 10 min
    assert cb.estimate == {"jobs": 4.0, "done": 1.0, "minutes_per_job": 10.0, "minutes_left": 30.0}
    # the whole grid again, a_s1 finished in 10 min too: each experiment's jobs left at its own median (b 20 min),
    # c's, with none finished, at the median of all (10 min): 20 + 2 x 10, where one median for all would say 30
    cfg.hydra.overrides = {"task": []}
    (tmp_path / "a_s1" / ".hydra").mkdir(parents=True)
    (tmp_path / "a_s1" / ".hydra" / "overrides.yaml").write_text("- experiment=a\n- seed=1\n")
    (tmp_path / "a_s1" / "metrics.json").write_text(
        json.dumps({"status": "completed", "time/total_s": 600.0})
    )
    with caplog.at_level("INFO"):
        cb.on_multirun_start(cfg)
    assert cb.estimate == {"jobs": 6.0, "done": 3.0, "minutes_per_job": 40.0 / 3, "minutes_left": 40.0}
    assert "median of the finished jobs, per experiment" in caplog.text


def test_study_configs_compose() -> None:
    from hydra import compose, initialize_config_dir

    from rigsa_lightning.config.access import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        main = compose(config_name="train", overrides=["+sweep=study"], return_hydra_config=True)
        extra = compose(config_name="train", overrides=["+sweep=study_extra"], return_hydra_config=True)
    for cfg in (main, extra):
        assert cfg.skip_completed is True and cfg.stop_at.val_acc == 0.8 and cfg.eval.curve.enabled is True
        assert cfg.hydra.sweep.dir == "outputs/study/cpu"
    assert main.hydra.sweeper.params.experiment == "rigsa_paper,random_mask_paper,qlora_r16"
    assert str(main.hydra.sweeper.params.seed) == "0,1,2"
    assert extra.hydra.sweeper.params.experiment == "lora_r16,full_ft,rigsa_50,zero_shot"


def test_study_v2_runs_seed_by_seed() -> None:
    """The v2 grid is seed-major: Hydra's sweeper launches each seed's three arms before the next seed, so a slot
    that finishes a job takes the paired control of a seed already searched, not a sixth RIGSA mask search."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from rigsa_lightning.config.access import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+sweep=study_v2"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    launched = [dict(o.split("=") for o in job) for job in jobs]
    names = [f"{job['experiment']}_s{job['seed']}" for job in launched]
    assert len(names) == 15 and len(set(names)) == 15
    assert names[:6] == [
        "rigsa_paper_s0",
        "random_ticket_s0",
        "qlora_r16_s0",
        "rigsa_paper_s1",
        "random_ticket_s1",
        "qlora_r16_s1",
    ]


def test_study_v2_equal_rate_swaps_the_two_tickets_final_rates_and_changes_nothing_else() -> None:
    """``+sweep=study_v2_equal_rate``: RIGSA's ticket of the study's run (its ticket.ckpt.xz, no new mask search)
    retrained at the random ticket's rate, the random ticket at RIGSA's final rate; budget, schedule, stop, data,
    evaluation and the paired counts are the study's, in a folder of its own."""
    from hydra import compose, initialize_config_dir

    from rigsa_lightning.config.access import CONFIG_DIR

    def arms(sweep: str) -> dict[str, Any]:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return {
                experiment: compose(
                    config_name="train",
                    overrides=[f"+sweep={sweep}", f"experiment={experiment}", "seed=2"],
                    return_hydra_config=True,
                )
                for experiment in ("rigsa_paper", "random_ticket")
            }

    study, equal = arms("study_v2"), arms("study_v2_equal_rate")
    rigsa, ticket = equal["rigsa_paper"], equal["random_ticket"]
    assert rigsa.pruning.final_lr == study["random_ticket"].adapter.lr == 3.0e-2
    assert ticket.adapter.lr == study["rigsa_paper"].pruning.final_lr == 3.0e-3
    assert (
        rigsa.adapter.lr == study["rigsa_paper"].adapter.lr
    )  # the rounds' rate: the ticket's own checkpoint
    assert rigsa.ckpt_path == "outputs/study/v2/rigsa_paper_s2/ticket.ckpt.xz" and ticket.ckpt_path is None
    assert ticket.adapter.density_from == "outputs/study/v2/rigsa_paper_s2"
    assert equal["rigsa_paper"].hydra.sweep.dir == "outputs/study/v2_equal_rate"
    assert str(rigsa.hydra.sweeper.params.seed) == "0"
    assert rigsa.hydra.sweeper.params.experiment == "rigsa_paper,random_ticket"
    for name, cfg in equal.items():
        same = study[name]
        for key in (
            "pruning.final_epochs",
            "pruning.rounds",
            "stop_at",
            "data",
            "eval",
            "trainer",
            "adapter.init",
        ):
            assert OmegaConf.select(cfg, key) == OmegaConf.select(same, key), (name, key)
        assert cfg.skip_completed is True and cfg.pruning.final_epochs == 3


def test_lr_search_and_paper_scale_compose() -> None:
    from hydra import compose, initialize_config_dir

    from rigsa_lightning.config.access import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        lr = compose(
            config_name="train",
            overrides=["+sweep=lr_search", "experiment=qlora_r16"],
            return_hydra_config=True,
        )
        paper = compose(config_name="train", overrides=["+sweep=paper"], return_hydra_config=True)
    # the same number of pilots per method, one row per method x learning rate in the report
    assert str(lr.hydra.sweeper.params["adapter.lr"]) == "3.0e-4,1.0e-3,3.0e-3"
    assert (
        lr.name == f"qlora_lr{lr.lr_by_method.qlora}"
        and lr.eval.enabled is False
        and lr.stop_at.val_acc is None
    )
    assert lr.skip_completed is True and lr.hydra.sweep.dir == "outputs/study/lr_search_1k"
    # the budget: one phase of the study (its 1000 examples, 1 epoch, no pruning), validated at half and end
    assert lr.data.train_size == 1000 and lr.pruning.rounds == 0 and lr.pruning.final_epochs == 1
    assert lr.trainer.val_check_interval == 0.5 and lr.trainer.check_val_every_n_epoch == 1
    # the paper's scale: the same study settings on the paper's model, data and full benchmarks
    assert paper.model.name_or_path == "HuggingFaceTB/SmolLM2-1.7B-Instruct" and paper.data.source == "mnist"
    assert paper.eval.limit is None and paper.eval.require_benchmarks is True
    assert paper.skip_completed is True and paper.stop_at.val_acc == 0.8 and paper.eval.curve.enabled is True
    assert (
        paper.hydra.sweep.dir == "outputs/study/paper" and paper.hydra.sweep.subdir == "rigsa_s42"
    )  # <name>_s<seed>


def test_skip_completed_leaves_a_diverged_job_alone(tmp_path: Path) -> None:
    run_dir = tmp_path / "study" / "rigsa_50_s0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"not read")
    failed = '{"status": "failed", "kind": "non_finite", "error": "loss is nan"}'
    (run_dir / "failed.json").write_text(failed)
    res = run_cli(
        ["experiment=rigsa_50", *SMALL, "skip_completed=true", f"hydra.run.dir={run_dir}"], tmp_path
    )
    assert res.returncode == 0, tail(res)
    assert "diverged (non-finite training state" in res.stdout + res.stderr
    assert (run_dir / "failed.json").read_text() == failed and not (run_dir / "metrics.json").exists()


def test_study_runs_each_method_at_its_searched_learning_rate() -> None:
    """lr_by_method sets adapter.lr per method in one sweep; the command line still wins."""
    from hydra import compose, initialize_config_dir

    from rigsa_lightning.config.access import CONFIG_DIR
    from rigsa_lightning.config.options import check_options

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):

        def lr(*overrides: str) -> float:
            cfg = compose(config_name="train", overrides=["+sweep=study", *overrides])
            check_options(cfg)
            return cfg.adapter.lr

        table = compose(config_name="train", overrides=["+sweep=study"]).lr_by_method
        for experiment, method in [
            ("rigsa_paper", "rigsa"),
            ("random_mask_paper", "random_mask"),
            ("qlora_r16", "qlora"),
            ("lora_r16", "lora"),
            ("full_ft", "full"),
            ("rigsa_50", "rigsa"),
            ("zero_shot", "none"),
        ]:
            assert lr(f"experiment={experiment}") == table[method], experiment
        assert len({table.rigsa, table.qlora, table.full}) > 1  # not one rate for all
        assert lr("experiment=qlora_r16", "adapter.lr=7e-4") == 7e-4


def _claim(run_dir: Path, host: str, pid: int) -> str:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"host": host, "pid": pid, "started": "2026-12-05 05:00:00"})
    (run_dir / LOCK_NAME).write_text(text)
    return text


def test_job_claim_is_exclusive_and_stale_claims_are_taken_over(tmp_path: Path) -> None:
    """One process holds a job folder; a live holder on this machine (or another machine's claim refreshed lately)
    keeps it; a dead holder's or a long-unrefreshed claim is taken over; release removes only this process's claim."""
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / "live"
        text = _claim(live, host, sleeper.pid)
        held = claim_job_folder(live)
        assert held == json.loads(text)  # busy: the holder's record, the claim untouched
        assert (live / LOCK_NAME).read_text() == text
    finally:
        sleeper.kill()
        sleeper.wait()
    dead = claim_job_folder(live)  # the same folder once its holder is gone: taken over
    assert isinstance(dead, JobClaim)
    record = json.loads((live / LOCK_NAME).read_text())
    assert record["host"] == host and record["pid"] == os.getpid()
    other = claim_job_folder(tmp_path / "other")  # another folder: its own claim
    assert isinstance(other, JobClaim) and other.path == tmp_path / "other" / LOCK_NAME
    other.release()
    dead.release()
    assert not (live / LOCK_NAME).exists()
    assert not list(live.glob("*.tmp"))

    remote = tmp_path / "remote"
    text = _claim(remote, host + "-elsewhere", 12345)
    assert claim_job_folder(remote) == json.loads(text)  # another machine's claim, refreshed just now: live
    old = time.time() - LOCK_STALE_S - 60
    os.utime(remote / LOCK_NAME, (old, old))
    taken = claim_job_folder(remote)
    assert isinstance(taken, JobClaim)
    _claim(remote, host + "-elsewhere", 12345)  # someone else's claim now: release leaves it
    taken.release()
    assert json.loads((remote / LOCK_NAME).read_text())["pid"] == 12345


def test_skip_completed_leaves_a_job_another_process_runs(tmp_path: Path) -> None:
    """Two processes on one grid: a job folder claimed by a live process is neither run, continued nor moved aside;
    once its holder is gone, the same command takes the job over, runs it and removes its claim."""
    run_dir = tmp_path / "study" / "rigsa_50_s0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"being written by the other process")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    holders_log = "[2026-12-05 14:45:37][rigsa_lightning.train][INFO] the holder's own line\n"
    (run_dir / "train.log").write_text(holders_log)
    args = ["experiment=rigsa_50", *SMALL, "skip_completed=true", f"hydra.run.dir={run_dir}"]
    try:
        text = _claim(run_dir, socket.gethostname(), sleeper.pid)
        res = run_cli(args, tmp_path)
        assert res.returncode == 0, tail(res)
        said = res.stdout + res.stderr
        assert f"is being run by another process (host {socket.gethostname()}, pid {sleeper.pid}" in said
        # the skip is said on the console, not in the log of the job the other process runs
        assert (run_dir / "train.log").read_text() == holders_log
        assert (run_dir / LOCK_NAME).read_text() == text
        assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"being written by the other process"
        assert not (run_dir / "metrics.json").exists() and not list(run_dir.parent.glob("*.failed-*"))
    finally:
        sleeper.kill()
        sleeper.wait()
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, tail(again)
    assert "held a stale claim" in again.stdout + again.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert not (run_dir / LOCK_NAME).exists()


def test_only_rank_zero_claims_a_job(monkeypatch) -> None:
    """A distributed job's other ranks (Lightning's DDP children, torchrun, SLURM tasks) run the job rank 0 claimed:
    they never claim it themselves, so they never skip it as held by another process."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    assert not secondary_rank()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not secondary_rank()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert secondary_rank()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "3")
    assert secondary_rank()


def test_sigterm_stops_the_sweep_and_the_job_continues(tmp_path: Path) -> None:
    """SIGTERM (a scheduler's preemption, ``kill``) is an interruption, not a failure: the sweep stops (its next job
    does not start), exit status 143, nothing recorded as failed; the same command continues the job."""
    sweep = tmp_path / "study"
    args = ["experiment=rigsa_75", *SMALL, "seed=0,1", "skip_completed=true"]
    args += [f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=s${seed}", "-m"]  # the flag after the overrides
    stopped = run_cli(args, tmp_path, env={"RIGSA_TEST_KILL_AT_STEP": "12", "RIGSA_TEST_KILL_SIGNAL": "TERM"})
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode == 143, tail(stopped)
    assert "run interrupted by SIGTERM" in said
    job = sweep / "s0"
    assert (job / "checkpoints" / "last.ckpt").is_file() and not (job / "metrics.json").exists()
    assert not (job / "failed.json").exists() and not (job / LOCK_NAME).exists()
    assert not (sweep / "s1").exists()  # the sweep stopped: its second job never started

    again = run_cli(args, tmp_path)
    assert again.returncode == 0, tail(again)
    assert "continuing the interrupted run" in again.stdout + again.stderr
    for seed in (0, 1):
        assert json.loads((sweep / f"s{seed}" / "metrics.json").read_text())["status"] == "completed"


def test_skip_completed_continues_a_job_started_from_a_checkpoint_from_its_own(tmp_path: Path) -> None:
    """A job started from another run's checkpoint (``ckpt_path``, as the search's final-retraining pilots start
    from the anchor's) and killed after a checkpoint of its own continues from that one, not from the start
    checkpoint again, and ends as the uninterrupted job does."""
    from safetensors.torch import load_file

    from tests.helpers import load_ckpt
    from tests.test_resume import assert_same_tensors, csv_rows

    anchor = tmp_path / "anchor"  # the mask search only: 2 rounds of 8 steps
    res = run_cli(
        ["experiment=rigsa_75", *SMALL, "pruning.final_epochs=0", f"hydra.run.dir={anchor}"], tmp_path
    )
    assert res.returncode == 0, tail(res)
    start = anchor / "checkpoints" / "last.ckpt"
    assert load_ckpt(start)["global_step"] == 16

    def pilot(folder: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        args = [
            "experiment=rigsa_75",
            *SMALL,
            f"ckpt_path={start}",
            "pruning.final_epochs=1",
            "pruning.final_lr=0.003",
            "checkpoint.every_n_train_steps=3",
            "skip_completed=true",
            f"hydra.run.dir={folder}",
        ]
        return run_cli(args, tmp_path, env=env)

    ref = pilot(tmp_path / "ref")
    assert ref.returncode == 0, tail(ref)
    run_dir = tmp_path / "pilot"
    killed = pilot(run_dir, env={"RIGSA_TEST_KILL_AT_STEP": "20"})
    assert killed.returncode == -signal.SIGKILL, tail(killed)
    own = run_dir / "checkpoints" / "last.ckpt"
    assert load_ckpt(own)["global_step"] == 18  # its own progress beyond the start checkpoint
    carried = load_ckpt(own)["callbacks"]["StageTimer"]["fit_s"]  # its own fit seconds, not the anchor's

    # an earlier attempt to continue it that failed (as one did before this fix: the start checkpoint's options
    # differ from the job's) stays beside it, and no longer marks the job as failed
    (run_dir / "failed.json").write_text('{"status": "failed", "error": "error: resume: options differ"}')
    again = pilot(run_dir)
    assert again.returncode == 0, tail(again)
    assert not (run_dir / "failed.json").exists()
    (kept,) = run_dir.glob("failed-*.json")
    assert "options differ" in kept.read_text()
    assert "continuing the interrupted run" in again.stdout + again.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_from"] == str(own)
    # wall time: a run started from another run's checkpoint starts its own fit clock (the anchor's is not its
    # cost); continued from its own checkpoint, it adds the fit seconds that checkpoint carried
    assert json.loads((tmp_path / "ref" / "metrics.json").read_text())["time/train_before_s"] == 0.0
    assert metrics["time/train_before_s"] == carried > 0.0
    assert (
        load_ckpt(own)["global_step"]
        == load_ckpt(tmp_path / "ref" / "checkpoints" / "last.ckpt")["global_step"]
    )
    assert_same_tensors(
        load_file(str(tmp_path / "ref" / "adapter" / "adapter.safetensors")),
        load_file(str(run_dir / "adapter" / "adapter.safetensors")),
        "exported adapter",
    )
    assert csv_rows(run_dir) == csv_rows(tmp_path / "ref")
