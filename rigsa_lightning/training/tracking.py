"""W&B without hangs: offline unless an API key and the network are both there; one run per job."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rigsa_lightning.adapters.registry import get_method
from rigsa_lightning.io import atomic_write_text

log = logging.getLogger(__name__)


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
        return bool(auth and auth[2])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _wandb_reachable(timeout: float = 3.0) -> bool:
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://", 1)[-1].split("/", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode(requested: str) -> str:
    """``auto`` -> online only with an API key and a reachable server, else offline (never blocks ~107 s)."""
    env_mode = os.environ.get("WANDB_MODE")
    if requested == "auto" and env_mode:
        return env_mode
    if requested != "auto":
        return requested
    if _has_wandb_key() and _wandb_reachable():
        return "online"
    return "offline"


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config flattened to ``group.key`` entries (filterable in the W&B UI); no secrets inside."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", {k: v for k, v in container.items() if k != "hydra"})
    from rigsa_lightning.config.access import is_secret

    return {k: v for k, v in out.items() if not is_secret(k)}


def run_tags(cfg: DictConfig) -> list[str]:
    """Tags: method, seed, model, the method's budget (RIGSA: sparsity, random mask: density), plus the
    configured ones."""
    tags = [f"method:{cfg.adapter.method}", f"seed:{cfg.seed}", f"model:{cfg.model.name_or_path}"]
    tags += get_method(cfg.adapter.method).run_tags(cfg)
    tags += [str(t) for t in (cfg.logger.get("tags") or [])]
    return tags


def make_wandb_logger(cfg: DictConfig, run_dir: Path) -> Any:
    """A Lightning ``WandbLogger`` for this job; the run id is kept in the run folder so a resume continues it."""
    from lightning.pytorch.loggers import WandbLogger

    mode = resolve_wandb_mode(str(cfg.logger.get("mode", "auto")))
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    group = cfg.logger.get("group")
    if group is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            if hc.mode is not None and hc.mode.name == "MULTIRUN":
                group = Path(hc.sweep.dir).name
        except ValueError:
            pass
    logger = WandbLogger(
        project=str(cfg.logger.get("project", "rigsa-lightning")),
        entity=cfg.logger.get("entity"),
        name=f"{cfg.name}-s{cfg.seed}",
        group=group,
        tags=run_tags(cfg),
        save_dir=str(run_dir),
        id=run_id,
        resume="allow" if run_id else None,
        mode=mode,
        config=flat_config(cfg),
    )
    exp = logger.experiment  # starts the run now (offline: ~1.5 s)
    if run_id is None and getattr(exp, "id", None):
        atomic_write_text(id_file, str(exp.id))
    log.info("W&B mode %s; run files in %s", mode, run_dir / "wandb")
    return logger


def log_summary(loggers: list[Any], metrics: dict[str, Any]) -> None:
    """Put the final scalar metrics in the W&B run summary (and the CSV log)."""
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for lg in loggers:
        try:
            if lg.__class__.__name__ == "WandbLogger":
                lg.experiment.summary.update(scalars)
            else:
                lg.log_metrics({k: float(v) for k, v in scalars.items()})
                lg.save()
        except Exception as exc:  # noqa: BLE001 - logging must never lose the run's results
            log.warning("could not log the summary to %s: %s", type(lg).__name__, exc)


def finish_wandb() -> None:
    """Finish the current W&B run if there is one (so the next multirun job starts its own)."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception as exc:  # noqa: BLE001
        log.warning("wandb.finish failed: %s", exc)
