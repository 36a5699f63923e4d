"""What a checkpoint holds beyond Lightning's own state: the project's key and format, the random generators'
states (resume is bit-exact) and the options that change the training trajectory (a resume with another value of
one of them is refused)."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import torch

# Key of this project's extra state in a Lightning checkpoint (plain tensors / primitives: loads with
# ``torch.load(weights_only=True)``).
CKPT_KEY = "rigsa"
CKPT_FORMAT = 1
# Trainer options that change the training trajectory (checked on resume together with the groups below).
_TRAJECTORY_TRAINER_KEYS = (
    "precision",
    "accumulate_grad_batches",
    "limit_train_batches",
    "max_steps",
    "deterministic",
    "gradient_clip_val",
    "gradient_clip_algorithm",
)
_TRAJECTORY_GROUPS = ("model", "adapter", "pruning", "data", "optim")
# Storage layout and kernels of the same maths (a resume may switch them: checkpoints convert on load).
_NOT_TRAJECTORY = {"data.num_workers", "data.cache", "adapter.storage", "adapter.sparse_grad"}


def saved_loader_positions(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The training loaders' positions a checkpoint saved (Lightning's resumable-loader states under the fit loop;
    empty in an older checkpoint or one of a non-resumable loader)."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    return list((fit_loop.get("state_dict") or {}).get("combined_loader") or [])


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) global RNG states as tensors and primitives (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs to a state taken by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.cpu() for c in cuda])


def trajectory_config(cfg: Any) -> dict[str, Any]:
    """The options that determine the training trajectory, flattened (``group.key`` -> plain value).

    Stored in every checkpoint; a resume whose options differ from these would silently train a different method.
    """
    from omegaconf import DictConfig, OmegaConf

    def plain(value: Any) -> Any:
        if isinstance(value, DictConfig):
            return OmegaConf.to_container(value, resolve=True)
        return value

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif prefix not in _NOT_TRAJECTORY:
            flat[prefix] = value

    flat["seed"] = plain(cfg.get("seed"))
    for group in _TRAJECTORY_GROUPS:
        walk(group, plain(cfg.get(group)) or {})
    trainer = plain(cfg.get("trainer")) or {}
    for key in _TRAJECTORY_TRAINER_KEYS:
        if trainer.get(key) is not None:
            flat[f"trainer.{key}"] = trainer[key]
    # JSON round trip: tuples become lists, so the stored and the live config compare equal.
    return json.loads(json.dumps(flat, sort_keys=True, default=str))


# Trajectory options added later, with the behaviour of checkpoints written before they existed: such a checkpoint
# resumes exactly with that value (e.g. ``optim.impl=loop``, torch's per-tensor AdamW used before the option).
_LEGACY_VALUES = {"optim.impl": "loop"}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key=<current> (checkpoint: <saved>)`` for every trajectory option that differs (an option missing from an
    older checkpoint counts with its value of that time, :data:`_LEGACY_VALUES`)."""
    saved = {**{k: v for k, v in _LEGACY_VALUES.items() if k in current}, **saved}
    out = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            out.append(f"{key}={current.get(key)!r} (checkpoint: {saved.get(key)!r})")
    return out
