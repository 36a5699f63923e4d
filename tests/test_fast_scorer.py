"""The fast scorer (issue 13) against lm-eval's own HFLM on real PIQA / HellaSwag / GSM8k items: identical per-item
acc / acc_norm / exact match, log-likelihoods within 1e-4 (or 1e-6 relative), the gold-solution NLL equal to a
dense reference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rigsa_lightning.forgetting import benchmarks
from rigsa_lightning.forgetting.scorer import FastHFLM, length_batches
from rigsa_lightning.forgetting.timing import benchmark_seconds

PIQA_ITEMS = [0, 3, 17, 101, 400, 911, 1500, 1837]
HELLASWAG_ITEMS = [0, 5, 42, 999, 5000, 10041]
GSM8K_ITEMS = [0, 7, 1318]


def _task_manager(tmp_path: Path, data: Path, tasks: list[str]):
    for task in tasks:
        benchmarks.write_task_yaml(tmp_path, benchmarks.local_task_source(task, data, None))
    return benchmarks.build_task_manager(tmp_path)


def _run(model, tok, tm, tasks, samples, scorer, max_gen=24):
    return benchmarks.run_lm_eval(
        model,
        tok,
        tasks,
        tm,
        num_fewshot=None,
        limit=None,
        batch_size=4,
        seed=1234,
        max_gen_toks=max_gen,
        log_samples=True,
        choose_items=lambda task, n: samples[task],
        scorer=scorer,
        token_budget=256,  # small: several context batches and continuation chunks
        gold_nll=True,
    )


def _compare(fast: dict, ref: dict, tasks: list[str]) -> int:
    """Assert per-item equality; return how many log-likelihoods were compared."""
    compared = 0
    for task in tasks:
        a = sorted(fast["samples"][task], key=lambda s: (s["doc_id"], s.get("filter", "")))
        b = sorted(ref["samples"][task], key=lambda s: (s["doc_id"], s.get("filter", "")))
        assert [s["doc_id"] for s in a] == [s["doc_id"] for s in b]
        for x, y in zip(a, b, strict=True):
            for metric in ("acc", "acc_norm", "exact_match"):
                if metric in y:
                    assert x[metric] == y[metric], (task, x["doc_id"], metric)
            if task == "gsm8k":
                assert x["resps"] == y["resps"]  # HFLM's own batched generation in both
                continue
            for rx, ry in zip(x["resps"], y["resps"], strict=True):
                # fp32 summation order differs (cached context vs one pass): 1e-4, or 1e-6 relative for long
                # continuations (a 60-token HellaSwag ending sums to ~-185 nats)
                assert rx[0][0] == pytest.approx(ry[0][0], abs=1e-4, rel=1e-6)
                assert rx[0][1] == ry[0][1]
                compared += 1
        assert fast["results"][task] == ref["results"][task]
    return compared


def test_fast_scorer_equals_hflm_on_real_items_tiny(tiny_model, forgetting_data, tmp_path):
    model, tok = tiny_model
    tasks = ["piqa", "hellaswag", "gsm8k"]
    tm = _task_manager(tmp_path, forgetting_data, tasks)
    samples = {"piqa": PIQA_ITEMS, "hellaswag": HELLASWAG_ITEMS, "gsm8k": GSM8K_ITEMS}
    fast = _run(model, tok, tm, tasks, samples, "fast")
    ref = _run(model, tok, tm, tasks, samples, "lm_eval")
    assert _compare(fast, ref, tasks) == 2 * len(PIQA_ITEMS) + 4 * len(HELLASWAG_ITEMS)
    assert fast["item_indices"] == samples
    # the gold-solution NLL: the fast path equals HFLM's path (the tiny model's 512-token window truncates the
    # 5-shot prompts from the left: lm-eval's own rule, applied by both)
    assert set(fast["gold_nll"]["gsm8k"]) == set(GSM8K_ITEMS)  # keyed by the document's index in the split
    for doc_id, (nll, n_tok) in fast["gold_nll"]["gsm8k"].items():
        ref_nll, ref_tok = ref["gold_nll"]["gsm8k"][doc_id]
        assert n_tok == ref_tok and nll == pytest.approx(ref_nll, abs=1e-4)


def test_fast_scorer_equals_hflm_on_the_embedded_model(smollm2_dir, forgetting_data, tmp_path, monkeypatch):
    from rigsa_lightning.models import load_model

    combined = []  # GSM8k: generation + the solution's NLL from one prefill (not HFLM's generate)
    original = FastHFLM._generate_batch
    monkeypatch.setattr(
        FastHFLM, "_generate_batch", lambda self, plans: combined.append(len(plans)) or original(self, plans)
    )

    model, tok = load_model({"name_or_path": smollm2_dir, "dtype": "float32"})
    tasks = ["piqa", "hellaswag", "gsm8k"]
    tm = _task_manager(tmp_path, forgetting_data, tasks)
    samples = {"piqa": PIQA_ITEMS[:6], "hellaswag": HELLASWAG_ITEMS[:4], "gsm8k": GSM8K_ITEMS[:1]}
    fast = _run(model, tok, tm, tasks, samples, "fast", max_gen=4)
    ref = _run(model, tok, tm, tasks, samples, "lm_eval", max_gen=4)
    assert _compare(fast, ref, tasks) == 12 + 16
    assert combined == [1]
    # a real model is far from chance on these items: the comparison is not between two coin flips
    lls = [r[0][0] for s in fast["samples"]["piqa"] for r in s["resps"]]
    assert all(math.isfinite(v) and v < 0 for v in lls)
    # the gold-solution NLL equals a dense forward of prompt + " " + solution (no truncation at 8k tokens)
    sample = fast["samples"]["gsm8k"][0]
    context, solution = sample["arguments"][0][0], " " + sample["doc"]["answer"]
    ctx_ids = tok(context)["input_ids"]
    full_ids = tok(context + solution)["input_ids"]
    assert full_ids[: len(ctx_ids)] == ctx_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full_ids])).logits[0].float(), -1)
    dense = -sum(float(logp[t - 1, full_ids[t]]) for t in range(len(ctx_ids), len(full_ids)))
    nll, n_tok = fast["gold_nll"]["gsm8k"][GSM8K_ITEMS[0]]
    assert n_tok == len(full_ids) - len(ctx_ids)
    assert nll == pytest.approx(dense, abs=1e-3)
    assert nll == pytest.approx(ref["gold_nll"]["gsm8k"][GSM8K_ITEMS[0]][0], abs=1e-4)


def test_length_batches_bound_padding_and_budget():
    lengths = sorted([120, 118, 90, 60, 59, 58, 57, 10, 9, 1, 0, 0], reverse=True)
    batches = length_batches(lengths, token_budget=200)
    assert [k for b in batches for k in b] == list(range(len(lengths)))
    for b in batches:
        rows, width = len(b), max(max(lengths[k] for k in b), 1)
        real = sum(max(lengths[k], 1) for k in b)
        assert rows == 1 or (rows * width <= 200 and rows * width <= 1.1 * real)
    assert length_batches([0, 0, 0], 100) == [[0, 1, 2]]


def test_fast_scorer_falls_back_when_the_probe_disagrees(tiny_model, forgetting_data, tmp_path, caplog):
    """A model whose forward post-processes the logits is detected on the first request and scored by HFLM."""
    model, tok = tiny_model
    original = model.forward

    def scaled_forward(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled_forward
    lm = FastHFLM(pretrained=model, tokenizer=tok, batch_size=4)
    requests = [(("Q: a", " b c"), tok.encode("Q: a"), tok.encode(" b c"))]
    got = lm._loglikelihood_tokens(requests)
    assert lm._split is None
    with torch.no_grad():
        ids = torch.tensor([requests[0][1] + requests[0][2]])
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    n_ctx = len(requests[0][1])
    expected = sum(float(logp[t - 1, ids[0, t]]) for t in range(n_ctx, ids.shape[1]))
    assert got[0][0] == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------------------------------- in the train command
def _train_with_real_eval(tmp_path: Path, forgetting_data: Path, experiment: str):
    from tests.helpers import SMALL, only_run_dir, run_cli, tail

    args = [
        f"experiment={experiment}",
        *[a for a in SMALL if not a.startswith("eval=")],
        "eval=forgetting",
        "eval.limit={piqa: 12, hellaswag: 6, gsm8k: 2}",
        "eval.gsm8k_max_gen_toks=8",
        "eval.drift.enabled=false",
        "eval.bootstrap_iters=500",
    ]
    res = run_cli(args, tmp_path, env={"RIGSA_EVAL_DATA": str(forgetting_data)})
    assert res.returncode == 0, tail(res)
    return res, only_run_dir(tmp_path)


def test_train_reports_paired_forgetting_per_stage(tmp_path, forgetting_data):
    """eval.data_dir comes from RIGSA_EVAL_DATA; each stage prints its CIs and writes its item file at once."""
    import json

    from rigsa_lightning.forgetting import items

    res, run = _train_with_real_eval(tmp_path, forgetting_data, "rigsa_50")
    out = res.stdout + res.stderr
    assert "forgetting [before] piqa (n=12): acc " in out and "forgetting [after] hellaswag (n=6)" in out
    before = items.load_records(run / "forgetting_items" / "before.json.gz")
    after = items.load_records(run / "forgetting_items" / "after.json.gz")
    assert before["piqa"]["doc_id"] == after["piqa"]["doc_id"] == items.choose_items(1838, 12, 0)
    metrics = json.loads((run / "metrics.json").read_text())
    b, a = items.paired(before["piqa"], after["piqa"], "margin")
    assert metrics["forget/piqa/margin/delta"] == pytest.approx(float((a - b).mean()), abs=1e-9)
    for stem in ("forget/piqa/acc/delta", "forget/hellaswag/acc_norm/delta", "forget/gsm8k/gold_nll/delta"):
        assert metrics[f"{stem}_ci_lo"] <= metrics[stem] <= metrics[f"{stem}_ci_hi"], stem
    assert 0.0 <= metrics["forget/piqa/acc/delta_p"] <= 1.0
    doc = json.loads((run / "forgetting.json").read_text())
    assert doc["data_dir"] == str(forgetting_data.resolve()) and "items" not in doc["stages"]["after"]


def test_zero_shot_scores_the_model_once(tmp_path, forgetting_data):
    import json

    from rigsa_lightning.forgetting import items

    res, run = _train_with_real_eval(tmp_path, forgetting_data, "zero_shot")
    out = res.stdout + res.stderr
    assert "(stage before;" in out or "numbers from cache" in out
    assert "(stage after;" not in out  # `after` is the same model: not scored a second time
    assert "forgetting [after]: same as before (no training" in out
    doc = json.loads((run / "forgetting.json").read_text())
    assert doc["stages"]["after"]["same_as"] == "before"
    assert items.load_records(run / "forgetting_items" / "after.json.gz") == items.load_records(
        run / "forgetting_items" / "before.json.gz"
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["forget/piqa/acc/delta"] == 0.0 and metrics["forget/piqa/acc/delta_p"] == 1.0
    assert metrics["forget/gsm8k/gold_nll/delta_ci_lo"] == metrics["forget/gsm8k/gold_nll/delta_ci_hi"] == 0.0


def test_gold_nll_without_generation_uses_the_same_prompts(tiny_model, forgetting_data, tmp_path):
    """eval.generate=false (the curve): the reference NLL from lm-eval's own prompts, equal to the generating path."""
    model, tok = tiny_model
    tm = _task_manager(tmp_path, forgetting_data, ["gsm8k", "piqa"])
    samples = {"gsm8k": GSM8K_ITEMS, "piqa": PIQA_ITEMS[:3]}
    full = _run(model, tok, tm, ["gsm8k", "piqa"], samples, "fast")
    nll_only = benchmarks.run_lm_eval(
        model,
        tok,
        ["gsm8k", "piqa"],
        tm,
        num_fewshot=None,
        limit=None,
        batch_size=4,
        seed=1234,
        max_gen_toks=24,
        choose_items=lambda task, n: samples[task],
        scorer="fast",
        gold_nll=True,
        generate=False,
        log_samples=True,
    )
    assert "gsm8k" not in nll_only["results"] and "gsm8k" not in nll_only["samples"]
    # where the time went, per request type and per benchmark (issue 27's end-evaluation split)
    for run, generated in ((full, True), (nll_only, False)):
        timing = run["timing"]
        assert timing["tasks"] == {"generate_until": ["gsm8k"], "loglikelihood": ["piqa"]}
        seconds = timing["seconds"]
        assert seconds["loglikelihood"] > 0 and seconds["gold_nll"] > 0
        assert (seconds["generate_until"] > 0) is generated
        per_task = benchmark_seconds(timing)
        assert per_task == {
            "gsm8k": round(seconds["generate_until"] + seconds["gold_nll"], 3),
            "piqa": round(seconds["loglikelihood"], 3),
        }
    assert set(nll_only["gold_nll"]["gsm8k"]) == set(GSM8K_ITEMS)
    for doc_id, (nll, n_tok) in full["gold_nll"]["gsm8k"].items():
        assert nll_only["gold_nll"]["gsm8k"][doc_id][1] == n_tok
        assert nll_only["gold_nll"]["gsm8k"][doc_id][0] == pytest.approx(nll, abs=1e-4)
    assert nll_only["results"]["piqa"] == full["results"]["piqa"]


def test_forgetting_curve_along_training(tmp_path, forgetting_data):
    import json

    from tests.helpers import SMALL, only_run_dir, run_cli, tail

    args = [
        "experiment=rigsa_50",
        *[a for a in SMALL if not a.startswith("eval=")],
        "eval=forgetting",
        "eval.tasks=[piqa,gsm8k]",
        "eval.limit={piqa: 6, gsm8k: 2}",
        "eval.gsm8k_max_gen_toks=4",
        "eval.drift.enabled=false",
        "eval.bootstrap_iters=200",
        "eval.curve.enabled=true",
        "eval.curve.limit={piqa: 5, gsm8k: 2}",
    ]
    res = run_cli(args, tmp_path, env={"RIGSA_EVAL_DATA": str(forgetting_data)})
    assert res.returncode == 0, tail(res)
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    curve = metrics["forget_curve"]
    assert [p["epoch"] for p in curve] == [
        0.0,
        1.0,
    ]  # one point per validation (2 epochs), not the sanity check
    for point in curve:
        assert 0.0 <= point["val_acc"] <= 1.0
        for name in ("piqa/margin", "gsm8k/gold_nll", "piqa/acc"):
            assert point[f"{name}_ci_lo"] <= point[name] <= point[f"{name}_ci_hi"], (name, point)
    assert "forgetting curve @ step" in res.stdout + res.stderr
    # its time is counted apart from the validation loops (time/curve_s: the points' own seconds)
    assert all(p["seconds"] > 0 for p in curve)
    assert metrics["time/curve_s"] == pytest.approx(sum(p["seconds"] for p in curve))
    # each point's per-item records are kept: paired with the base's, their mean change is the point's value
    from rigsa_lightning.forgetting import items

    run = only_run_dir(tmp_path)
    before = items.load_records(items.curve_items_path(run, None))
    for point in curve:
        after = items.load_records(items.curve_items_path(run, int(point["step"])))
        for task, name, n in (("piqa", "margin", 5), ("gsm8k", "gold_nll", 2)):
            b, a = items.paired(before[task], after[task], name)
            assert len(b) == n and float((a - b).mean()) == pytest.approx(point[f"{task}/{name}"])
    # a bad curve option is named as such, before anything loads
    (tmp_path / "bad").mkdir()
    bad = run_cli([*args, "eval.curve.limit={piqa: 0}"], tmp_path / "bad")
    assert bad.returncode == 2 and "error: eval.curve.limit.piqa" in bad.stderr
