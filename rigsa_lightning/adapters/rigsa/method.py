"""The gated sparse methods: ``rigsa`` (random ΔW, pruned by IMP) and ``random_mask`` (same adapter, a fixed
random mask). Registry entries (no torch at import): the adapter is this folder, its export ``export.py``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.base import (
    AdapterMethod,
    PreparedModel,
    finite_or_none,
    load_base,
    trainable_count,
)
from rigsa_lightning.adapters.seeds import MASK_SEED
from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.pruning.schedule import PruningSchedule


def resolve_random_mask_density(adapter_cfg: Any, pruning_cfg: Any) -> float:
    """Density of a random mask: ``adapter.density``, or (when null) the final density of the pruning schedule."""
    density = get(adapter_cfg, "density")
    if density is None:
        schedule = PruningSchedule.from_cfg(pruning_cfg)
        density = schedule.final_density
        if density is None:
            raise ConfigError(
                "adapter.density",
                "random_mask needs a density but the pruning schedule's final density is data dependent "
                "(keep_of=sign_stable)",
                "set adapter.density=<value>, e.g. 0.0346 (experiment=random_mask_paper)",
            )
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ConfigError("adapter.density", f"{density} is outside (0, 1]", "use a density such as 0.5")
    return density


class GatedSparseMethod(AdapterMethod):
    """What ``rigsa`` and ``random_mask`` share: ``DenseDeltaLinear`` adapters, the sparse export."""

    gated = True
    export_kind = "sparse"
    export_file = "adapter.safetensors"  # export.WEIGHTS_NAME

    def prepare(self, cfg: Any, cache_dir: str | os.PathLike | None) -> PreparedModel:
        """The base model with a ``DenseDeltaLinear`` on every target linear."""
        from rigsa_lightning.adapters.rigsa.inject import inject_rigsa

        model, tok, key = load_base(cfg, cache_dir)
        gated = inject_rigsa(model, cfg.adapter)
        return PreparedModel(model, tok, self.name, key, gated=gated)

    def param_groups(self, prepared: PreparedModel, adapter_cfg: Any) -> list[dict]:
        """ΔW and the gates (alpha), each with its learning rate."""
        from rigsa_lightning.adapters.rigsa.inject import adapter_param_groups

        return adapter_param_groups(prepared.gated, adapter_cfg)

    def parameter_counts(self, prepared: PreparedModel) -> dict[str, int]:
        """Trainable entries, kept (non-zero) adapter entries, all adapter entries, and the alive trainable ones."""
        counts = {"params/trainable": trainable_count(prepared.model)}
        counts["params/adapter_nnz"] = int(sum(int(m.nnz()) for m in prepared.gated.values()))
        counts["params/adapter_entries"] = int(sum(m.numel() for m in prepared.gated.values()))
        # Alive entries only: what a sparse adapter actually trains once the pruned entries are fixed.
        gates = {id(m.alpha) for m in prepared.gated.values()}
        counts["params/trainable_alive"] = counts["params/adapter_nnz"] + len(gates)
        return counts

    def export(self, prepared: PreparedModel, cfg: Any, folder: Path) -> Path | None:
        """The sparse adapter (kept values + indices, gates, config) in ``folder``."""
        from omegaconf import OmegaConf

        from rigsa_lightning.adapters.rigsa.export import save_sparse_adapter

        save_sparse_adapter(
            prepared.gated,
            folder,
            base_model=str(cfg.model.name_or_path),
            adapter_cfg=OmegaConf.to_container(cfg.adapter, resolve=True),
            pruning_cfg=OmegaConf.to_container(cfg.pruning, resolve=True),
        )
        return folder

    def load_export(self, model: Any, folder: Path) -> Any:
        """Inject the exported sparse adapter into ``model``."""
        from rigsa_lightning.adapters.rigsa.export import load_sparse_adapter

        load_sparse_adapter(model, folder)
        return model

    def merge(self, model: Any) -> Any:
        """Every gated adapter replaced by its base linear with ``W0 + alpha·ΔW`` baked in."""
        from rigsa_lightning.adapters.rigsa.export import merge_adapter

        return merge_adapter(model)

    def config_density(self, get: Callable[[str], float]) -> float | None:
        """``1 - pruning.sparsity``."""
        sparsity = get("pruning.sparsity")
        return 1.0 - sparsity if math.isfinite(sparsity) else None


class Rigsa(GatedSparseMethod):
    """RIGSA: the gated sparse adapter pruned by iterative magnitude pruning."""

    name = "rigsa"
    prunes = True
    label = "RIGSA"
    order = 1
    color = "#1f77b4"

    def run_tags(self, cfg: Any) -> list[str]:
        """The target sparsity."""
        return [f"sparsity:{cfg.pruning.get('sparsity')}"]


class RandomMask(GatedSparseMethod):
    """The same adapter with a fixed random mask at a matched density (no pruning)."""

    name = "random_mask"
    label = "random mask"
    order = 2
    color = "#ff7f0e"

    def prepare(self, cfg: Any, cache_dir: str | os.PathLike | None) -> PreparedModel:
        """The gated adapters with a random mask of ``adapter.density`` (or the schedule's final density)."""
        from rigsa_lightning.adapters.rigsa.seeding import random_mask_, random_mask_counts_

        source = cfg.adapter.get("density_from")
        counts = None
        # the random ticket: the paired RIGSA run's per-matrix counts (read before the model loads)
        if source:
            from rigsa_lightning.adapters.rigsa.ticket import read_ticket_counts

            ticket = read_ticket_counts(source)
        prepared = super().prepare(cfg, cache_dir)
        mask_seed = int(cfg.adapter.get("mask_seed", MASK_SEED))
        if source:
            counts = ticket.kept_counts({n: m.mask.numel() for n, m in prepared.gated.items()})
            random_mask_counts_(prepared.gated, counts, mask_seed)
        else:
            random_mask_(prepared.gated, resolve_random_mask_density(cfg.adapter, cfg.pruning), mask_seed)
        return prepared

    def check(self, cfg: Any) -> None:
        """``adapter.density_from``: a readable RIGSA run (before the model loads)."""
        super().check(cfg)
        source = cfg.adapter.get("density_from")
        if source:
            from rigsa_lightning.adapters.rigsa.ticket import read_ticket_counts

            read_ticket_counts(source)
        elif cfg.adapter.get("density") is None:
            density = resolve_random_mask_density(cfg.adapter, cfg.pruning)
            if density >= 1.0:
                raise ConfigError(
                    "adapter.density_from",
                    "random_mask has no density (adapter.density is null and the pruning schedule keeps every entry)",
                    "set adapter.density_from=<rigsa run folder> (the random ticket) or adapter.density=<value>",
                )

    def run_tags(self, cfg: Any) -> list[str]:
        """The mask density (``ticket``: per-matrix counts of a RIGSA run)."""
        if cfg.adapter.get("density_from"):
            return ["density:ticket"]
        return [f"density:{cfg.adapter.get('density')}"]

    def config_density(self, get: Callable[[str], float]) -> float | None:
        """``adapter.density``, else ``1 - pruning.sparsity``."""
        density = finite_or_none(get("adapter.density"))
        return density if density is not None else super().config_density(get)
