"""The LightningModule: one module for every method; the adapter config group decides what is injected.

The Lightning hooks of one module (steps, optimizers, clipping, checkpoint state) stay together; the learning-rate
schedule is in ``schedule.py``, what a checkpoint holds in ``checkpoint.py``, the storage conversion in
``adapters/rigsa/storage.py``, the loss head in ``models/head.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from rigsa_lightning.adapters import PreparedModel, param_groups
from rigsa_lightning.adapters.registry import get_method
from rigsa_lightning.training.checkpoint import (
    CKPT_FORMAT,
    CKPT_KEY,
    capture_rng_state,
    restore_rng_state,
    trajectory_config,
)
from rigsa_lightning.training.faults import FaultInjection
from rigsa_lightning.training.gated import GatedAdapterHooks
from rigsa_lightning.training.schedule import adamw_impl_kwargs, lr_factor, phase_lr_scales, segment_at

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Raised when the loss or a gate becomes NaN/Inf; the run stops and keeps its last good checkpoint."""


def has_pruning_callback(callbacks: list[Any]) -> bool:
    """Whether an IMP pruning callback (:class:`~rigsa_lightning.pruning.IterativeMagnitudePruning` or a subclass)
    is among ``callbacks`` (it then re-applies the masks itself)."""
    from rigsa_lightning.pruning.callback import (
        IterativeMagnitudePruning,  # lazy: pruning imports adapters/ at import time
    )

    return any(isinstance(cb, IterativeMagnitudePruning) for cb in callbacks)


class RigsaLitModule(GatedAdapterHooks, L.LightningModule):
    """Trains the injected adapter on Textual MNIST (loss on the answer tokens only).

    Logs ``train/loss_step`` / ``train/loss_epoch``, ``val/loss``, ``val/acc`` (argmax over the ten digit tokens at
    the answer position), the learning rate, gate (alpha) statistics and trainable / non-zero parameter counts.
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
        self._faults = FaultInjection.from_env()
        # The epoch's training loss, summed over its batches (weighted by batch size; a float32 tensor on the loss's
        # device once a step ran, so a step adds no host sync) and kept in the checkpoint, so a run resumed mid-epoch
        # logs the same train/loss_epoch as an uninterrupted one.
        self._epoch_loss_sum: float | torch.Tensor = 0.0
        self._epoch_loss_items = 0
        self._counts_epoch: int | None = None  # the epoch whose parameter counts were logged

    def _register_digit_ids(self) -> None:
        self.register_buffer(
            "_digit_ids", torch.tensor(self.digit_token_ids, dtype=torch.long), persistent=False
        )

    def setup(self, stage: str) -> None:
        """Resolve the adapter storage (:meth:`~GatedAdapterHooks.setup_storage`)."""
        self.setup_storage()

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
        self.log("train/loss_step", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        self._epoch_loss_sum = self._epoch_loss_sum + loss.detach().float() * bs
        self._epoch_loss_items += bs
        return loss

    def on_train_epoch_end(self) -> None:
        """Log ``train/loss_epoch`` (the batch-size-weighted mean of the epoch's training losses) and start over."""
        if self._epoch_loss_items:
            self.log(
                "train/loss_epoch",
                float(self._epoch_loss_sum) / self._epoch_loss_items,
                on_step=False,
                on_epoch=True,
            )
        self._epoch_loss_sum, self._epoch_loss_items = 0.0, 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.gated_batch_end(batch_idx, enforce=not has_pruning_callback(self.trainer.callbacks))

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
        self._faults.at_step_start(int(self.global_step), self.prepared.gated)
        if self._counts_epoch != self.current_epoch:  # once per epoch, also in an epoch resumed mid-way
            self._counts_epoch = int(self.current_epoch)
            counts = self.parameter_counts()
            self.log_dict({k: float(v) for k, v in counts.items()}, on_step=False, on_epoch=True)

    def on_train_start(self) -> None:
        """Each group's rate from this run's schedule at the restored step. A run started from another run's
        checkpoint (a winning ticket retrained at another ``pruning.final_lr``) restores that run's optimizer, whose
        rates its own options computed; without this its first step would run at them. A run continuing its own
        checkpoint or starting fresh gets the rates it has (the product ``LambdaLR`` computes)."""
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                for group, base, lam in zip(
                    sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True
                ):
                    group["lr"] = base * lam(sched.last_epoch)

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
            "epoch_loss": [float(self._epoch_loss_sum), self._epoch_loss_items],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the checkpoint's global RNG states (python, NumPy, torch, CUDA) and the epoch's summed loss.

        Applied at once: Lightning restores the module first, then sets up optimizers and loops without drawing
        random numbers, and the training loader's iterators draw their base seeds from the loader's own generator
        (``data/batching.py``), so the first step after the resume sees the global state the checkpoint saved, at an
        epoch end or mid-epoch alike.
        """
        extra = checkpoint.get(CKPT_KEY) or {}
        if extra.get("rng") is not None:
            restore_rng_state(extra["rng"])
        if extra.get("epoch_loss") is not None:
            self._epoch_loss_sum, self._epoch_loss_items = (
                float(extra["epoch_loss"][0]),
                int(extra["epoch_loss"][1]),
            )
        self._match_checkpoint_storage(checkpoint.get("state_dict") or {})
