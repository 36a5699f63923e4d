"""The LightningModule: one module for every method; the adapter config group decides what is injected."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from rigsa_lightning.adapters import GATED_METHODS, PreparedModel, param_groups


class NonFiniteError(RuntimeError):
    """Raised when the loss or a gate becomes NaN/Inf; the run stops and keeps its last good checkpoint."""


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
        # Checkpoints only hold trainable tensors and adapter buffers (masks): the frozen base is reloaded from
        # the model config, so a checkpoint of a 135M model's rank-1 round is the adapter state, not 540 MB more.
        self.strict_loading = False
        self._register_digit_ids()

    def _register_digit_ids(self) -> None:
        self.register_buffer("_digit_ids", torch.tensor(self.digit_token_ids, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------ adapters
    def adapter_modules(self) -> dict[str, torch.nn.Module]:
        """The GatedSparseLinear modules by name (empty for LoRA/full/none)."""
        return self.prepared.gated

    def gates(self) -> list[torch.Tensor]:
        """The distinct gate parameters (alpha) of the gated adapters."""
        seen: dict[int, torch.Tensor] = {}
        for mod in self.prepared.gated.values():
            seen.setdefault(id(mod.alpha), mod.alpha)
        return list(seen.values())

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters and non-zero adapter entries (the budget a comparison should match)."""
        trainable = {id(p): p.numel() for p in self.model.parameters() if p.requires_grad}
        counts = {"params/trainable": int(sum(trainable.values()))}
        if self.method in GATED_METHODS:
            counts["params/adapter_nnz"] = int(sum(int(m.nnz()) for m in self.prepared.gated.values()))
            total = sum(m.mask.numel() for m in self.prepared.gated.values())
            counts["params/adapter_entries"] = int(total)
            # Alive entries only: what a sparse adapter actually trains once the pruned entries are fixed.
            counts["params/trainable_alive"] = counts["params/adapter_nnz"] + len(self.gates())
        elif self.method in ("lora", "qlora"):
            counts["params/adapter_nnz"] = counts["params/trainable"]
        elif self.method == "full":
            counts["params/adapter_nnz"] = counts["params/trainable"]
        else:
            counts["params/adapter_nnz"] = 0
        return counts

    # ------------------------------------------------------------------ steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the adapted model."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def _loss_and_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        shift_logits = logits[:, :-1, :].float()
        shift_labels = labels[:, 1:]
        loss = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100
        )
        return loss, logits

    def digit_accuracy(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fraction of examples whose argmax over the ten digit tokens at the answer position is right."""
        rows = torch.arange(logits.size(0), device=logits.device)
        digit_logits = logits[rows, batch["answer_pos"]][:, self._digit_ids]
        return (digit_logits.argmax(-1) == batch["digit"]).float().mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_and_logits(batch)
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"train loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}); "
                "the last good checkpoint is kept -> lower adapter.lr / adapter.alpha_lr or use trainer.precision=32-true"
            )
        bs = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The IMP callback re-applies masks itself; without it (random_mask) the module does, so AdamW's decoupled
        # decay can never move a pruned entry.
        enforce = not any(type(cb).__name__ == "IterativeMagnitudePruning" for cb in self.trainer.callbacks)
        for name, mod in self.prepared.gated.items():
            if enforce:
                mod.enforce_mask()
            if not torch.isfinite(mod.alpha).all():
                raise NonFiniteError(
                    f"gate {name}.alpha is {mod.alpha.detach().item()} at global step {self.global_step}; "
                    "the last good checkpoint is kept -> lower adapter.alpha_lr"
                )
        if self.prepared.gated and self.global_step % max(1, int(self.trainer.log_every_n_steps)) == 0:
            self.log_dict(self.gate_stats(), on_step=True, on_epoch=False)

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

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss_and_logits(batch)
        acc = self.digit_accuracy(logits, batch)
        bs = batch["input_ids"].size(0)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss_and_logits(batch)
        acc = self.digit_accuracy(logits, batch)
        bs = batch["input_ids"].size(0)
        self.log("test/loss", loss, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log("test/acc", acc, on_epoch=True, batch_size=bs, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        counts = self.parameter_counts()
        self.log_dict({k: float(v) for k, v in counts.items()}, on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        groups = param_groups(self.prepared, self.cfg.adapter)
        if not groups:
            raise RuntimeError("adapter.method=none has nothing to train (the train job skips fitting)")
        optim_cfg = self.cfg.optim
        optimizer = torch.optim.AdamW(
            groups,
            lr=float(self.cfg.adapter.lr),
            betas=tuple(float(b) for b in optim_cfg.betas),
            eps=float(optim_cfg.eps),
        )
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        per_epoch = max(1, total // epochs)
        if bool(optim_cfg.get("restart_per_round", True)) and len(self.segment_epochs) > 1:
            segments = [e * per_epoch for e in self.segment_epochs]
        else:
            segments = [total]
        kind = str(optim_cfg.get("scheduler", "cosine"))
        warmup = float(optim_cfg.get("warmup_ratio", 0.0))
        min_ratio = float(optim_cfg.get("min_lr_ratio", 0.0))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, segments, warmup, min_ratio, kind)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def _kept_state_keys(self) -> set[str]:
        keys = {f"model.{n}" for n, p in self.model.named_parameters(remove_duplicate=False) if p.requires_grad}
        for mname, mod in self.prepared.gated.items():
            for bname, _ in mod.named_buffers():
                keys.add(f"model.{mname}.{bname}")
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        kept = self._kept_state_keys()
        state = checkpoint["state_dict"]
        for key in list(state):
            if key not in kept:
                del state[key]
