"""Benchmark - the fast forgetting scorer vs lm-eval's HFLM on the same real PIQA / HellaSwag items.

Both score the same seeded subset of the real validation splits (``../shared/data/forgetting`` or
``$RIGSA_EVAL_DATA``) on the embedded SmolLM2-135M-Instruct in fp32, through the same ``lm_eval.simple_evaluate``
call with lm-eval's task YAMLs; only the model wrapper differs (``HFLM`` at batch 32, the pitfalls' setting, vs
:class:`rigsa_lightning.forgetting.scorer.FastHFLM`). The two alternate ``reps`` times at the same thread count.
Reported: seconds per run, the speed ratio (HFLM / fast; goal >= 2x), identical per-item acc / acc_norm and the
largest log-likelihood difference.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, alternate, environment, print_table, record, say, summary, verdict

TASKS = ["piqa", "hellaswag"]


def data_dir() -> Path:
    """The real benchmark copies."""
    env = os.environ.get("RIGSA_EVAL_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "forgetting"
    if not (path / "piqa" / "validation.jsonl").is_file():
        raise FileNotFoundError(f"real benchmark data not found at {path} (set RIGSA_EVAL_DATA)")
    return path


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the benchmark; returns (and records) its results entry."""
    import torch

    from bench.common import load_smollm2
    from rigsa_lightning.forgetting import benchmarks, items

    n_threads = (threads or [2])[0]
    reps = reps or (1 if quick else 2)
    sizes = {"piqa": 40, "hellaswag": 20} if quick else {"piqa": 200, "hellaswag": 100}
    t_start = time.time()
    env = environment()
    torch.set_num_threads(n_threads)
    model, tok = load_smollm2()
    folder = Path(tempfile.mkdtemp(prefix="rigsa_bench_scorer_"))
    data = data_dir()
    for task in TASKS:
        benchmarks.write_task_yaml(folder, benchmarks.local_task_source(task, data, 0))
    n_docs = {"piqa": 1838, "hellaswag": 10042}
    chosen = {t: items.choose_items(n_docs[t], sizes[t], seed=0) for t in TASKS}
    results: dict[str, dict[str, Any]] = {}

    def scorer(name: str):
        def call() -> None:
            results[name] = benchmarks.run_lm_eval(
                model,
                tok,
                TASKS,
                benchmarks.build_task_manager(folder),
                num_fewshot=None,
                limit=None,
                batch_size=32,
                seed=1234,
                max_gen_toks=None,
                log_samples=True,
                choose_items=lambda task, n: chosen[task],
                scorer=name,
            )

        return call

    say(f"fast scorer vs HFLM: {sizes} real items, {n_threads} thread(s), {reps} rep(s)")
    times = alternate({"lm_eval": scorer("lm_eval"), "fast": scorer("fast")}, reps=reps, warmup=0, log=say)
    ref, fast = results["lm_eval"], results["fast"]
    max_diff, mismatches, compared = 0.0, 0, 0
    for task in TASKS:
        a = sorted(fast["samples"][task], key=lambda s: s["doc_id"])
        b = sorted(ref["samples"][task], key=lambda s: s["doc_id"])
        for x, y in zip(a, b, strict=True):
            mismatches += int(x["acc"] != y["acc"]) + int(x["acc_norm"] != y["acc_norm"])
            for rx, ry in zip(x["resps"], y["resps"], strict=True):
                max_diff = max(max_diff, abs(float(rx[0][0]) - float(ry[0][0])))
                compared += 1
    st = {k: summary(v) for k, v in times.items()}
    ratio = st["lm_eval"]["median"] / st["fast"]["median"]
    requests = sum(sizes[t] * (2 if t == "piqa" else 4) for t in TASKS)
    print_table(
        f"Forgetting scorer: fast vs lm-eval HFLM ({requests} log-likelihood requests, {n_threads} thread(s))",
        ["scorer", "median s", "requests/s", "note"],
        [
            [
                "lm-eval HFLM (batch 32)",
                f"{st['lm_eval']['median']:.1f}",
                f"{requests / st['lm_eval']['median']:.1f}",
                "",
            ],
            [
                "fast (shared context KV)",
                f"{st['fast']['median']:.1f}",
                f"{requests / st['fast']['median']:.1f}",
                "",
            ],
            ["speed ratio HFLM / fast", f"{ratio:.2f}x", "", verdict(ratio, 2.0, lower_is_better=False)],
            [
                "per-item acc/acc_norm differing",
                str(mismatches),
                "",
                f"max |d loglik| {max_diff:.2g} ({compared})",
            ],
        ],
    )
    entry = {
        "benchmark": "fast_scorer",
        "quick": quick,
        "sizes": sizes,
        "threads": n_threads,
        "seconds": times,
        "stats": st,
        "speed_ratio": ratio,
        "requests": requests,
        "acc_mismatches": mismatches,
        "max_abs_loglik_diff": max_diff,
        "loglik_compared": compared,
        "verdicts": {
            "speed": verdict(ratio, 2.0, lower_is_better=False),
            "numbers": "met" if mismatches == 0 and max_diff < 1e-3 else "missed",
        },
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "wall_s": time.time() - t_start,
    }
    record("fast_scorer", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    return [
        ("HFLM / fast scorer time", f"{entry['speed_ratio']:.2f}x", ">= 2x", entry["verdicts"]["speed"]),
        (
            "same per-item results",
            f"{entry['acc_mismatches']} acc diffs, max |dll| {entry['max_abs_loglik_diff']:.2g}",
            "0, < 1e-4 (1e-6 rel)",
            entry["verdicts"]["numbers"],
        ),
    ]
