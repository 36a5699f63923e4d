"""EleutherAI lm-evaluation-harness in process, on the live model: the run, gold-solution NLL, the results.

The prompts, metrics and filters are lm-eval's own: the tasks are the generated task YAMLs of
:mod:`~rigsa_lightning.forgetting.tasks` (where their data come from: the hub or ``eval.data_dir`` local copies;
its names are re-exported here). :func:`run_lm_eval` scores the live model with ``HFLM`` or ``FastHFLM`` and leaves
the model, the tokenizer and the RNG states as they were (:func:`preserve_model_state`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.forgetting.tasks import (
    BUILTIN_TASK_YAMLS,
    DEFAULT_NUM_FEWSHOT,
    TaskSource,
    build_task_manager,
    builtin_task_config,
    builtin_task_yaml,
    dataset_availability,
    dataset_cached,
    files_digest,
    hub_offline,
    hub_offline_guard,
    hub_reachable,
    hub_task_source,
    lm_eval_tasks_dir,
    lm_eval_version,
    local_task_source,
    unavailable_notice,
    write_task_yaml,
)

log = logging.getLogger(__name__)

# The task names of forgetting/tasks.py are re-exported (``benchmarks.local_task_source`` etc. keep working).
__all__ = [
    "preserve_model_state",
    "run_lm_eval",
    "reference_continuation",
    "reference_nll",
    "gold_nll_from_prompts",
    "gold_solution_nll",
    "extract_metrics",
    "trim_results",
    "before_cache_path",
    "BUILTIN_TASK_YAMLS",
    "DEFAULT_NUM_FEWSHOT",
    "lm_eval_version",
    "lm_eval_tasks_dir",
    "builtin_task_yaml",
    "builtin_task_config",
    "TaskSource",
    "files_digest",
    "local_task_source",
    "hub_task_source",
    "hub_offline",
    "dataset_cached",
    "dataset_availability",
    "unavailable_notice",
    "hub_offline_guard",
    "write_task_yaml",
    "build_task_manager",
    "hub_reachable",
]


@contextlib.contextmanager
def preserve_model_state(model: torch.nn.Module, tokenizer: Any = None) -> Iterator[None]:
    """Restore what an evaluation touches: every module's train/eval flag, a re-tied output embedding, the
    tokenizer's padding side / pad token, and the python/numpy/torch RNG states lm-eval reseeds."""
    import numpy as np

    modes = [(m, m.training) for m in model.modules()]
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_weight = getattr(out_emb, "weight", None) if out_emb is not None else None
    tok_state = (
        (tokenizer.padding_side, tokenizer.pad_token, getattr(tokenizer, "truncation_side", None))
        if tokenizer is not None
        else None
    )
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_rng = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        if out_emb is not None and out_weight is not None and out_emb.weight is not out_weight:
            out_emb.weight = out_weight
        if tok_state is not None:
            tokenizer.padding_side = tok_state[0]
            if tokenizer.pad_token != tok_state[1] and tok_state[1] is not None:
                tokenizer.pad_token = tok_state[1]
            if tok_state[2] is not None:
                tokenizer.truncation_side = tok_state[2]
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval's own warnings about a model object passed in (expected here) and its CLI-style notices, silenced
    for the call; errors still show."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_lm_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    task_names: Sequence[str],
    task_manager: Any,
    num_fewshot: Mapping[str, int] | None,
    limit: int | float | None,
    batch_size: int,
    seed: int,
    max_gen_toks: int | None,
    log_samples: bool = False,
    *,
    choose_items: Callable[[str, int], list[int] | None] | None = None,
    scorer: str = "lm_eval",
    token_budget: int | None = None,
    gold_nll: bool = False,
    generate: bool = True,
    progress_label: str | None = None,
) -> dict[str, Any]:
    """Evaluate the live ``model`` with lm-eval on ``task_names``; return ``simple_evaluate``'s result dict.

    The model is wrapped with lm-eval's ``HFLM`` (``scorer="lm_eval"``) or :class:`~rigsa_lightning.forgetting.
    scorer.FastHFLM` (``scorer="fast"``: shared-context KV cache, same numbers) around the live model (no copy, no
    reload, no ``use_cache``); few-shot counts are set per task (``simple_evaluate`` takes a single one);
    ``max_gen_toks`` overrides the generation length of generate-until tasks (gsm8k). ``choose_items(task, n_docs)``
    picks the scored document indices per task (lm-eval's ``samples``; None = all; it replaces ``limit``), recorded
    under ``"item_indices"``. ``gold_nll=True`` adds, for generate-until tasks, the teacher-forced log-likelihood of
    each reference solution under the same prompt (``"gold_nll"``: ``{task: {doc_id: (nll_sum, n_tokens)}}``; needs
    ``log_samples``). ``generate=False`` skips generate-until tasks' generation: only their reference solutions'
    NLL is computed (with ``gold_nll``), from the same prompts lm-eval would generate from. Gradients are off and
    the model's train/eval flags, tied output embedding, tokenizer settings and global RNG states are restored
    afterwards. ``log_samples=True`` keeps lm-eval's per-document records under
    ``"samples"``. ``progress_label`` names the stage in the fast scorer's progress reports (``forgetting before``).

    (Over ~80 lines: lm-eval's one call with its task, few-shot, limit and model wiring, kept in one place.)
    """
    # Long on purpose: one lm-eval run read in order (wrapper, tasks, NLL-only tasks, the one-prefill hookup,
    # simple_evaluate, reference NLL); a third of it is the docstring above.
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from rigsa_lightning.forgetting.scorer import DEFAULT_TOKEN_BUDGET, FastHFLM
    from rigsa_lightning.forgetting.timing import tasks_by_type, time_requests

    if scorer not in ("fast", "lm_eval"):
        raise ConfigError("eval.scorer", f"must be fast or lm_eval, got {scorer!r}")
    with preserve_model_state(model, tokenizer), torch.no_grad(), _quiet_lm_eval():
        if scorer == "fast":
            lm: Any = FastHFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=int(batch_size),
                token_budget=int(token_budget or DEFAULT_TOKEN_BUDGET),
            )
            if progress_label:
                lm.progress_label = str(progress_label)
        else:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(batch_size))
        timing = time_requests(lm)
        tasks, samples = _load_tasks(task_manager, task_names, num_fewshot, choose_items)
        generation_tasks = [t for t in tasks if t.OUTPUT_TYPE == "generate_until"]
        nll_only = {} if generate else {t.config.task: t for t in generation_tasks}
        if nll_only:
            tasks = [t for t in tasks if t.config.task not in nll_only]
        started = time.perf_counter()
        gold_only = {
            name: gold_nll_from_prompts(lm, task, (samples or {}).get(name), seed)
            for name, task in nll_only.items()
        }
        timing["gold_nll"] += time.perf_counter() - started
        by_type = tasks_by_type([*tasks, *nll_only.values()])
        if not tasks:
            return {
                "results": {},
                "samples": {},
                "gold_nll": gold_only,
                "item_indices": samples or {},
                "timing": {"seconds": timing, "tasks": by_type},
            }
        # one prefill of prompt + solution serves the NLL and the generation
        if gold_nll and scorer == "fast":
            lm.gold_targets = {
                task.config.task: (lambda doc, t=task: reference_continuation(t, doc))
                for task in tasks
                if task.OUTPUT_TYPE == "generate_until"
            }
        result = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            limit=None if samples else limit,
            samples=samples or None,
            bootstrap_iters=0,
            log_samples=log_samples or gold_nll,
            gen_kwargs={"max_gen_toks": int(max_gen_toks)} if max_gen_toks else None,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            task_manager=task_manager,
            verbosity="ERROR",
        )
        if result is None:  # pragma: no cover - non-zero rank
            return {}
        result = dict(result)
        if samples:
            result["item_indices"] = samples
        if gold_nll:
            started = time.perf_counter()
            result["gold_nll"] = {
                task.config.task: gold_solution_nll(lm, task, result["samples"][task.config.task])
                for task in tasks
                if task.OUTPUT_TYPE == "generate_until"
            }
            timing["gold_nll"] += time.perf_counter() - started
            if not log_samples:
                result.pop("samples", None)
        if gold_only:
            result.setdefault("gold_nll", {}).update(gold_only)
        result["timing"] = {"seconds": timing, "tasks": by_type}
    return result


def _load_tasks(
    task_manager: Any,
    task_names: Sequence[str],
    num_fewshot: Mapping[str, int] | None,
    choose_items: Callable[[str, int], list[int] | None] | None,
) -> tuple[list[Any], dict[str, list[int]] | None]:
    """The lm-eval task objects with their few-shot counts set, and the chosen item indices per task (lm-eval's
    ``samples``; None when every document is scored)."""
    loaded = task_manager.load(list(task_names))
    tasks = []
    samples: dict[str, list[int]] | None = {} if choose_items is not None else None
    for name in task_names:
        task = loaded["tasks"][name]
        if num_fewshot is not None and name in num_fewshot and num_fewshot[name] is not None:
            task.set_config(key="num_fewshot", value=int(num_fewshot[name]))
        tasks.append(task)
        if choose_items is not None and samples is not None:
            chosen = choose_items(name, len(task.eval_docs))
            if chosen is not None:
                samples[name] = chosen
    return tasks, samples


def reference_continuation(task: Any, doc: Mapping[str, Any]) -> str:
    """A document's reference answer as the few-shot examples show it: ``target_delimiter`` + ``doc_to_target``."""
    return str(task.config.target_delimiter) + str(task.doc_to_target(doc))


def reference_nll(
    lm: Any, task: Any, prompts: Sequence[tuple[int, str, Mapping[str, Any]]]
) -> dict[int, tuple[float, int]]:
    """``{doc_id: (NLL, tokens)}`` of each ``(doc_id, prompt, doc)``'s reference continuation teacher-forced after
    the prompt, tokenised by lm-eval's own ``_encode_pair``, scored by the model's ``_loglikelihood_tokens``."""
    requests = []
    for _, context, doc in prompts:
        continuation = reference_continuation(task, doc)
        ctx_enc, cont_enc = lm._encode_pair(context, continuation)
        requests.append(((context, continuation), ctx_enc, cont_enc))
    outer = getattr(lm, "progress_what", None)
    if hasattr(lm, "progress_what"):  # FastHFLM: its progress reports name what is scored
        lm.progress_what = f"{task.config.task} reference NLL"
    try:
        scores = lm._loglikelihood_tokens(requests, disable_tqdm=True) if requests else []
    finally:
        if hasattr(lm, "progress_what"):
            lm.progress_what = outer
    return {p[0]: (-float(ll), len(r[2])) for p, (ll, _), r in zip(prompts, scores, requests, strict=True)}


def gold_nll_from_prompts(
    lm: Any, task: Any, indices: Sequence[int] | None, seed: int
) -> dict[int, tuple[float, int]]:
    """``{doc_id: (NLL, tokens)}`` of each reference solution after the prompt lm-eval builds for it (the same
    few-shot draw as ``simple_evaluate`` with ``fewshot_random_seed=seed``), without generating anything."""
    task.set_fewshot_seed(seed=seed)
    task.build_all_requests(samples=list(indices) if indices else None, rank=0, world_size=1)
    prompts = [
        (int(indices[inst.doc_id]) if indices else int(inst.doc_id), inst.args[0], inst.doc)
        for inst in task.instances
    ]
    return reference_nll(lm, task, prompts)


def gold_solution_nll(
    lm: Any, task: Any, samples: Sequence[Mapping[str, Any]]
) -> dict[int, tuple[float, int]]:
    """``{doc_id: (NLL of the reference solution, its tokens)}`` after the exact prompt lm-eval generated from
    (its logged samples): taken from the generation's prefill where :class:`FastHFLM` scored it, else scored here."""
    done: dict[str, tuple[float, int]] = getattr(lm, "gold_scores", None) or {}
    out: dict[int, tuple[float, int]] = {}
    prompts: dict[int, tuple[int, str, Mapping[str, Any]]] = {}
    for s in samples:  # one logged sample per filter: one prompt per document
        doc_id, context = int(s["doc_id"]), s["arguments"][0][0]
        if context in done:
            out[doc_id] = done[context]
        else:
            prompts.setdefault(doc_id, (doc_id, context, s["doc"]))
    out.update(reference_nll(lm, task, list(prompts.values())))
    return out


def extract_metrics(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from lm-eval results; ``acc,none`` -> ``acc``, ``exact_match,strict-match`` ->
    ``exact_match_strict-match``; stderr entries and non-numbers are dropped."""
    out: dict[str, dict[str, float]] = {}
    for task, values in (results.get("results") or {}).items():
        metrics: dict[str, float] = {}
        for key, value in values.items():
            if "," not in key or "_stderr" in key or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            metrics[metric if filt == "none" else f"{metric}_{filt}"] = float(value)
        out[task] = metrics
    return out


def _plain(obj: Any) -> Any:
    """JSON-friendly copy: callables become ``<function module.name>``, unknown objects their ``str``."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if callable(obj):
        name = getattr(obj, "__qualname__", None) or type(obj).__name__
        return f"<function {getattr(obj, '__module__', '?')}.{name}>"
    return str(obj)


def trim_results(result: Mapping[str, Any]) -> dict[str, Any]:
    """The lm-eval result without per-sample logs, made JSON-serialisable (versions, n-shot, n-samples, configs)."""
    keep = {k: v for k, v in result.items() if k != "samples"}
    return _plain(keep)


def before_cache_path(cache_dir: str | os.PathLike, key_fields: Mapping[str, Any]) -> Path:
    """``<cache_dir>/forgetting_before/<sha>.json`` for these key fields."""
    blob = json.dumps(_plain(key_fields), sort_keys=True)
    return Path(cache_dir) / "forgetting_before" / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"
