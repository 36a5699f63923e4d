"""End to end: `python -m rigsa_lightning.train` on the tiny model, and the one-line errors a user sees."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import only_run_dir, run_cli


def test_debug_fast_tiny_runs_end_to_end(tmp_path: Path) -> None:
    res = run_cli(["experiment=rigsa_50", "model=tiny", "debug=fast"], tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["method"] == "rigsa"
    assert 0.0 <= metrics["textual_mnist/acc"] <= 1.0
    assert 0.0 <= metrics["textual_mnist/gen_acc"] <= 1.0
    assert metrics["adapter/density"] == pytest.approx(0.5, abs=0.01)
    assert (run_dir / "adapter" / "adapter.safetensors").is_file()
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "forget/drift/kl/after" in metrics
    # Where the fit's time went: 2 epochs x 2 batches of steps, one prune, the rest adds up to time/train_s.
    assert metrics["time/steps_n"] == 4 and metrics["time/steps_s"] > 0
    assert metrics["time/prune_s"] == pytest.approx(metrics["prune/history"][0]["seconds"])
    parts = ("time/steps_s", "time/val_s", "time/curve_s", "time/prune_s", "time/fit_other_s")
    assert sum(metrics[k] for k in parts) == pytest.approx(metrics["time/train_s"], rel=1e-6)
    assert metrics["time/val_s"] > 0 and metrics["time/curve_s"] == 0.0  # eval.curve is off here
    # the mask search (epoch 1 and its prune) apart from the final retraining (epoch 2): together the four stages
    assert sum(metrics[f"time/{k}_s"] for k in ("search", "final")) == pytest.approx(
        sum(metrics[k] for k in parts[:4]), rel=1e-9
    )
    assert metrics["time/search_s"] > metrics["time/prune_s"] and metrics["time/final_s"] > 0
    # the end evaluation's parts: the task's test split, the drift probe (and each benchmark when they run)
    parts = {k: v for k, v in metrics.items() if k.startswith("time/eval_after/")}
    assert metrics["time/eval_after/textual_mnist_s"] > 0 and metrics["time/eval_after/drift_s"] > 0
    assert sum(parts.values()) <= metrics["time/eval_after_s"] + 1e-3
    assert re.search(r"^adapter\s+: .*adapter$", res.stdout, re.M), res.stdout[-2000:]
    assert re.search(r"^metrics\s+: .*metrics\.json$", res.stdout, re.M)
    # what a user sees: every line once (Lightning's own console handler removed), no adverts for other products,
    # third-party warnings and model-loading bars kept out of the console (warnings go to the run's log file)
    console = res.stdout + res.stderr
    assert console.count("Seed set to 42") == 1, console[-3000:]
    assert "💡" not in console and "litlogger" not in console and "litmodels" not in console, console[-3000:]
    assert "Loading weights" not in console and "deprecated" not in console.lower(), console[-3000:]
    assert "Seed set to 42" in (run_dir / "train.log").read_text()


def test_bad_sparsity_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    res = run_cli(["experiment=rigsa_50", "model=tiny", "debug=fast", "pruning.sparsity=1.2"], tmp_path)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: pruning.sparsity"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "outputs" / "runs").glob("*/*"))


def test_gpu_trainer_without_gpu_is_one_line(tmp_path: Path) -> None:
    res = run_cli(["experiment=rigsa_50", "model=tiny", "debug=fast", "trainer=gpu"], tmp_path)
    assert res.returncode == 2
    assert "error: trainer" in res.stderr and "trainer=cpu" in res.stderr
    assert "Traceback" not in res.stderr


def test_peak_rss_is_per_job_in_one_process() -> None:
    """A sequential multirun runs its jobs in one process: each job resets the kernel's peak-RSS counter at its start
    (train()), so a small job after a big one reports its own peak, not the big one's."""
    import mmap

    from rigsa_lightning.runtime import peak_rss_bytes, reset_peak_rss, rss_bytes

    if not reset_peak_rss():
        pytest.skip("the kernel does not reset the peak-RSS counter here (/proc/self/clear_refs)")
    size = 256 * 2**20
    # an anonymous mapping, not the allocator (which may keep freed pages resident): unmapped at close()
    big = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        big[offset] = 1  # touch every page
    high = peak_rss_bytes()
    assert high >= rss_bytes() > size
    big.close()
    assert rss_bytes() < high - 128 * 2**20
    assert reset_peak_rss()
    assert peak_rss_bytes() < high - 128 * 2**20


def test_peak_rss_reset_that_the_kernel_ignores_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that accepts the clear_refs write but keeps the old peak (some sandboxes) is told apart from one
    that resets it: the peak right after a reset must be the current RSS."""
    from rigsa_lightning import runtime

    fields = {"VmHWM": 3_000_000, "VmRSS": 1_000_000}  # kB: a 3 GB peak from an earlier job, 1 GB now
    monkeypatch.setattr(runtime, "_status_kb", lambda *keys: {k: fields[k] for k in keys})
    monkeypatch.setattr("builtins.open", _accepting_open(open))
    assert runtime.reset_peak_rss() is False
    fields["VmHWM"] = 1_000_000 + 1_000  # reset to the current RSS (+ pages touched meanwhile)
    assert runtime.reset_peak_rss() is True


def _accepting_open(real_open: Any) -> Any:
    """``open`` that swallows writes to /proc/self/clear_refs (a kernel that accepts them) and opens the rest."""
    import io

    def fake(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(path) == "/proc/self/clear_refs":
            return io.StringIO()
        return real_open(path, mode, *args, **kwargs)

    return fake


def test_compile_flag_trains_through_a_prune_with_a_compiled_forward(tmp_path: Path) -> None:
    """compile.enabled wraps the model's forward (dynamo tracing with the `eager` backend keeps the test fast): the
    run trains, prunes (the sparse storage swaps modules under the compiled forward), evaluates and exports."""
    args = [
        "experiment=rigsa_50",
        "model=tiny",
        "debug=fast",
        "compile.enabled=true",
        "compile.backend=eager",
    ]
    res = run_cli(args, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "torch.compile: model forward wrapped (backend eager)" in res.stdout + res.stderr
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["adapter/density"] == pytest.approx(0.5, abs=0.01)
    assert [h["storage"] for h in metrics["memory/adapter_state"]][-1] == "sparse"


def test_compile_forward_equals_eager(tiny_model) -> None:
    import copy

    import torch

    from rigsa_lightning.adapters.rigsa.inject import inject_rigsa
    from rigsa_lightning.models import compile_forward

    model = copy.deepcopy(tiny_model[0]).eval()
    inject_rigsa(model, {"alpha_init": 0.5})
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(input_ids=ids).logits
    assert not compile_forward(model, {"enabled": False})
    assert compile_forward(model, {"enabled": True, "backend": "eager", "dynamic": True})
    with torch.no_grad():
        compiled = model(input_ids=ids).logits
    torch.testing.assert_close(compiled, eager)
    assert not any("_orig_mod" in k for k in model.state_dict())  # checkpoint keys unchanged


def test_unknown_compile_backend_is_one_line(tmp_path: Path) -> None:
    res = run_cli(
        ["experiment=rigsa_50", "model=tiny", "debug=fast", "compile.enabled=true", "compile.backend=fast"],
        tmp_path,
    )
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: compile.backend"), res.stderr[-2000:]
    assert "inductor" in lines[-1] and "Traceback" not in res.stderr


def test_round_forgetting_evaluates_each_round_once_and_keeps_its_checkpoint_key() -> None:
    from types import SimpleNamespace

    from rigsa_lightning.training.callbacks import RoundForgetting

    stages: list[str] = []
    logged: list[dict] = []
    forgetting = SimpleNamespace(
        evaluate=lambda model, stage: stages.append(stage) or {"forget/x": 1, "s": "a"}
    )
    pruning = SimpleNamespace(round=0)
    cb = RoundForgetting(forgetting, pruning)
    trainer = SimpleNamespace(is_global_zero=True)
    module = SimpleNamespace(model=None, log_dict=logged.append)
    cb.on_train_epoch_end(trainer, module)  # no round done yet
    pruning.round = 1
    cb.on_train_epoch_end(trainer, module)
    cb.on_train_epoch_end(trainer, module)  # the same round: not evaluated again
    assert stages == ["round1"] and logged == [{"forget/x": 1.0}]
    resumed = RoundForgetting(forgetting, pruning)
    resumed.load_state_dict(cb.state_dict())
    assert resumed.done == 1
    # Checkpoints written while the class was local to a function keep resuming its state.
    assert cb.state_key == "_round_forgetting_cls.<locals>._RoundForgetting"


def test_time_breakdown_splits_the_mask_search_from_the_final_phase() -> None:
    """time/search_s is every step, validation, curve point and prune up to the last prune's step; time/final_s the
    rest; a resumed timer (state_dict round trip) splits the same way."""
    from rigsa_lightning.training.timing import StageTimer, time_breakdown

    timer = StageTimer()
    timer.steps_s, timer.steps_n, timer.val_s = 10.0, 4, 3.0
    timer.step_marks = [(1, 1.0), (2, 3.0), (3, 6.0), (4, 10.0)]
    timer.val_loops = [(2, 1.0), (4, 2.0)]
    resumed = StageTimer()
    resumed.load_state_dict(timer.state_dict())
    curve = [{"step": 2.0, "seconds": 0.5}, {"step": 4.0, "seconds": 0.25}]
    prunes = [{"global_step": 2, "seconds": 0.125}]
    for t in (timer, resumed):
        out = time_breakdown(t, 20.0, curve, prunes)
        assert (
            out["time/search_s"] == 3.0 + 1.0 + 0.5 + 0.125
        )  # steps 1-2, the validation and curve point at 2
        assert out["time/final_s"] == 7.0 + 2.0 + 0.25
        assert out["time/fit_other_s"] == 20.0 - 10.0 - 3.0 - 0.75 - 0.125
    assert "time/search_s" not in time_breakdown(timer, 20.0, curve, [])  # no pruning: no mask search


def test_a_resumed_timer_adds_the_fit_seconds_its_checkpoint_carried() -> None:
    """The checkpointed ``fit_s`` (the earlier processes' fit seconds) becomes ``time/train_before_s`` and is added to
    this process's fit; a checkpoint without it (written before it existed) leaves ``time/train_s`` as measured."""
    from rigsa_lightning.training.timing import StageTimer, time_breakdown

    timer = StageTimer()
    timer.steps_s, timer.steps_n, timer.val_s = 10.0, 4, 3.0
    state = timer.state_dict()
    assert state["fit_s"] == 0.0  # no fit started in this process yet: nothing carried
    resumed = StageTimer()
    resumed.load_state_dict({**state, "fit_s": 50.0})
    out = time_breakdown(resumed, 20.0)
    assert out["time/train_before_s"] == 50.0 and out["time/train_s"] == 70.0
    assert out["time/fit_other_s"] == 70.0 - 10.0 - 3.0
    assert resumed.state_dict()["fit_s"] == 50.0  # carried on to its own checkpoints
    old = StageTimer()
    old.load_state_dict({k: v for k, v in state.items() if k != "fit_s"})
    out = time_breakdown(old, 20.0)
    assert "time/train_before_s" not in out and "time/train_s" not in out and "fit_s" not in old.state_dict()
    assert out["time/fit_other_s"] == 20.0 - 10.0 - 3.0
