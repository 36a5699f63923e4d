"""Forgetting (issue 9): lm-eval in process vs the lm_eval CLI, the `before` cache, offline skips and errors,
the drift proxy, and state restoration. Uses the tiny random Llama and the made-up benchmark files in
tests/data/benchmarks (real field layouts, invented items)."""

from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.forgetting import ForgettingEvaluator, benchmarks, items
from rigsa_lightning.forgetting.drift import DriftProbe
from rigsa_lightning.forgetting.prompts import GENERAL_PROMPTS

BENCH = Path(__file__).parent / "data" / "benchmarks"
CONF_EVAL = Path(__file__).resolve().parents[1] / "rigsa_lightning" / "conf" / "eval"
TASKS = ["piqa", "hellaswag", "gsm8k"]
LIMIT = 3
MAX_GEN = 16


def make_cfg(**overrides) -> dict:
    """A small eval config over the local test files."""
    cfg = {
        "enabled": True,
        "tasks": list(TASKS),
        "num_fewshot": {"piqa": 0, "hellaswag": 0, "gsm8k": 5},
        "limit": LIMIT,
        "batch_size": 4,
        "seed": 1234,
        "data_dir": str(BENCH),
        "require_benchmarks": False,
        "after_each_round": False,
        "cache_before": True,
        "gsm8k_max_gen_toks": MAX_GEN,
        "drift": {"enabled": True, "num_prompts": 4, "max_new_tokens": 8, "batch_size": 4, "top_k": 64},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def perturb(model: torch.nn.Module, steps: int = 3) -> None:
    """A few SGD steps on digit strings (a stand-in for fine-tuning on Textual MNIST)."""
    ids = torch.tensor([[15, 16, 17, 18, 19, 20, 21, 22, 23, 24] * 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------------------------------- lm-eval


def _cli_results(
    model_dir: str, include_dir: Path, out: Path, samples: dict[str, list[int]] | None = None
) -> tuple[dict, dict[str, list[dict]]]:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1"
    )
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_dir},dtype=float32",
        "--tasks",
        ",".join(TASKS),
        "--include_path",
        str(include_dir),
        *(["--samples", json.dumps(samples)] if samples else ["--limit", str(LIMIT)]),
        "--batch_size",
        "4",
        "--seed",
        "1234,1234,1234,1234",
        "--gen_kwargs",
        f"max_gen_toks={MAX_GEN}",
        "--log_samples",
        "--output_path",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    samples = {}
    for task in TASKS:
        (path,) = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
        samples[task] = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return json.loads(Path(results_file).read_text()), samples


def test_in_process_equals_lm_eval_cli(tiny_model, tiny_model_dir, tmp_path):
    model, tok = tiny_model
    ev = ForgettingEvaluator(
        make_cfg(drift={"enabled": False}), tok, "tiny", tmp_path / "cache", tmp_path / "run"
    )
    assert ev.preflight() == {}
    ours = ev.evaluate(model, "after")
    lm_eval_keys = {
        "forget/piqa/acc/after",
        "forget/piqa/acc_norm/after",
        "forget/hellaswag/acc/after",
        "forget/hellaswag/acc_norm/after",
        "forget/gsm8k/exact_match_strict-match/after",
        "forget/gsm8k/exact_match_flexible-extract/after",
    }
    assert set(ours) == lm_eval_keys | {
        "forget/piqa/margin/after",
        "forget/hellaswag/margin/after",
        "forget/gsm8k/gold_nll/after",
        "forget/piqa/n_items",
        "forget/hellaswag/n_items",
        "forget/gsm8k/n_items",
    }
    # eval.limit picks a seeded subset of each split (piqa and hellaswag have 4 items here, gsm8k 3)
    chosen = {task: ev.stages["after"]["items"][task]["doc_id"] for task in TASKS}
    assert chosen["gsm8k"] == [0, 1, 2] and len(chosen["piqa"]) == len(chosen["hellaswag"]) == LIMIT
    assert chosen == {
        task: items.choose_items(n, LIMIT, 0) for task, n in (("piqa", 4), ("hellaswag", 4), ("gsm8k", 3))
    }
    # The generated task YAMLs include lm-eval's own configs and point at absolute local paths.
    yaml_text = (ev.tasks_dir / "hellaswag.yaml").read_text()
    assert "include: " + str(benchmarks.builtin_task_yaml("hellaswag")) in yaml_text
    assert str(BENCH.resolve() / "hellaswag" / "validation.jsonl") in yaml_text

    cli, cli_samples = _cli_results(tiny_model_dir, ev.tasks_dir, tmp_path / "cli", samples=chosen)
    cli_metrics = {
        f"forget/{task}/{name}/after": value
        for task, m in benchmarks.extract_metrics(cli).items()
        for name, value in m.items()
    }
    assert {k: v for k, v in ours.items() if k in lm_eval_keys} == pytest.approx(cli_metrics, abs=1e-9)
    assert cli["n-shot"] == {"piqa": 0, "hellaswag": 0, "gsm8k": 5}
    record = ev.stages["after"]["lm_eval"]
    spent = ev.stage_seconds("after")  # multiple-choice tasks share lm-eval's loglikelihood requests
    assert {"gsm8k", "hellaswag+piqa"} <= set(spent) and min(spent.values()) > 0
    assert record["n-shot"] == cli["n-shot"]
    assert record["n-samples"] == cli["n-samples"]
    assert record["versions"] == cli["versions"]

    # Per-document numbers too: log-likelihoods of every choice and gsm8k's generated text.
    raw = benchmarks.run_lm_eval(
        model,
        tok,
        TASKS,
        benchmarks.build_task_manager(ev.tasks_dir),
        num_fewshot={"piqa": 0, "hellaswag": 0, "gsm8k": 5},
        limit=None,
        batch_size=4,
        seed=1234,
        max_gen_toks=MAX_GEN,
        log_samples=True,
        choose_items=lambda task, n: chosen[task],
    )
    for task in TASKS:
        # one record per (document, filter) in process (gsm8k has two filters), one per document in the CLI's file
        mine = {s["doc_id"]: s for s in json.loads(json.dumps(raw["samples"][task], default=str))}
        theirs = {s["doc_id"]: s for s in cli_samples[task]}
        assert sorted(mine) == sorted(theirs) == chosen[task]
        for doc_id, a in mine.items():
            b = theirs[doc_id]
            if task == "gsm8k":
                assert a["resps"] == b["resps"]
            else:
                ll_a = [float(r[0][0]) for r in a["resps"]]
                ll_b = [float(r[0][0]) for r in b["resps"]]
                assert ll_a == pytest.approx(ll_b, abs=1e-4)


def test_local_files_work_with_builtin_process_docs(tmp_path):
    include = tmp_path / "tasks"
    for task in TASKS:
        benchmarks.write_task_yaml(
            include, benchmarks.local_task_source(task, BENCH, {"gsm8k": 5}.get(task, 0))
        )
    loaded = benchmarks.build_task_manager(include).load(TASKS)["tasks"]
    hs = list(loaded["hellaswag"].eval_docs)
    raw = [json.loads(line) for line in (BENCH / "hellaswag" / "validation.jsonl").read_text().splitlines()]
    assert [d["gold"] for d in hs] == [int(r["label"]) for r in raw]
    assert all(isinstance(r["label"], str) and len(r["endings"]) == 4 for r in raw)
    assert (
        hs[2]["query"].startswith("Home and Garden: ") and "[" not in hs[2]["query"]
    )  # wikihow markup stripped
    piqa = loaded["piqa"]
    assert (
        piqa.doc_to_text(piqa.eval_docs[0]) == "Question: Keep a cut apple slice from turning brown.\nAnswer:"
    )
    gsm = loaded["gsm8k"]
    assert len(gsm.eval_docs) == 3 and len(list(gsm.fewshot_docs())) == 6


def test_before_is_cached_and_state_restored(tiny_model, tmp_path, monkeypatch):
    model, tok = tiny_model
    cache = tmp_path / "cache"
    model.train()
    model.model.layers[1].mlp.eval()  # a deliberately mixed state must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)

    ev1 = ForgettingEvaluator(make_cfg(), tok, "tiny-key", cache, tmp_path / "run1")
    first = ev1.evaluate(model, "before")
    assert ev1.lm_eval_calls == 1 and not ev1.stages["before"]["from_cache"]
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert torch.equal(torch.rand(3), expected_next)  # lm-eval's reseeding does not leak into training
    assert len(list((cache / "forgetting_before").glob("*.json"))) == 1
    assert first["forget/drift/kl/before"] == pytest.approx(0.0, abs=1e-6)

    def no_lm_eval(*args, **kwargs):
        raise AssertionError("lm-eval must not run: the `before` numbers are cached")

    monkeypatch.setattr(benchmarks, "run_lm_eval", no_lm_eval)
    ev2 = ForgettingEvaluator(make_cfg(), tok, "tiny-key", cache, tmp_path / "run2")
    second = ev2.evaluate(model, "before")
    assert ev2.lm_eval_calls == 0 and ev2.stages["before"]["from_cache"]
    assert second == first
    # A different limit, seed or model is a different cache entry.
    key = ev2._cache_key_fields(TASKS)
    assert benchmarks.before_cache_path(cache, {**key, "limit": 4}) != benchmarks.before_cache_path(
        cache, key
    )
    assert benchmarks.before_cache_path(cache, {**key, "model_key": "x"}) != benchmarks.before_cache_path(
        cache, key
    )

    model.eval()
    ev2.evaluate(model, "before")
    assert not any(m.training for m in model.modules())


def test_summary_delta_and_forgetting_json(tiny_model, tmp_path):
    model, tok = tiny_model
    run = tmp_path / "run"
    ev = ForgettingEvaluator(make_cfg(tasks=["piqa", "hellaswag"]), tok, "tiny", tmp_path / "cache", run)
    before = ev.evaluate(model, "before")
    perturb(model)
    after = ev.evaluate(model, "after")
    assert model.training
    summary = ev.summary()
    assert summary["skipped"] == {}
    for key, value in before.items():
        if not key.endswith("/before"):
            continue
        stem = key[: -len("/before")]
        assert summary[f"{stem}/delta"] == pytest.approx(after[f"{stem}/after"] - value)
    assert summary["forget/drift/kl/after"] > summary["forget/drift/kl/before"]
    doc = json.loads((run / "forgetting.json").read_text())
    lm = doc["stages"]["after"]["lm_eval"]
    assert lm["n-shot"] == {"piqa": 0, "hellaswag": 0}
    assert lm["n-samples"]["piqa"] == {"original": 4, "effective": LIMIT}
    assert set(lm["versions"]) == {"piqa", "hellaswag"} and lm["lm_eval_version"]
    assert doc["lm_eval_version"] == benchmarks.lm_eval_version()
    assert (
        doc["data"]["piqa"]["source"] == "local"
        and doc["limit"] == LIMIT
        and "seeded fixed subset" in doc["limit_note"]
    )
    assert doc["drift"]["answers"] and "proxy" in doc["drift"]["note"]


def test_evaluator_scores_one_model_without_training(tiny_model, tmp_path):
    """What the evaluate command does with an untouched model: preflight, one stage, summary, forgetting.json."""
    model, tok = tiny_model
    evaluator = ForgettingEvaluator(
        make_cfg(tasks=["piqa"]), tok, "tiny", tmp_path / "cache", tmp_path / "out"
    )
    evaluator.preflight()
    evaluator.evaluate(model, "before")
    out = evaluator.summary()
    evaluator.write(str(tmp_path / "out"))
    assert set(out) == {
        "forget/piqa/acc/before",
        "forget/piqa/acc_norm/before",
        "forget/piqa/margin/before",
        "forget/piqa/n_items",
        "forget/drift/kl/before",
        "forget/drift/nll/before",
        "skipped",
    }
    assert (tmp_path / "out" / "forgetting.json").is_file()


# ---------------------------------------------------------------------------------------------- missing data


@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch):
    """No benchmark in the HF datasets cache, whatever this machine holds."""
    from datasets import config as ds_config

    monkeypatch.setattr(ds_config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def test_require_benchmarks_offline_fails_fast(tiny_model, tmp_path, empty_hf_cache):
    _, tok = tiny_model
    started = time.time()
    ev = ForgettingEvaluator(
        make_cfg(data_dir=None, require_benchmarks=True), tok, "tiny", tmp_path, tmp_path / "r"
    )
    with pytest.raises(ConfigError) as err:
        ev.preflight()
    assert time.time() - started < 5
    assert err.value.option == "eval.data_dir"
    assert "piqa, hellaswag, gsm8k" in str(err.value)
    assert "\n" not in err.value.one_line()


def test_offline_skips_with_one_line_notice(tiny_model, tmp_path, empty_hf_cache, caplog, monkeypatch):
    model, tok = tiny_model
    monkeypatch.setattr(benchmarks, "run_lm_eval", lambda *a, **k: pytest.fail("nothing to evaluate"))
    ev = ForgettingEvaluator(make_cfg(data_dir=None), tok, "tiny", tmp_path / "cache", tmp_path / "run")
    with caplog.at_level("WARNING"):
        skipped = ev.preflight()
    assert list(skipped) == TASKS
    for task, notice in skipped.items():
        assert "\n" not in notice and f"skipping {task}" in notice
        assert "hub" in notice and "eval.data_dir=" in notice
        assert notice in caplog.text
    metrics = ev.evaluate(model, "before")  # the drift proxy still runs
    assert set(metrics) == {"forget/drift/kl/before", "forget/drift/nll/before"}
    summary = ev.summary()
    assert list(summary["skipped"]) == TASKS
    assert json.loads((tmp_path / "run" / "forgetting.json").read_text())["skipped"] == skipped


def test_missing_data_dir_file_names_it(tiny_model, tmp_path):
    _, tok = tiny_model
    data = tmp_path / "bench"
    shutil.copytree(BENCH, data)
    (data / "gsm8k" / "train.jsonl").unlink()
    ev = ForgettingEvaluator(make_cfg(data_dir=str(data)), tok, "tiny", tmp_path, None)
    with pytest.raises(ConfigError) as err:
        ev.preflight()
    assert err.value.option == "eval.data_dir"
    assert str(data / "gsm8k" / "train.jsonl") in str(err.value)
    # 0-shot gsm8k does not need the train split.
    shots = {"piqa": 0, "hellaswag": 0, "gsm8k": 0}
    assert (
        ForgettingEvaluator(
            make_cfg(data_dir=str(data), num_fewshot=shots), tok, "t", tmp_path, None
        ).preflight()
        == {}
    )
    (data / "piqa" / "validation.jsonl").unlink()
    with pytest.raises(ConfigError, match="piqa/validation.jsonl"):
        ForgettingEvaluator(make_cfg(data_dir=str(data)), tok, "tiny", tmp_path, None).preflight()


def test_hub_style_parquet_layout(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = [json.loads(line) for line in (BENCH / "gsm8k" / "test.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (BENCH / "gsm8k" / "train.jsonl").read_text().splitlines()]
    (tmp_path / "gsm8k" / "main").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "gsm8k" / "main" / "test-00000-of-00001.parquet")
    pd.DataFrame(train).to_parquet(tmp_path / "gsm8k" / "main" / "train-00000-of-00001.parquet")
    source = benchmarks.local_task_source("gsm8k", tmp_path, 5)
    assert source.builder == "parquet"
    assert source.data_files["test"] == [
        str((tmp_path / "gsm8k" / "main" / "test-00000-of-00001.parquet").resolve())
    ]


def test_bad_options_are_config_errors(tiny_model, tmp_path):
    _, tok = tiny_model
    with pytest.raises(ConfigError, match="eval.limit"):
        ForgettingEvaluator(make_cfg(limit=0), tok, "t", tmp_path, None)
    with pytest.raises(ConfigError, match="eval.tasks"):
        ForgettingEvaluator(make_cfg(tasks=["no_such_task_xyz"]), tok, "t", tmp_path, None).preflight()
    with pytest.raises(ConfigError, match="eval.drift.num_prompts"):
        ForgettingEvaluator(make_cfg(drift={"num_prompts": 999}), tok, "t", tmp_path, None)


# ---------------------------------------------------------------------------------------------- drift


def test_drift_is_zero_for_base_and_grows_after_training(tiny_model, tmp_path):
    model, tok = tiny_model
    cfg = {"num_prompts": 6, "max_new_tokens": 8, "batch_size": 4, "top_k": 64}
    probe = DriftProbe(tok, cfg, "tiny", tmp_path)
    model.train()
    ref = probe.reference(model)
    assert model.training
    assert len(ref["answer_ids"]) == 6 and all(1 <= len(a) <= 8 for a in ref["answer_ids"])
    base = probe.measure(model)
    assert base["forget/drift/kl"] == pytest.approx(0.0, abs=1e-6)
    assert base["forget/drift/nll"] == pytest.approx(ref["base_nll"], rel=1e-6)

    # A second probe reads the cached reference and agrees.
    again = DriftProbe(tok, cfg, "tiny", tmp_path)
    assert again.load_reference() and again.measure(model) == pytest.approx(base)

    tuned = copy.deepcopy(model)
    perturb(tuned)
    moved = probe.measure(tuned)
    assert moved["forget/drift/kl"] > 1e-4
    assert moved["forget/drift/nll"] != pytest.approx(base["forget/drift/nll"])
    more = copy.deepcopy(tuned)
    perturb(more, steps=6)
    assert probe.measure(more)["forget/drift/kl"] > moved["forget/drift/kl"]


def test_drift_prompts_are_chat_formatted(tiny_model):
    _, tok = tiny_model
    assert len(GENERAL_PROMPTS) == 32 and len(set(GENERAL_PROMPTS)) == 32
    probe = DriftProbe(tok, {"num_prompts": 2}, "k", None)
    assert GENERAL_PROMPTS[0] in probe.texts[0] and probe.texts[0].rstrip().endswith("assistant")
    assert probe.cache_path is None


# ---------------------------------------------------------------------------------------------- configs


def test_eval_config_group():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_EVAL), version_base="1.3"):
        cfgs = {
            name: OmegaConf.to_container(compose(config_name=name))
            for name in ["forgetting", "none", "paper"]
        }
    base = cfgs["forgetting"]
    assert base["tasks"] == TASKS and base["num_fewshot"] == {"piqa": 0, "hellaswag": 0, "gsm8k": 5}
    assert set(base["limit"]) == set(TASKS) and all(
        isinstance(v, int) and v >= 1 for v in base["limit"].values()
    )
    assert base["data_dir"] == "${oc.env:RIGSA_EVAL_DATA,null}" and base["scorer"] == "fast"
    assert base["require_benchmarks"] is False and base["drift"]["enabled"] is True
    assert set(cfgs["none"]) == set(base) and set(cfgs["paper"]) == set(base)
    assert cfgs["none"]["enabled"] is False and cfgs["none"]["drift"]["enabled"] is False
    assert cfgs["paper"]["limit"] is None and cfgs["paper"]["require_benchmarks"] is True
    text = (CONF_EVAL / "forgetting.yaml").read_text().splitlines()
    for i, line in enumerate(text):  # every key has a comment line right above it
        if line and not line.lstrip().startswith("#") and ":" in line and not line.startswith("  #"):
            assert text[i - 1].lstrip().startswith("#"), line


def test_cached_hub_dataset_counts_as_available(tiny_model, tmp_path, monkeypatch):
    from datasets import config as ds_config

    _, tok = tiny_model
    monkeypatch.setattr(ds_config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    (tmp_path / "hf" / "baber___piqa" / "default" / "0.0.0" / "abc123").mkdir(parents=True)
    ev = ForgettingEvaluator(make_cfg(data_dir=None), tok, "tiny", tmp_path, tmp_path / "run")
    assert list(ev.preflight()) == ["hellaswag", "gsm8k"]
    assert ev.sources["piqa"].digest == "hub:baber/piqa/default"
    assert "include: " in (ev.tasks_dir / "piqa.yaml").read_text()
    assert not (ev.tasks_dir / "gsm8k.yaml").exists()


def test_hub_offline_guard_restores_flags():
    import huggingface_hub.constants as hub_constants
    from datasets import config as ds_config

    saved = (hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE)
    with benchmarks.hub_offline_guard(True):
        assert hub_constants.HF_HUB_OFFLINE and ds_config.HF_HUB_OFFLINE
    assert (hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE) == saved


def test_eval_none_does_nothing(tiny_model, tmp_path, monkeypatch):
    model, tok = tiny_model
    monkeypatch.setattr(benchmarks, "run_lm_eval", lambda *a, **k: pytest.fail("eval=none runs nothing"))
    ev = ForgettingEvaluator(make_cfg(enabled=False, drift={"enabled": False}), tok, "t", tmp_path, None)
    assert ev.preflight() == {} and ev.evaluate(model, "before") == {} and ev.summary() == {"skipped": {}}
