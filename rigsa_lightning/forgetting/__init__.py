"""Forgetting: PIQA / HellaSwag / GSM8k with lm-eval before and after training, plus an offline drift proxy.

:class:`ForgettingEvaluator` is what the training entry point uses (see docs/ARCHITECTURE.md, "Forgetting
contract")::

    ev = ForgettingEvaluator(cfg.eval, tokenizer, model_key, cache_dir, run_dir)
    skipped = ev.preflight()          # before the first training step; ConfigError if eval.require_benchmarks
    log(ev.evaluate(model, "before")) # forget/<task>/<metric>/before, forget/drift/{kl,nll}/before
    ...train...                       # optionally ev.evaluate(model, "round<k>") after each pruning round
    log(ev.evaluate(model, "after"))
    metrics = ev.summary()            # + forget/<task>/<metric>/delta (= after - before), "skipped"; writes
                                      #   <run_dir>/forgetting.json

Metric names: ``forget/piqa/acc``, ``forget/piqa/acc_norm``, ``forget/hellaswag/acc``, ``forget/hellaswag/acc_norm``,
``forget/gsm8k/exact_match_strict-match``, ``forget/gsm8k/exact_match_flexible-extract`` and the drift proxy
``forget/drift/kl``, ``forget/drift/nll`` (see :mod:`rigsa_lightning.forgetting.drift`), each suffixed with the stage.
Evaluate on one process only (rank 0) in distributed runs.
"""

from __future__ import annotations

from rigsa_lightning.forgetting.drift import DriftProbe
from rigsa_lightning.forgetting.evaluator import ForgettingEvaluator
from rigsa_lightning.forgetting.options import check_eval_cfg

__all__ = ["ForgettingEvaluator", "DriftProbe", "check_eval_cfg"]
