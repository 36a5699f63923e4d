"""The LightningModule: one module for every method; the adapter config group decides what is injected.

(Slightly over ~500 lines: the Lightning hooks of one module — steps, optimizers, clipping, checkpoint state —
stay together; the storage conversion lives in adapters/rigsa/storage.py, the loss head in head.py.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
from typing import Any

import lightning as L
import numpy as np
import torch

from rigsa_lightning.adapters import PreparedModel, param_groups
from rigsa_lightning.adapters.registry import get_method

log = logging.getLogger(__name__)

# Test-only fault injection (read once per module instance; never set them in real runs):
#   RIGSA_TEST_KILL_AT_STEP=<n>  SIGKILL this process when global step <n> starts (kill-and-resume test);
#   RIGSA_TEST_NAN_AT_STEP=<n>   set one gate (alpha) to NaN when global step <n> starts (NaN-stop test).
KILL_AT_STEP_ENV = "RIGSA_TEST_KILL_AT_STEP"
NAN_AT_STEP_ENV = "RIGSA_TEST_NAN_AT_STEP"
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


class NonFiniteError(RuntimeError):
    """Raised when the loss or a gate becomes NaN/Inf; the run stops and keeps its last good checkpoint."""


def _env_step(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


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


def lr_factor(step: int, segments: list[int], warmup_ratio: float, min_ratio: float, kind: str) -> float:
    """LR multiplier at optimizer ``step`` for a schedule that restarts at each segment boundary.

    ``segments`` are the lengths in optimizer steps of consecutive phases (one per IMP round, then the final
    retraining); within each: linear warmup over ``warmup_ratio`` of the phase, then ``kind`` decay (cosine,
    linear, constant) down to ``min_ratio``. Past the last segment the last value is kept.
    """
    length = segments[-1]
    for seg in segments:
        if step < seg:
            length = seg
            break
        step -= seg
    else:  # past the planned steps: hold the final value
        step = segments[-1] - 1
    length = max(1, length)
    warm = int(round(warmup_ratio * length))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if kind == "constant":
        return 1.0
    progress = (step - warm) / max(1, length - warm)
    if kind == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def phase_lr_scales(
    base_lr: float, round_lr: float | None, final_lr: float | None, n_segments: int, n_rounds: int
) -> list[float]:
    """Per-segment multiplier of the adapter weights' learning rate: ``round_lr / base_lr`` for the first
    ``n_rounds`` segments (the IMP rounds), ``final_lr / base_lr`` for the rest (the final retraining, or the only
    phase of a method without rounds); a ``None`` rate keeps ``base_lr`` (multiplier 1)."""
    base = float(base_lr)

    def scale(rate: float | None) -> float:
        return 1.0 if rate is None or base == 0 else float(rate) / base

    return [scale(round_lr) if i < n_rounds else scale(final_lr) for i in range(n_segments)]


def segment_at(step: int, segments: list[int]) -> int:
    """Index of the segment (lengths in steps) that optimizer ``step`` falls in; past the end, the last one."""
    for index, length in enumerate(segments):
        if step < length:
            return index
        step -= length
    return max(0, len(segments) - 1)


ADAMW_IMPLS = {"fused": {"fused": True}, "loop": {"foreach": False}, "foreach": {"foreach": True}}


def adamw_impl_kwargs(impl: str) -> dict[str, bool]:
    """``torch.optim.AdamW`` keyword arguments of ``optim.impl``.

    ``fused`` is the default: on the dense RIGSA round's 106 M entries (SmolLM2-135M's 210 block matrices) its step
    took 0.23x the time of the per-tensor loop (torch's CPU default) and 0.34x on the sparse storage's kept values
    (``python -m bench.run --only optimizer``, 1 thread); it equals the loop up to fp32 rounding (not bitwise).
    """
    from rigsa_lightning.config.errors import ConfigError

    if impl not in ADAMW_IMPLS:
        raise ConfigError(
            "optim.impl", f"unknown AdamW implementation {impl!r}", f"use one of {list(ADAMW_IMPLS)}"
        )
    return dict(ADAMW_IMPLS[impl])


def has_pruning_callback(callbacks: list[Any]) -> bool:
    """Whether an IMP pruning callback (:class:`~rigsa_lightning.pruning.IterativeMagnitudePruning` or a subclass)
    is among ``callbacks`` (it then re-applies the masks itself)."""
    from rigsa_lightning.pruning.callback import (
        IterativeMagnitudePruning,  # lazy: pruning imports adapters/ at import time
    )

    return any(isinstance(cb, IterativeMagnitudePruning) for cb in callbacks)


class RigsaLitModule(L.LightningModule):
    """Trains the injected adapter on Textual MNIST (loss on the answer tokens only).

    Logs ``train/loss``, ``val/loss``, ``val/acc`` (argmax over the ten digit tokens at the answer position),
    the learning rate, gate (alpha) statistics and trainable / non-zero parameter counts.
    """

    def __init__(
        self,
        prepared: PreparedModel,
        cfg: Any,
        digit_token_ids: list[int],
        segment_epochs: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.prepared = prepared
        self.model = prepared.model
        self.cfg = cfg
        self.method = prepared.method
        self.digit_token_ids = list(digit_token_ids)
        self.segment_epochs = list(segment_epochs or [int(cfg.trainer.get("max_epochs") or 1)])
        # The leading segments that are IMP rounds (train.segment_epochs: one per round, then the final phase).
        pruning_cfg = cfg.get("pruning") or {}
        rounds = int(pruning_cfg.get("rounds") or 0) if get_method(prepared.method).prunes else 0
        segmented = bool(pruning_cfg.get("enabled", True)) and len(self.segment_epochs) in (
            rounds,
            rounds + 1,
        )
        self.n_round_segments = rounds if rounds > 0 and segmented else 0
        # Checkpoints only hold trainable tensors and adapter buffers (masks): the frozen base is reloaded from
        # the model config, so a checkpoint of a 135M model's rank-1 round is the adapter state, not 540 MB more.
        self.strict_loading = False
        self._register_digit_ids()
        self.adapter_storage = "dense"  # resolved in setup() (see resolve_storage)
        self.adapter_state_history: list[dict[str, Any]] = []
        self._kill_at_step = _env_step(KILL_AT_STEP_ENV)
        self._nan_at_step = _env_step(NAN_AT_STEP_ENV)

    def _register_digit_ids(self) -> None:
        self.register_buffer(
            "_digit_ids", torch.tensor(self.digit_token_ids, dtype=torch.long), persistent=False
        )

    # ------------------------------------------------------------------ adapters
    def adapter_modules(self) -> dict[str, torch.nn.Module]:
        """The gated adapters by name (DenseDeltaLinear, or SparseDeltaLinear once stored sparse; empty for
        LoRA/full/none). The dict object stays the same when the storage changes."""
        return self.prepared.gated

    # ------------------------------------------------------------------ storage
    def resolve_storage(self) -> str:
        """``adapter.storage`` resolved against the trainer: ``sparse`` or ``dense``.

        ``auto`` (default) stores pruned adapters sparse on a single-device strategy and dense under DDP/FSDP,
        whose wrappers cannot follow the parameters changing after a prune; ``sparse`` there is an error.
        """
        from rigsa_lightning.adapters.rigsa.storage import multi_device_error, storage_options

        value, _ = storage_options(self.cfg.adapter)
        if not get_method(self.method).gated:
            return "dense"
        from lightning.pytorch.strategies import SingleDeviceStrategy

        trainer = self._trainer
        single = trainer is None or isinstance(trainer.strategy, SingleDeviceStrategy)
        if value == "sparse" and not single:
            raise multi_device_error(type(trainer.strategy).__name__)
        return "sparse" if value == "sparse" or (value == "auto" and single) else "dense"

    def setup(self, stage: str) -> None:
        """Resolve the adapter storage; a fixed random mask (random_mask) is stored sparse from the start."""
        self.adapter_storage = self.resolve_storage()
        if self.adapter_storage == "sparse" and any(
            m.nnz() < m.numel() for m in self.prepared.gated.values()
        ):
            self.set_adapter_storage("sparse")

    def set_adapter_storage(self, storage: str) -> None:
        """Convert every gated adapter to ``storage`` (``sparse`` | ``dense``), in the model and in
        :meth:`adapter_modules`; during a fit the optimizer and LR scheduler follow with their state (see
        :func:`~rigsa_lightning.adapters.rigsa.storage.switch_storage`)."""
        from rigsa_lightning.adapters.rigsa.storage import switch_storage

        switch_storage(self.model, self.prepared.gated, storage, self.cfg.adapter, self._trainer)

    def gates(self) -> list[torch.Tensor]:
        """The distinct gate parameters (alpha) of the gated adapters."""
        seen: dict[int, torch.Tensor] = {}
        for mod in self.prepared.gated.values():
            seen.setdefault(id(mod.alpha), mod.alpha)
        return list(seen.values())

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters and non-zero adapter entries (the budget a comparison should match)."""
        return get_method(self.method).parameter_counts(self.prepared)

    # ------------------------------------------------------------------ steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the adapted model."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def _loss_and_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shifted cross-entropy (fp32) over the supervised labels and the logits ``[batch, vocab]`` at
        ``answer_pos`` (None without it). The LM head runs at those positions only (``rigsa_lightning.models.head``):
        the loss equals the full-logits loss, and the model falls back to the full forward when its head is not a
        plain linear layer (or with ``lm_head=full``)."""
        from rigsa_lightning.models.head import check_lm_head, supervised_loss_and_answer_logits

        full_head = check_lm_head(self.cfg.get("lm_head", "scored"))
        return supervised_loss_and_answer_logits(self.model, batch, full_head=full_head)

    def digit_accuracy(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fraction of examples whose argmax over the ten digit tokens at the answer position is right.

        ``logits`` are the answer position's ``[batch, vocab]`` (as :meth:`_loss_and_logits` returns them) or a
        whole ``[batch, seq, vocab]`` tensor."""
        from rigsa_lightning.data.prompt import textual_mnist_accuracy

        return textual_mnist_accuracy(logits, batch, self.digit_token_ids)

    def nonfinite_tensors(self, limit: int = 3) -> list[str]:
        """``name (nan|inf)`` of up to ``limit`` trainable tensors holding NaN/Inf (only called on failure)."""
        found: list[str] = []
        for name, p in self.model.named_parameters():
            if p.requires_grad and not bool(torch.isfinite(p.detach()).all()):
                kind = "nan" if bool(torch.isnan(p.detach()).any()) else "inf"
                found.append(f"{name} ({kind})")
                if len(found) >= limit:
                    break
        return found

    def _nonfinite(self, what: str, fix: str) -> NonFiniteError:
        bad = self.nonfinite_tensors()
        where = (
            f"non-finite tensors: {', '.join(bad)}"
            if bad
            else "all parameters are finite (overflow in the forward)"
        )
        return NonFiniteError(
            f"{what} at global step {self.global_step} (epoch {self.current_epoch}); {where}; the run stops and "
            f"keeps the last good checkpoint -> {fix}"
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_and_logits(batch)
        if not torch.isfinite(loss):
            raise self._nonfinite(
                f"train loss is {loss.item()}",
                "lower adapter.lr / adapter.alpha_lr or use trainer.precision=32-true",
            )
        bs = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The IMP callback re-applies masks itself; without it (random_mask) the module does, so AdamW's decoupled
        # decay can never move a pruned entry.
        enforce = not has_pruning_callback(self.trainer.callbacks)
        for name, mod in self.prepared.gated.items():
            if enforce:
                mod.enforce_mask()
            if not torch.isfinite(mod.alpha).all():
                raise self._nonfinite(
                    f"gate {name}.alpha is {mod.alpha.detach().item()}", "lower adapter.alpha_lr"
                )
        if self.prepared.gated and self.global_step % max(1, int(self.trainer.log_every_n_steps)) == 0:
            self.log_dict(self.gate_stats(), on_step=True, on_epoch=False)
        if batch_idx == 0 and self.prepared.gated:
            self._record_adapter_state()

    def _record_adapter_state(self) -> None:
        """After the first step of an epoch (grads and AdamW moments exist): bytes of the adapters' training state
        (ΔW or kept values, grads, moments, masks or indices, gates), logged as ``memory/adapter_state_mb`` and kept
        per epoch in :attr:`adapter_state_history` (``metrics.json``: ``memory/adapter_state``)."""
        from rigsa_lightning.adapters.rigsa.storage import adapter_state_bytes, storage_of

        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        state = adapter_state_bytes(self.prepared.gated, optimizer)
        storage = {storage_of(m) for m in self.prepared.gated.values()}
        self.adapter_state_history.append(
            {
                "epoch": int(self.current_epoch),
                "storage": "/".join(sorted(storage)),
                "nnz": int(sum(m.nnz() for m in self.prepared.gated.values())),
                **{f"{k}_bytes": int(v) for k, v in state.items()},
            }
        )
        self.log("memory/adapter_state_mb", state["total"] / 2**20, on_step=True, on_epoch=False)

    def gate_stats(self) -> dict[str, float]:
        """Mean / min / max / mean-|alpha| of the gates."""
        gates = self.gates()
        if not gates:
            return {}
        a = torch.stack([g.detach().float().reshape(()) for g in gates])
        return {
            "alpha/mean": a.mean().item(),
            "alpha/min": a.min().item(),
            "alpha/max": a.max().item(),
            "alpha/abs_mean": a.abs().mean().item(),
        }

    def _eval_metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss`` and ``acc`` (and any extra metric) of an evaluation batch: a data module with its own
        ``score_batch`` (``data/chat.py``: ``acc`` = exact match of the greedy completion) scores it, else the
        Textual MNIST digit accuracy."""
        score = getattr(getattr(self._trainer, "datamodule", None), "score_batch", None)
        if score is not None:
            from rigsa_lightning.models.head import check_lm_head

            return score(self.model, batch, full_head=check_lm_head(self.cfg.get("lm_head", "scored")))
        loss, logits = self._loss_and_logits(batch)
        assert logits is not None, "Textual MNIST batches carry answer_pos"
        return {"loss": loss, "acc": self.digit_accuracy(logits, batch)}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        bs = batch["input_ids"].size(0)
        for name, value in self._eval_metrics(batch).items():
            prog_bar = name in ("loss", "acc")
            self.log(f"val/{name}", value, prog_bar=prog_bar, on_epoch=True, batch_size=bs, sync_dist=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        bs = batch["input_ids"].size(0)
        for name, value in self._eval_metrics(batch).items():
            self.log(f"test/{name}", value, on_epoch=True, batch_size=bs, sync_dist=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Test-only fault injection (see KILL_AT_STEP_ENV / NAN_AT_STEP_ENV); no-ops unless the variables are set.
        step = int(self.global_step)
        if self._kill_at_step is not None and step == self._kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if self._nan_at_step is not None and step == self._nan_at_step and self.prepared.gated:
            with torch.no_grad():
                next(iter(self.prepared.gated.values())).alpha.fill_(float("nan"))

    def on_train_epoch_start(self) -> None:
        counts = self.parameter_counts()
        self.log_dict({k: float(v) for k, v in counts.items()}, on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        groups = param_groups(self.prepared, self.cfg.adapter)
        if not groups:
            raise RuntimeError("adapter.method=none has nothing to train (the train job skips fitting)")
        optim_cfg = self.cfg.optim
        impl = str(optim_cfg.get("impl", "fused"))
        if impl == "fused" and self._grad_scaler() is not None and self.trainer.gradient_clip_val:
            # fp16 with a GradScaler: a fused AdamW unscales inside its step, after clipping would have run on the
            # scaled gradients (Lightning refuses the combination); the per-tensor loop takes the same steps.
            log.info("optim.impl=fused with a gradient scaler and clipping: using AdamW's per-tensor loop")
            impl = "loop"
        optimizer = torch.optim.AdamW(
            groups,
            lr=float(self.cfg.adapter.lr),
            betas=tuple(float(b) for b in optim_cfg.betas),
            eps=float(optim_cfg.eps),
            **adamw_impl_kwargs(impl),
        )
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        per_epoch = max(1, total // epochs)
        phases = [e * per_epoch for e in self.segment_epochs]
        if bool(optim_cfg.get("restart_per_round", True)) and len(self.segment_epochs) > 1:
            segments = phases
        else:
            segments = [total]
        kind = str(optim_cfg.get("scheduler", "cosine"))
        warmup = float(optim_cfg.get("warmup_ratio", 0.0))
        min_ratio = float(optim_cfg.get("min_lr_ratio", 0.0))
        # Per-phase rates (pruning.round_lr / final_lr) scale every group but the gates (adapter.alpha_lr).
        pruning_cfg = self.cfg.get("pruning") or {}
        scales = phase_lr_scales(
            float(self.cfg.adapter.lr),
            pruning_cfg.get("round_lr"),
            pruning_cfg.get("final_lr"),
            len(phases),
            self.n_round_segments,
        )

        def weights(step: int) -> float:
            return lr_factor(step, segments, warmup, min_ratio, kind) * scales[segment_at(step, phases)]

        def gates(step: int) -> float:
            return lr_factor(step, segments, warmup, min_ratio, kind)

        lambdas = [gates if group.get("name") == "alpha" else weights for group in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _grad_scaler(self) -> Any:
        """The precision plugin's GradScaler (fp16 mixed precision), or None."""
        trainer = self._trainer
        return getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as Lightning does, also before a fused AdamW step under ``bf16-mixed``.

        Lightning's mixed-precision plugin refuses to clip for any optimizer that could unscale gradients inside its
        step (fused AdamW), but bf16 has no GradScaler: the gradients are never scaled, so clipping them is exact.
        """
        from lightning.pytorch.plugins.precision import MixedPrecision, Precision
        from lightning.pytorch.utilities.enums import GradClipAlgorithmType

        plugin = self.trainer.precision_plugin
        if isinstance(plugin, MixedPrecision) and plugin.scaler is None and gradient_clip_val:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, float(gradient_clip_val), algorithm)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ checkpoints
    def _kept_state_keys(self) -> set[str]:
        keys = {
            f"model.{n}" for n, p in self.model.named_parameters(remove_duplicate=False) if p.requires_grad
        }
        for mname, mod in self.prepared.gated.items():
            for bname, _ in mod.named_buffers():
                keys.add(f"model.{mname}.{bname}")
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the adapter state, refuse to write a non-finite one, and add RNG states and the config.

        Raising here aborts the save before Lightning writes anything, so ``last.ckpt`` stays the last good state.
        """
        kept = self._kept_state_keys()
        state = checkpoint["state_dict"]
        for key in list(state):
            if key not in kept:
                del state[key]
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise self._nonfinite(
                    f"checkpoint tensor {key} holds NaN/Inf (not saved)",
                    "lower adapter.lr / adapter.alpha_lr or use trainer.precision=32-true",
                )
        checkpoint[CKPT_KEY] = {
            "format": CKPT_FORMAT,
            "rng": capture_rng_state(),
            "config": trajectory_config(self.cfg),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the checkpoint's global RNG states (python, NumPy, torch, CUDA).

        Applied at once: Lightning restores the module first, then sets up optimizers and loops without drawing
        random numbers, and a resumed epoch creates its train-loader iterator (one torch draw for its base seed)
        before the first batch, exactly as the uninterrupted run does after the epoch-end save.
        """
        extra = checkpoint.get(CKPT_KEY) or {}
        if extra.get("rng") is not None:
            restore_rng_state(extra["rng"])
        self._match_checkpoint_storage(checkpoint.get("state_dict") or {})

    def _match_checkpoint_storage(self, state: dict[str, Any]) -> None:
        """Lay the gated adapters out as the checkpoint stores them (sparse ``values``/``indices`` or dense
        ``delta``/``mask``) before Lightning loads it (and builds the optimizer on those parameters); the configured
        storage takes over at the next prune."""
        from rigsa_lightning.adapters.rigsa.storage import match_checkpoint_storage

        match_checkpoint_storage(self.model, self.prepared.gated, state, self.cfg.adapter)
