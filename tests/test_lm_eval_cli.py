"""``python -m rigsa_lightning.data.lm_eval_task``: the task folder it writes is indexed by lm-eval's TaskManager and
scores a model exactly as the framework does, item by item; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rigsa_lightning.data import lm_eval_task
from rigsa_lightning.data.lm_eval_task import main

SIZES = ["train_size=64", "val_size=16", "test_size=24"]


def test_cli_task_folder_scores_like_the_framework_item_by_item(tiny_model_dir, tmp_path, capsys):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from rigsa_lightning.data import TextualMNISTDataModule
    from rigsa_lightning.data.preview import load_data_cfg
    from rigsa_lightning.models import load_model
    from rigsa_lightning.training.scoring import answer_log_probs, score_textual_mnist

    out, cache = tmp_path / "tasks", tmp_path / "cache"
    assert main(["--out", str(out), "--model", tiny_model_dir, "--cache-dir", str(cache), *SIZES]) == 0
    printed = capsys.readouterr().out
    assert f"pretrained={tiny_model_dir} --include_path {out} --tasks textual_mnist" in printed
    assert sorted(p.name for p in out.iterdir()) == ["textual_mnist.yaml", "textual_mnist_test.jsonl"]

    tm = TaskManager(include_path=str(out), include_defaults=False)
    assert "textual_mnist" in tm.all_tasks
    # the harness loads the model from the folder, as `lm_eval --model hf --model_args pretrained=<folder>` does
    res = lm_eval.simple_evaluate(
        model=HFLM(pretrained=tiny_model_dir, batch_size=8, dtype="float32", device="cpu"),
        tasks=["textual_mnist"],
        task_manager=tm,
        bootstrap_iters=0,
        log_samples=True,
    )
    samples = sorted(res["samples"]["textual_mnist"], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(24))

    # the framework on the same examples (the data options the command was given) and the same weights
    model, tok = load_model({"name_or_path": tiny_model_dir, "dtype": "float32"})
    dm = TextualMNISTDataModule(
        load_data_cfg("digits", {k: int(v) for k, v in (s.split("=") for s in SIZES)}), tok, cache_dir=cache
    )
    dm.setup()
    log_probs, digits = answer_log_probs(model, dm, "test")
    ours_correct = (log_probs.argmax(-1) == digits).float()
    # lm-eval moves a context's trailing whitespace into the continuation: each choice is scored as "\n<digit>",
    # i.e. the framework's digit log-prob plus the log-prob of the prompt's last token (the newline of the
    # assistant prefix), the same for the ten choices
    newline = []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for r, pos in enumerate(batch["answer_pos"].tolist()):
                last = int(batch["input_ids"][r, pos])
                assert tok.decode([last]) == "\n"
                newline.append(float(torch.log_softmax(logits[r, pos - 1].float(), -1)[last]))
    for s, lp, nl, digit, correct in zip(
        samples, log_probs, newline, digits.tolist(), ours_correct.tolist(), strict=True
    ):
        assert s["target"] == digit
        theirs = torch.tensor([float(r[0]) for r in s["filtered_resps"]])  # the ten choices' log-likelihoods
        assert torch.allclose(theirs, lp + nl, atol=1e-4, rtol=0), s["doc_id"]
        assert int(theirs.argmax()) == int(lp.argmax()), s["doc_id"]  # the same predicted digit
        assert s["acc"] == correct, s["doc_id"]
    # the items differ (the random tiny model favours one digit, but not with the same log-probs everywhere)
    assert float((log_probs - log_probs[0]).abs().max()) > 1e-3
    acc = res["results"]["textual_mnist"]["acc,none"]
    assert acc == pytest.approx(float(ours_correct.mean()))
    assert acc == pytest.approx(score_textual_mnist(model, dm, "test")["acc"])


def test_cli_writes_the_split_asked_for(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "val_task"
    args = [
        "--out",
        str(out),
        "--model",
        tiny_model_dir,
        "--cache-dir",
        str(tmp_path / "c"),
        "--split",
        "val",
    ]
    assert main([*args, "--task-name", "tm_val", *SIZES, "levels=4"]) == 0
    rows = [json.loads(x) for x in (out / "tm_val_val.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(0 <= r["label"] <= 9 for r in rows)
    # the data override reached the rendering: 4 grey levels, pixels 0-3 only
    assert set("".join(r["grid"] for r in rows).replace("\n", "")) == set("0123")
    assert all(r["grid"] in r["prompt"] for r in rows)
    assert "wrote" in capsys.readouterr().out
    from lm_eval.tasks import TaskManager

    assert "tm_val" in TaskManager(include_path=str(out), include_defaults=False).all_tasks


@pytest.mark.parametrize(
    "args, option",
    [
        ([], "--out"),
        (["--split", "foo"], "--split"),
        (["bogus=1"], "data.bogus"),
        (["test_size=-1"], "data.test_size"),
        (["test_size=abc"], "data.test_size"),
        (["novalue"], "novalue"),
        (["--data", "chat"], "--data"),
        (["--data", "nope"], "data"),
        (["--model", "/no/such/model"], "--model"),
        (["--task-name", "a/b"], "--task-name"),
        (["--bad-flag"], "arguments"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, option, tmp_path, capsys):
    out = tmp_path / "never"
    full = args if args == [] else ["--out", str(out), *args]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {option}: ") and " -> " in err
    assert not out.exists()


def test_cli_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["--out", str(target)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out: {target} is a file")


def test_module_entry_point_one_line_exit_2(tmp_path):
    """``python -m``: the exit status and a single stderr line (no import warning from the package)."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", lm_eval_task.__name__, "--out", str(tmp_path / "t"), "--split", "dev"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: --split: unknown split 'dev' -> use one of train, val, test\n"
