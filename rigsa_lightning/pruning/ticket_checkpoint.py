"""The winning ticket's checkpoint, small enough to commit: the post-prune checkpoint with ΔW stored as its mask.

After RIGSA's last IMP round every survivor is rewound to its initial value (``pruning.rewind: init``), the gate is
reset and the optimizer state of the adapters is dropped (``reset_alpha``, ``reset_optimizer``). The checkpoint
Lightning writes at that epoch end therefore holds, per adapted matrix, the kept entries' flat indices and values
that are exactly the seeded initial ΔW at those indices (:func:`~rigsa_lightning.adapters.rigsa.seeding.
generate_initial_delta`). :func:`pack` keeps the indices (gaps, lzma-compressed) and drops the values after checking
bit for bit that they are the regenerated init; :func:`unpack` regenerates them and gives back the same checkpoint.
On SmolLM2-135M at 2.75 % density that is 2.5 MB instead of 23.7 MB, so a long job's mask search survives the loss of
its machine: the file is archived with the job's small files (:mod:`rigsa_lightning.report.archive`) and a rerun of
the same command on a fresh machine continues the job from it (:func:`rigsa_lightning.task.prepare_job_folder`).

    python -m rigsa_lightning.pruning.ticket_checkpoint pack <job folder> --model-dir <base model folder>
    python -m rigsa_lightning.pruning.ticket_checkpoint unpack <job folder>
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import lzma
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from rigsa_lightning.adapters.rigsa.seeding import generate_initial_delta
from rigsa_lightning.adapters.rigsa.ticket import TICKET_FILE, TICKET_START, TICKET_START_SOURCE
from rigsa_lightning.io import atomic_write, atomic_write_json

__all__ = [
    "TICKET_FILE",
    "TICKET_START",
    "TicketCheckpoint",
    "checkpoint_from_ticket",
    "pack",
    "restore_ticket",
    "start_from_ticket",
    "ticket_started_from",
    "unpack",
    "write_ticket",
]

log = logging.getLogger("rigsa_lightning.pruning")

_FORMAT = 1
_VALUES, _INDICES, _SEED = ".values", ".indices", ".delta_seed"


def _sparse_prefixes(state: Mapping[str, Any]) -> list[str]:
    """Module prefixes of the sparse-storage adapters in a checkpoint's ``state_dict``."""
    return sorted(
        key[: -len(_VALUES)]
        for key in state
        if key.endswith(_VALUES) and key[: -len(_VALUES)] + _INDICES in state
    )


def pack(ckpt: dict[str, Any], modules: Mapping[str, Mapping[str, Any]]) -> bytes:
    """A post-prune checkpoint as compressed bytes, each adapter's ΔW stored as its mask only.

    Args:
        ckpt: the Lightning checkpoint (as ``torch.load`` returns it); not modified.
        modules: per sparse adapter prefix of ``ckpt["state_dict"]``: ``shape`` (out, in), ``init`` and
            ``init_std`` (the module's ΔW init scheme).

    Raises ``ValueError`` when an adapter's values are not exactly its initial ΔW at the kept entries (not a
    rewound ticket: nothing could be regenerated) or a sparse adapter has no entry in ``modules``.
    """
    imp = (ckpt.get("callbacks") or {}).get("IterativeMagnitudePruning")
    if imp is not None and int(imp.get("round", 0)) < int(imp.get("rounds", 0)):
        raise ValueError(
            f"the checkpoint is after round {imp.get('round')} of {imp.get('rounds')}, not the last"
        )
    state = dict(ckpt["state_dict"])
    masks: dict[str, dict[str, Any]] = {}
    for prefix in _sparse_prefixes(state):
        if prefix not in modules:
            raise ValueError(f"no shape for adapter {prefix}")
        info = modules[prefix]
        shape = (int(info["shape"][0]), int(info["shape"][1]))
        if state.get(prefix + ".frozen") is not None:
            raise ValueError(f"{prefix}: pruned_value=init keeps a dense frozen ΔW (not packed)")
        indices = state.pop(prefix + _INDICES)
        values = state.pop(prefix + _VALUES)
        seed = int(state[prefix + _SEED])
        init = generate_initial_delta(shape, seed, str(info["init"]), float(info["init_std"])).view(-1)
        if not torch.equal(init[indices.long()].to(values.dtype), values.detach().cpu()):
            raise ValueError(
                f"{prefix}: the values are not its initial ΔW at the kept entries (not a rewound ticket)"
            )
        flat = indices.cpu().numpy().astype(np.int64)
        if flat.size and (np.any(np.diff(flat) <= 0) or flat[0] < 0):
            raise ValueError(f"{prefix}: indices are not sorted and unique")
        gap_dtype = np.uint32 if shape[0] * shape[1] < 2**32 else np.uint64
        gaps = np.diff(flat, prepend=0).astype(gap_dtype)
        masks[prefix] = {
            "shape": shape,
            "init": str(info["init"]),
            "init_std": float(info["init_std"]),
            "index_dtype": str(indices.dtype).removeprefix("torch."),
            "values_dtype": str(values.dtype).removeprefix("torch."),
            "gap_dtype": np.dtype(gap_dtype).name,
            "gaps": torch.from_numpy(gaps.view(np.uint8).copy()),  # a tensor: the file loads weights_only
        }
    if not masks:
        raise ValueError("the checkpoint holds no sparse-storage adapter")
    body = {key: value for key, value in ckpt.items() if key != "state_dict"}
    body["state_dict"] = state
    buf = io.BytesIO()
    torch.save({"format": _FORMAT, "checkpoint": body, "masks": masks}, buf)
    return lzma.compress(buf.getvalue(), preset=6)


def unpack(blob: bytes) -> dict[str, Any]:
    """The checkpoint :func:`pack` stored, with every adapter's indices and initial values regenerated."""
    packed = torch.load(io.BytesIO(lzma.decompress(blob)), map_location="cpu", weights_only=True)
    if packed.get("format") != _FORMAT:
        raise ValueError(f"unknown ticket checkpoint format {packed.get('format')!r}")
    ckpt = packed["checkpoint"]
    state = ckpt["state_dict"]
    for prefix, info in packed["masks"].items():
        shape = tuple(info["shape"])
        flat = np.cumsum(
            np.frombuffer(info["gaps"].numpy().tobytes(), dtype=np.dtype(info["gap_dtype"])).astype(np.int64)
        )
        indices = torch.from_numpy(flat).to(getattr(torch, info["index_dtype"]))
        seed = int(state[prefix + _SEED])
        init = generate_initial_delta(shape, seed, info["init"], info["init_std"]).view(-1)
        state[prefix + _INDICES] = indices
        state[prefix + _VALUES] = init[flat].to(getattr(torch, info["values_dtype"]))
    return ckpt


def write_ticket(
    ckpt: str | Path | dict[str, Any], out_path: str | Path, modules: Mapping[str, Mapping[str, Any]]
) -> int:
    """Pack a checkpoint (its file, or its already loaded dict) into ``out_path``, atomically; return its bytes."""
    if not isinstance(ckpt, dict):
        ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
    blob = pack(ckpt, modules)
    atomic_write(out_path, lambda tmp: Path(tmp).write_bytes(blob))
    return len(blob)


def restore_ticket(ticket_path: str | Path, ckpt_path: str | Path) -> None:
    """Write the checkpoint packed in ``ticket_path`` to ``ckpt_path``, atomically."""
    ckpt = unpack(Path(ticket_path).read_bytes())
    atomic_write(ckpt_path, lambda tmp: torch.save(ckpt, tmp))


def is_ticket_file(path: str | Path) -> bool:
    """Whether ``path`` names a packed winning ticket (``*.ckpt.xz``) rather than a Lightning checkpoint."""
    return Path(path).name.endswith(".ckpt.xz")


def start_from_ticket(ticket: str | Path, run_dir: str | Path) -> Path:
    """Unpack ``ticket`` into ``<run_dir>/ticket_start.ckpt`` (atomically) and return that path: a new run then starts
    from the ticket (RIGSA's final retraining, at the new run's own options: another final rate or budget) without
    searching the mask again. An unreadable file is a one-line ``ckpt_path`` error and writes nothing."""
    from rigsa_lightning.config.errors import ConfigError

    ticket = Path(ticket)
    try:
        ckpt = unpack(ticket.read_bytes())
    except Exception as exc:  # noqa: BLE001 - not xz, not a torch file, disallowed pickle content, not a ticket
        raise ConfigError(
            "ckpt_path",
            f"{ticket} is not a readable winning-ticket checkpoint ({type(exc).__name__}: {str(exc)[:160]})",
            f"point it at a RIGSA run's {TICKET_FILE} or at a .ckpt file",
        ) from exc
    out = Path(run_dir) / TICKET_START
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: torch.save(ckpt, tmp))
    # where it came from, for metrics.json's started_from also after the run is interrupted and continued
    atomic_write_json(Path(run_dir) / TICKET_START_SOURCE, {"ticket": str(ticket)})
    log.info("starting from the winning ticket %s (unpacked to %s)", ticket, out)
    return out


def ticket_started_from(run_dir: str | Path) -> str | None:
    """The winning ticket a run was started from (:func:`start_from_ticket`), or None."""
    try:
        return str(json.loads((Path(run_dir) / TICKET_START_SOURCE).read_text())["ticket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_from_ticket(run_dir: str | Path) -> bool:
    """Give ``run_dir`` its ``checkpoints/last.ckpt`` back from its ticket checkpoint when only the ticket is there (a
    job archived at its ticket and restored on a fresh machine); return whether it did."""
    run_dir = Path(run_dir)
    last, ticket = run_dir / "checkpoints" / "last.ckpt", run_dir / TICKET_FILE
    if last.is_file() or not ticket.is_file():
        return False
    try:
        restore_ticket(ticket, last)
    except (ValueError, OSError, RuntimeError, lzma.LZMAError, KeyError) as exc:
        raise ValueError(f"{ticket} is unreadable ({type(exc).__name__}: {exc})") from exc
    log.info("%s restored from its ticket checkpoint %s", last, ticket.name)
    return True


def modules_of(pl_module: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """``pack``'s ``modules`` argument from a live model: every sparse adapter's shape and init scheme."""
    from rigsa_lightning.adapters.rigsa.sparse import SparseDeltaLinear

    return {
        name: {"shape": (m.out_features, m.in_features), "init": m.init, "init_std": m.init_std}
        for name, m in pl_module.named_modules()
        if isinstance(m, SparseDeltaLinear)
    }


class TicketCheckpoint(L.Callback):
    """Write ``<run>/ticket.ckpt.xz`` once, from the checkpoint written right after RIGSA's last prune.

    Lightning runs the epoch-end checkpoint after the pruning callback (monitoring callbacks last), so at the start
    of the first epoch of the final retraining ``checkpoints/last.ckpt`` is the post-prune state; it is packed
    there, before the first step-interval checkpoint replaces it. Needs ``rewind: init``, ``reset_alpha`` and
    ``reset_optimizer`` (otherwise the state is not a function of the mask and the seed, and nothing is written).
    """

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Pack the post-prune checkpoint when the last round has just been done."""
        from rigsa_lightning.pruning.callback import IterativeMagnitudePruning

        out = self.run_dir / TICKET_FILE
        last = self.run_dir / "checkpoints" / "last.ckpt"
        imp = next((c for c in trainer.callbacks if isinstance(c, IterativeMagnitudePruning)), None)
        if (
            imp is None
            or out.exists()
            or not last.is_file()
            or imp.round < imp.schedule.rounds
            or not imp.history
        ):
            return
        sched = imp.schedule
        if sched.rewind != "init" or not sched.reset_alpha or not sched.reset_optimizer:
            return
        if int(imp.history[-1].get("global_step") or -1) != int(trainer.global_step):
            return  # resumed later in the final phase: last.ckpt is no longer the ticket
        try:
            size = write_ticket(last, out, modules_of(pl_module))
            log.info("ticket checkpoint: %s (%.1f MB)", out, size / 2**20)
        except (
            ValueError,
            OSError,
            RuntimeError,
        ) as exc:  # never fails training: the run just has no ticket file
            log.warning("ticket checkpoint not written: %s", exc)


def _shapes_from_model_dir(model_dir: Path, prefixes: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(out, in) of each adapted matrix, read from the base model's safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, int]] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.endswith(".weight"):
                    shapes[key[: -len(".weight")]] = tuple(f.get_slice(key).get_shape())  # type: ignore[assignment]
    out: dict[str, tuple[int, int]] = {}
    for prefix in prefixes:
        parts = prefix.split(".")
        match = next((".".join(parts[i:]) for i in range(len(parts)) if ".".join(parts[i:]) in shapes), None)
        if match is None:
            raise ValueError(f"{prefix}: no such weight in {model_dir}")
        out[prefix] = shapes[match]
    return out


def _init_of(job: Path, init: str | None, init_std: float | None) -> tuple[str, float]:
    """The run's ``adapter.init`` / ``adapter.init_std``: given ones first, else the job's ``.hydra/config.yaml``."""
    import yaml

    adapter: dict[str, Any] = {}
    try:
        adapter = (yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}).get("adapter") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    return (
        init if init is not None else str(adapter.get("init", "kaiming_uniform")),
        init_std if init_std is not None else float(adapter.get("init_std", 0.02)),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``pack <job folder> --model-dir <dir>`` or ``unpack <job folder>`` (``checkpoints/last.ckpt`` ↔ ticket)."""
    parser = argparse.ArgumentParser(
        prog="python -m rigsa_lightning.pruning.ticket_checkpoint", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("job", type=Path, help="the job folder")
    parser.add_argument(
        "--model-dir", type=Path, help="pack: the base model folder (its safetensors headers)"
    )
    parser.add_argument(
        "--init", help="pack: adapter.init of the run (default: from <job>/.hydra/config.yaml)"
    )
    parser.add_argument(
        "--init-std", type=float, help="pack: adapter.init_std of the run (default: likewise)"
    )
    args = parser.parse_args(argv)
    last = args.job / "checkpoints" / "last.ckpt"
    ticket = args.job / TICKET_FILE
    if args.action == "unpack":
        if not ticket.is_file() or last.is_file():
            what = (
                f"{ticket} does not exist" if not ticket.is_file() else f"{last} exists (maybe further along)"
            )
            print(f"error: job: {what} -> give a job folder holding only {TICKET_FILE}", file=sys.stderr)
            sys.exit(2)
        restore_ticket(ticket, last)
        print(f"wrote {last}")
        return
    if not last.is_file() or args.model_dir is None or not args.model_dir.is_dir():
        print(
            "error: job: pack needs <job>/checkpoints/last.ckpt and --model-dir <folder> -> give both",
            file=sys.stderr,
        )
        sys.exit(2)
    init, init_std = _init_of(args.job, args.init, args.init_std)
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        prefixes = _sparse_prefixes(ckpt["state_dict"])
        shapes = _shapes_from_model_dir(args.model_dir, prefixes)
        modules = {p: {"shape": shapes[p], "init": init, "init_std": init_std} for p in prefixes}
        size = write_ticket(ckpt, ticket, modules)  # loaded once
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        print(f"error: job: {exc} -> pack the checkpoint written right after the last prune", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {ticket} ({size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
