"""The ``eval`` option checks run before a model loads (:func:`check_eval_cfg`)."""

from __future__ import annotations

from typing import Any

from rigsa_lightning.config.access import plain_cfg
from rigsa_lightning.config.errors import ConfigError

__all__ = ["check_eval_cfg", "plain_cfg"]


def check_eval_cfg(eval_cfg: Any) -> None:
    """Validate the ``eval`` options and any local benchmark files before a model loads (one-line ConfigErrors)."""
    from rigsa_lightning.forgetting.curve import curve_eval_cfg
    from rigsa_lightning.forgetting.evaluator import ForgettingEvaluator  # it imports this module

    cfg = dict(plain_cfg(eval_cfg) or {})
    cfg["drift"] = None
    evaluator = ForgettingEvaluator(cfg, None, "", None, None)
    if evaluator.enabled and evaluator.data_dir is not None:
        evaluator.local_sources()
    curve = curve_eval_cfg(cfg)
    if curve is not None:
        try:
            check_eval_cfg({**curve, "curve": None})
        except ConfigError as exc:  # name the curve's own option
            raise ConfigError(exc.option.replace("eval.", "eval.curve.", 1), exc.problem, exc.fix) from exc
