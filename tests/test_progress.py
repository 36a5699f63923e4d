"""Progress of long stages (rigsa_lightning/progress.py): the log lines off a terminal (exact counts, rates and time
left on a fake clock), the tqdm bar on one, the mode switch, and the stages that report (the fast scorer's
log-likelihoods and GSM8k generation, the Textual MNIST scoring, an IMP round)."""

from __future__ import annotations

import copy
import io
import logging
import re

import pytest
import torch

from rigsa_lightning import progress
from rigsa_lightning.progress import Progress, format_duration, progress_mode, track

LOGGER = "rigsa_lightning.progress"


class FakeClock:
    """A clock that reads ``now`` (set by the test) or, with ``step``, advances by ``step`` at every reading."""

    def __init__(self, now: float = 0.0, step: float = 0.0) -> None:
        self.now, self.step = now, step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


@pytest.fixture()
def log_mode(monkeypatch):
    monkeypatch.setenv(progress.ENV_VAR, "log")


def test_log_lines_every_step_and_interval_with_counts_rate_and_time_left(caplog, log_mode):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    bar = Progress("forgetting: piqa before", total=100, clock=clock)
    clock.now = 1.0
    bar.update(10)  # before DELAY_S (5 s): silent
    assert _lines(caplog) == []
    clock.now = 6.0
    bar.update(10)  # 20 items in 6 s: 3.33/s, 80 left -> 24 s
    clock.now = 7.0
    bar.update(5)  # 25 %: still the 20 % step, 1 s after the last line: silent
    clock.now = 8.0
    bar.update(5)  # 30 %: a new 10 % step
    clock.now = 39.0
    bar.update(1)  # same step, but 31 s (> INTERVAL_S) since the last line
    clock.now = 50.0
    bar.update(69)  # complete: the closing line says it
    bar.close()
    assert _lines(caplog) == [
        "forgetting: piqa before 20/100 (20 %), 3.33 it/s, ~24 s left",
        "forgetting: piqa before 30/100 (30 %), 3.75 it/s, ~19 s left",
        "forgetting: piqa before 31/100 (31 %), 0.79 it/s, ~87 s left",
        "forgetting: piqa before done: 100/100 in 50 s (2.00 it/s)",
    ]


def test_quick_stage_logs_nothing_and_long_times_are_readable(caplog, log_mode):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    with Progress("quick", total=3, clock=clock) as bar:
        for t in (1.0, 2.0, 4.9):
            clock.now = t
            bar.update()
    assert _lines(caplog) == []
    clock = FakeClock()
    with Progress("slow", total=1000, unit="req", clock=clock) as bar:
        clock.now = 100.0
        bar.update(10)  # 0.1 req/s: 990 left -> 9,900 s = 2.75 h
    assert _lines(caplog) == [
        "slow 10/1000 (1 %), 0.10 req/s, ~2.8 h left",
        "slow stopped: 10/1000 in 100 s (0.10 req/s)",
    ]
    assert [format_duration(s) for s in (75, 119.4, 750, 7199, 7200)] == [
        "75 s",
        "119 s",
        "12 min",
        "120 min",
        "2.0 h",
    ]


def test_unknown_total_and_track_weights(caplog, log_mode):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock(step=2.0)  # every reading is 2 s later: 0 (start), 2, 4, 6, ...
    batches = [[1, 2], [3], [4, 5, 6], [7]]
    seen = list(track(iter(batches), "batches", weight=len, clock=clock))
    assert seen == batches
    # readings: start 0; updates at 2 and 4 (< 5 s: silent), at 6 (6 items: the first line), at 8 (no total: only
    # INTERVAL_S brings the next line); close at 10
    assert _lines(caplog) == ["batches 6 it, 1.00 it/s", "batches done: 7 it in 10 s (0.70 it/s)"]


def test_mode_switch(monkeypatch, caplog):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    assert progress_mode(Tty()) == "bar"
    assert progress_mode(io.StringIO()) == "log"
    monkeypatch.setenv(progress.ENV_VAR, "off")
    assert progress_mode(Tty()) == "off"
    monkeypatch.setenv(progress.ENV_VAR, "LOG")
    assert progress_mode(Tty()) == "log"
    monkeypatch.setenv(progress.ENV_VAR, "loud")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert progress_mode(io.StringIO()) == "log"
    assert "RIGSA_PROGRESS='loud' is not one of auto, bar, log, off" in caplog.text
    monkeypatch.setenv(progress.ENV_VAR, "off")
    caplog.clear()
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock(step=100.0)
    with Progress("silent", total=2, clock=clock) as bar:
        bar.update(1)
    assert _lines(caplog) == [] and bar.mode == "off"
    with pytest.raises(ValueError, match="bar, log or off"):
        Progress("x", mode="auto")


def test_bar_mode_shows_tqdm_with_rate_and_time_left(monkeypatch, capsys):
    import time

    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    with Progress("scoring", total=4, unit="req", mode="bar") as bar:
        for _ in range(4):
            time.sleep(0.12)  # past tqdm's minimum refresh interval: every update is drawn
            bar.update(1)
    err = capsys.readouterr().err
    assert "scoring" in err and "3/4" in err
    assert re.search(r"3/4 \[00:00<00:0\d, +\d+\.\d+req/s\]", err)  # items/s and the time left


# ------------------------------------------------------------------------------------------------ stages
@pytest.fixture()
def every_update_logged(monkeypatch, log_mode):
    """Log mode with no initial delay and a clock that advances 1 s per reading."""
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.setattr(progress, "_clock", FakeClock(step=1.0))


def _progress_of(caplog, prefix: str) -> list[tuple[int, int]]:
    """``(done, total)`` of the running lines starting with ``prefix``."""
    pattern = re.compile(re.escape(prefix) + r" (\d+)/(\d+) \(\d+ %\), [\d.]+ \w+/s, ~\d+ s left$")
    return [(int(m[1]), int(m[2])) for line in _lines(caplog) if (m := pattern.match(line))]


def test_fast_scorer_reports_loglikelihoods_and_generation(
    tiny_model, forgetting_data, tmp_path, caplog, every_update_logged
):
    from rigsa_lightning.forgetting import benchmarks

    caplog.set_level(logging.INFO, logger=LOGGER)
    model, tok = tiny_model
    for task in ("piqa", "gsm8k"):
        benchmarks.write_task_yaml(tmp_path, benchmarks.local_task_source(task, forgetting_data, None))
    samples = {"piqa": [0, 1, 2, 3, 4], "gsm8k": [0, 1]}
    result = benchmarks.run_lm_eval(
        model,
        tok,
        ["piqa", "gsm8k"],
        benchmarks.build_task_manager(tmp_path),
        num_fewshot={"gsm8k": 0},
        limit=None,
        batch_size=1,
        seed=1234,
        max_gen_toks=4,
        choose_items=lambda task, n: samples[task],
        scorer="fast",
        token_budget=64,  # several batches: several progress updates
        gold_nll=True,
        progress_label="forgetting before",
    )
    assert result["results"]["piqa"]["acc,none"] in {k / 5 for k in range(6)}
    lines = _lines(caplog)
    # 5 PIQA items x 2 choices = 10 requests, counted up to the closing line
    running = _progress_of(caplog, "forgetting before: piqa log-likelihoods")
    assert running and running[0][0] >= 1 and all(t == 10 for _, t in running)
    assert [d for d, _ in running] == sorted(d for d, _ in running) and running[-1][0] < 10
    assert re.search(r"^forgetting before: piqa log-likelihoods done: 10/10 in \d+ s", "\n".join(lines), re.M)
    # GSM8k: one prefill of prompt + solution per document, one batch per document (batch_size=1)
    assert _progress_of(caplog, "forgetting before: gsm8k generation") == [(1, 2)]
    assert any(line.startswith("forgetting before: gsm8k generation done: 2/2 in ") for line in lines)


def test_textual_mnist_scoring_and_imp_round_report(tiny_model, caplog, every_update_logged):
    from rigsa_lightning.adapters.rigsa.inject import inject_rigsa
    from rigsa_lightning.data import TextualMNISTDataModule
    from rigsa_lightning.pruning import PruningSchedule, compute_prune_masks
    from rigsa_lightning.training.scoring import score_textual_mnist

    caplog.set_level(logging.INFO, logger=LOGGER)
    model, tok = tiny_model
    cfg = {
        "source": "digits",
        "path": None,
        "resolution": None,
        "levels": 10,
        "separator": "",
        "train_size": 8,
        "val_size": 8,
        "test_size": 20,
        "seed": 0,
        "batch_size": 4,
        "eval_batch_size": 8,
        "num_workers": 0,
        "system_prompt": "",
        "prompt": "Which digit (0-9) is drawn above? Answer with the digit only.",
        "supervise_eos": True,
        "cache": False,
        "length_bucketing": False,
    }
    dm = TextualMNISTDataModule(cfg, tok)
    dm.setup()
    result = score_textual_mnist(model, dm, "test")
    assert result["n"] == 20.0
    # batches of 8, 8, 4: a line at the first batch and at each further 10 % step, then the closing line
    assert _progress_of(caplog, "Textual MNIST test: scoring") == [(8, 20), (16, 20)]
    assert any(line.startswith("Textual MNIST test: scoring done: 20/20 in ") for line in _lines(caplog))

    caplog.clear()
    adapters = inject_rigsa(
        copy.deepcopy(model),
        {"seed": 1234, "alpha_init": 1e-6, "lr": 1e-2, "alpha_lr": 1e-2, "weight_decay": 1.0},
    )
    with torch.no_grad():
        for m in adapters.values():
            m.delta.add_(0.05 * torch.randn_like(m.delta))
    sched = PruningSchedule.from_cfg(
        {"enabled": True, "rounds": 1, "sparsity": 0.5, "epochs_per_round": 1, "final_epochs": 1}
    )
    compute_prune_masks(adapters, sched, 1)
    total = 3 * len(adapters)
    running = _progress_of(caplog, "IMP round 1: matrix passes")
    assert running[0] == (1, total) and all(t == total for _, t in running)
    assert f"IMP round 1: matrix passes done: {total}/{total}" in caplog.text


def test_training_steps_report_progress_in_the_log(caplog) -> None:
    """Without a terminal, the optimizer steps get periodic lines and a closing one (fake clock: 10 s per step)."""
    import logging
    from types import SimpleNamespace

    from rigsa_lightning.training.callbacks import TrainingProgressLog

    now = [0.0]
    cb = TrainingProgressLog(clock=lambda: now[0])
    trainer = SimpleNamespace(max_steps=-1, estimated_stepping_batches=20, global_step=0)
    with caplog.at_level(logging.INFO, logger="rigsa_lightning.train"):
        cb.on_train_start(trainer, None)
        for step in range(1, 21):
            now[0] += 10.0
            trainer.global_step = step
            cb.on_train_batch_end(trainer, None, None, None, step - 1)
        cb.on_train_end(trainer, None)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training steps")]
    assert lines[0] == "training steps 1/20 (5 %), 0.10 step/s, ~3 min left"
    assert "training steps 2/20 (10 %)" in lines[1]
    assert lines[-1].startswith("training steps done: 20/20 in 3 min")
    # a resumed run counts the steps left from its checkpoint
    cb2 = TrainingProgressLog(clock=lambda: now[0])
    trainer.global_step = 15
    cb2.on_train_start(trainer, None)
    assert cb2._progress.total == 5


def test_drift_probe_reports_generation_and_scoring(tiny_model, tmp_path, caplog, every_update_logged):
    """The drift probe's base answers (generation, batches of 4) and its scoring of a model, 6 prompts each."""
    from rigsa_lightning.forgetting.drift import DriftProbe

    caplog.set_level(logging.INFO, logger=LOGGER)
    model, tok = tiny_model
    probe = DriftProbe(
        tok, {"num_prompts": 6, "max_new_tokens": 4, "batch_size": 4, "top_k": 16}, "t", tmp_path
    )
    probe.reference(model)
    probe.measure(model)
    assert _progress_of(caplog, "drift probe: base answers") == [(4, 6)]
    assert [d for d, _ in _progress_of(caplog, "drift probe")] == [1, 2, 3, 4, 5]
    lines = _lines(caplog)
    assert any(line.startswith("drift probe: base answers done: 6/6 in ") for line in lines)
    assert any(line.startswith("drift probe done: 6/6 in ") for line in lines)
