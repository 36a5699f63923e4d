"""A long sweep across machines: completed jobs' small files are saved to a committed folder and restored before
a rerun, so skip_completed skips them; checkpoints and adapters stay behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from rigsa_lightning.report.archive import main, restore, save


def _job(root: Path, name: str, completed: bool) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- experiment={name}\n")
    (job / "train.log").write_text("log line\n")
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"x" * 1000)
    (job / "adapter").mkdir()
    (job / "adapter" / "adapter.safetensors").write_bytes(b"y" * 1000)
    (job / "csv").mkdir()
    (job / "csv" / "metrics.csv").write_text("step,val/acc\n1,0.5\n")
    (job / "forgetting_items").mkdir()
    with gzip.open(job / "forgetting_items" / "after.json.gz", "wt") as fh:
        json.dump({"piqa": [1, 0, 1]}, fh)
    if completed:
        (job / "metrics.json").write_text(json.dumps({"status": "completed", "textual_mnist/acc": 0.8}))
        (job / "forgetting.json").write_text("{}")
    return job


def test_save_keeps_completed_jobs_small_files_only(tmp_path: Path) -> None:
    sweep, archive = tmp_path / "outputs" / "study", tmp_path / "docs" / "jobs"
    _job(sweep, "rigsa_paper_s0", completed=True)
    _job(sweep, "qlora_r16_s0", completed=False)  # interrupted: not saved
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert save(sweep, archive) == ["rigsa_paper_s0"]
    kept = archive / "rigsa_paper_s0"
    assert json.loads((kept / "metrics.json").read_text())["textual_mnist/acc"] == 0.8
    with gzip.open(kept / "forgetting_items" / "after.json.gz", "rt") as fh:
        assert json.load(fh) == {"piqa": [1, 0, 1]}
    assert (kept / ".hydra" / "overrides.yaml").read_text() == "- experiment=rigsa_paper_s0\n"
    assert (kept / "train.log").is_file() and (kept / "csv" / "metrics.csv").is_file()
    assert not (kept / "checkpoints").exists() and not (kept / "adapter").exists()
    assert not (kept / "ticket.ckpt.xz").exists()  # this job has none
    assert not (archive / "qlora_r16_s0").exists() and (archive / "multirun.yaml").is_file()
    # a second save replaces the copy (a newer completed run of the same job)
    (sweep / "rigsa_paper_s0" / "metrics.json").write_text(
        json.dumps({"status": "completed", "textual_mnist/acc": 0.9})
    )
    # a completed RIGSA job keeps its winning ticket (retrainable with ckpt_path on any machine)
    (sweep / "rigsa_paper_s0" / "ticket.ckpt.xz").write_bytes(b"packed ticket")
    save(sweep, archive)
    assert json.loads((kept / "metrics.json").read_text())["textual_mnist/acc"] == 0.9
    assert (kept / "ticket.ckpt.xz").read_bytes() == b"packed ticket"
    assert not list(archive.glob("*.partial"))


def test_restore_lets_skip_completed_skip_and_never_overwrites(tmp_path: Path) -> None:
    from rigsa_lightning.task import completed_metrics

    sweep, archive = tmp_path / "old" / "study", tmp_path / "docs" / "jobs"
    _job(sweep, "rigsa_paper_s0", completed=True)
    save(sweep, archive)
    fresh = tmp_path / "new" / "study"
    _job(fresh, "random_mask_paper_s0", completed=False)  # a job of this machine, not in the archive
    assert restore(archive, fresh) == ["rigsa_paper_s0"]
    assert completed_metrics(fresh / "rigsa_paper_s0") == {"status": "completed", "textual_mnist/acc": 0.8}
    (fresh / "rigsa_paper_s0" / "metrics.json").write_text(
        json.dumps({"status": "completed", "textual_mnist/acc": 1.0})
    )
    assert restore(archive, fresh) == []  # present: kept as it is
    assert json.loads((fresh / "rigsa_paper_s0" / "metrics.json").read_text())["textual_mnist/acc"] == 1.0
    assert restore(tmp_path / "missing", fresh) == []


def test_cli(tmp_path: Path, capsys) -> None:
    sweep, archive = tmp_path / "study", tmp_path / "jobs"
    _job(sweep, "qlora_r16_s1", completed=True)
    main(["save", str(sweep), str(archive)])
    assert "saved 1 completed job(s): qlora_r16_s1" in capsys.readouterr().out
    main(["restore", str(archive), str(tmp_path / "again")])
    assert "restored 1 job(s): qlora_r16_s1" in capsys.readouterr().out  # completed or at their ticket


def test_sweep_callback_restores_before_and_saves_after_each_job(tmp_path: Path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from rigsa_lightning.report.sweep_callback import ArchiveCallback

    archive, old, sweep = tmp_path / "jobs", tmp_path / "old", tmp_path / "sweep"
    _job(old, "rigsa_paper_s0", completed=True)
    save(old, archive)
    callback = ArchiveCallback(str(archive))
    callback.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "rigsa_paper_s0" / "metrics.json").is_file()  # skip_completed will skip it
    for name, completed in (("qlora_r16_s0", True), ("qlora_r16_s1", False)):
        job = _job(sweep, name, completed)
        cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "runtime": {"output_dir": str(job)}}})
        callback.on_job_end(cfg, job_return=None)
    assert (archive / "qlora_r16_s0" / "metrics.json").is_file()
    assert not (archive / "qlora_r16_s1").exists()
    # as Hydra gives them: the sweep folder relative to the launch folder, the job's absolute
    monkeypatch.chdir(tmp_path)
    job = _job(sweep, "rigsa_paper_s1", completed=True)
    cfg = OmegaConf.create(
        {"hydra": {"sweep": {"dir": "sweep"}, "runtime": {"output_dir": str(job.resolve())}}}
    )
    callback.on_job_end(cfg, job_return=None)
    assert (archive / "rigsa_paper_s1" / "metrics.json").is_file()
    ArchiveCallback(None).on_multirun_start(OmegaConf.create({}))  # disabled: nothing happens


def test_a_skipping_rerun_neither_resaves_nor_rewrites_an_archived_job(tmp_path: Path) -> None:
    """A rerun of a sweep skips a completed job, but Hydra has already rewritten its .hydra/*.yaml for the rerun's
    command: the archive keeps the job's own files (nothing re-saved) and puts them back into the job folder."""
    from omegaconf import OmegaConf

    from rigsa_lightning.report.sweep_callback import ArchiveCallback

    archive, sweep = tmp_path / "jobs", tmp_path / "sweep"
    job = _job(sweep, "rigsa_paper_s0", completed=True)
    save(sweep, archive)
    archived_log = (archive / "rigsa_paper_s0" / "train.log").read_text()
    # the rerun: Hydra writes the rerun's overrides, the skip appends a line to the log
    (job / ".hydra" / "overrides.yaml").write_text("- experiment=rigsa_paper\n- adapter.lr=0.5\n")
    (job / "train.log").write_text("log line\nskipped\n")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "runtime": {"output_dir": str(job)}}})
    ArchiveCallback(str(archive)).on_job_end(cfg, job_return=None)
    assert (
        archive / "rigsa_paper_s0" / ".hydra" / "overrides.yaml"
    ).read_text() == "- experiment=rigsa_paper_s0\n"
    assert (job / ".hydra" / "overrides.yaml").read_text() == "- experiment=rigsa_paper_s0\n"
    assert (archive / "rigsa_paper_s0" / "train.log").read_text() == archived_log
    # a job whose run changed (another metrics.json) is saved again
    (job / "metrics.json").write_text(json.dumps({"status": "completed", "textual_mnist/acc": 0.9}))
    ArchiveCallback(str(archive)).on_job_end(cfg, job_return=None)
    assert json.loads((archive / "rigsa_paper_s0" / "metrics.json").read_text())["textual_mnist/acc"] == 0.9
