"""The RIGSA adapter (methods ``rigsa`` and ``random_mask``): ``W = W0 + alpha * (mask ⊙ ΔW)`` around a frozen
linear layer, ΔW full rank and drawn at random from a per-module seed, pruned by iterative magnitude pruning.

* ``layer.py`` - :class:`DenseDeltaLinear`: the dense storage (the whole ΔW + a bool mask), and
  :class:`AdapterLayer`, the layer contract both storages share; ``PRUNED_VALUES``;
* ``sparse.py`` - :class:`SparseDeltaLinear`: the same adapter storing only the kept values + int32 indices;
* ``seeding.py`` - per-module seeds, the initial ΔW draw (whole or by row chunks), random masks;
* ``inject.py`` - :func:`inject_rigsa` (wrap the target linears), the gates, the optimizer parameter groups;
* ``storage.py`` - conversion between the two storages, the optimizer state across it, ``adapter.storage``.

Import order: ``seeding`` <- ``layer`` <- ``inject`` <- ``sparse`` <- ``storage``.
"""

from rigsa_lightning.adapters.rigsa.inject import adapter_param_groups, inject_rigsa, unique_alphas
from rigsa_lightning.adapters.rigsa.layer import PRUNED_VALUES, AdapterLayer, DenseDeltaLinear
from rigsa_lightning.adapters.rigsa.seeding import derive_seed, generate_initial_delta, random_mask_
from rigsa_lightning.adapters.rigsa.sparse import SparseDeltaLinear
from rigsa_lightning.adapters.rigsa.storage import (
    adapter_state_bytes,
    convert_adapters,
    storage_of,
    to_dense_storage,
    to_sparse_storage,
)

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
