"""The RIGSA adapter (methods ``rigsa`` and ``random_mask``): ``W = W0 + alpha * (mask ⊙ ΔW)`` around a frozen
linear layer, ΔW full rank and drawn at random from a per-module seed, pruned by iterative magnitude pruning.

* ``method.py`` - the registry entries ``rigsa`` and ``random_mask`` (no torch at import);
* ``constants.py`` - the option choices (``PRUNED_VALUES``, ``GATES``, ``STORAGES``, ...), typed once (a leaf: the
  option table and the pruning schedule read them without torch);
* ``layer.py`` - :class:`DenseDeltaLinear`: the dense storage (the whole ΔW + a bool mask), and
  :class:`AdapterLayer`, the layer contract both storages share;
* ``sparse.py`` - :class:`SparseDeltaLinear`: the same adapter storing only the kept values + int32 indices;
* ``seeding.py`` - per-module seeds, the initial ΔW draw (whole or by row chunks), random masks;
* ``inject.py`` - :func:`inject_rigsa` (wrap the target linears), the gates, the optimizer parameter groups;
* ``storage.py`` - conversion between the two storages, the optimizer state across it, ``adapter.storage``;
* ``ticket.py`` - the random ticket's per-matrix counts; ``export.py`` - the sparse export (save, load, merge);
  ``peft_export.py`` - the PEFT SHiRA export.

Import order: ``seeding`` <- ``layer`` <- ``inject`` <- ``sparse`` <- ``storage``. Importing this package imports no
torch: the names below are loaded from their module on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rigsa_lightning.adapters.rigsa.constants import PRUNED_VALUES
    from rigsa_lightning.adapters.rigsa.inject import adapter_param_groups, inject_rigsa, unique_alphas
    from rigsa_lightning.adapters.rigsa.layer import AdapterLayer, DenseDeltaLinear
    from rigsa_lightning.adapters.rigsa.seeding import derive_seed, generate_initial_delta, random_mask_
    from rigsa_lightning.adapters.rigsa.sparse import SparseDeltaLinear
    from rigsa_lightning.adapters.rigsa.storage import (
        adapter_state_bytes,
        convert_adapters,
        storage_of,
        to_dense_storage,
        to_sparse_storage,
    )

_EXPORTS = {
    "PRUNED_VALUES": "constants",
    "AdapterLayer": "layer",
    "DenseDeltaLinear": "layer",
    "SparseDeltaLinear": "sparse",
    "adapter_param_groups": "inject",
    "adapter_state_bytes": "storage",
    "convert_adapters": "storage",
    "derive_seed": "seeding",
    "generate_initial_delta": "seeding",
    "inject_rigsa": "inject",
    "random_mask_": "seeding",
    "storage_of": "storage",
    "to_dense_storage": "storage",
    "to_sparse_storage": "storage",
    "unique_alphas": "inject",
}
__all__ = [
    "PRUNED_VALUES",
    "AdapterLayer",
    "DenseDeltaLinear",
    "SparseDeltaLinear",
    "adapter_param_groups",
    "adapter_state_bytes",
    "convert_adapters",
    "derive_seed",
    "generate_initial_delta",
    "inject_rigsa",
    "random_mask_",
    "storage_of",
    "to_dense_storage",
    "to_sparse_storage",
    "unique_alphas",
]


def __getattr__(attr: str) -> Any:
    """The public names, imported from their module on first access (so the package itself stays torch-free)."""
    if attr in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[attr]}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
