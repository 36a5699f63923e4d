"""The initial ΔW of a RIGSA adapter and its random masks, both pure functions of seeds.

* :func:`derive_seed`: a module's seed from ``adapter.seed`` (or ``adapter.mask_seed``) and its module name;
* :func:`generate_initial_delta`: the whole initial ΔW (``kaiming_uniform`` | ``normal``), drawn on the CPU;
* :func:`initial_delta_chunks`: the same draw one row chunk at a time (rewinding without a dense temporary);
* :func:`random_mask_`: the fixed random masks of the ``random_mask`` baseline.

The initial ΔW is regenerated from its seed when needed (rewinding, ``pruned_value: init``) instead of being stored.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from rigsa_lightning.adapters.rigsa.constants import INIT_SCHEMES
from rigsa_lightning.config.errors import ConfigError

if TYPE_CHECKING:
    from rigsa_lightning.adapters.rigsa.layer import DenseDeltaLinear


def derive_seed(seed: int, name: str, purpose: str = "delta") -> int:
    """A 63-bit seed for one module, a pure function of ``(purpose, seed, module name)``.

    Using the module *name* (not its position in the target list) keeps a module's ΔW identical when other
    modules are added to or removed from ``adapter.targets``; hashing avoids the collisions of ``seed + index``
    between neighbouring seeds.
    """
    digest = hashlib.sha256(f"{purpose}:{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generate_initial_delta(
    shape: tuple[int, int] | torch.Size,
    seed: int,
    init: str = "kaiming_uniform",
    init_std: float = 0.02,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The initial ΔW (fp32) of a ``(out, in)`` matrix, drawn on the CPU from ``seed`` (identical on any device).

    ``kaiming_uniform`` equals ``nn.Linear.reset_parameters`` (``kaiming_uniform_(a=sqrt(5))``, i.e. uniform in
    ``±1/sqrt(in_features)``); ``normal`` draws N(0, init_std²).
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return _draw_rows(int(shape[0]), int(shape[1]), gen, init, init_std, device)


def _draw_rows(
    rows: int,
    in_features: int,
    gen: torch.Generator,
    init: str,
    init_std: float,
    device: torch.device | str | None,
) -> torch.Tensor:
    """The next ``rows`` rows of an initial ΔW from ``gen`` (CPU fp32 draw, then moved to ``device``)."""
    values = torch.empty(rows, in_features, dtype=torch.float32)
    if init == "kaiming_uniform":
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        values.uniform_(-bound, bound, generator=gen)
    elif init == "normal":
        values.normal_(0.0, float(init_std), generator=gen)
    else:
        raise ConfigError("adapter.init", f"unknown init {init!r}", f"use one of {list(INIT_SCHEMES)}")
    if device is not None and torch.device(device) != values.device:
        values = values.to(device)
    return values


def initial_delta_chunks(
    shape: tuple[int, int] | torch.Size,
    seed: int,
    slices: list[slice],
    init: str = "kaiming_uniform",
    init_std: float = 0.02,
    device: torch.device | str | None = None,
) -> Iterator[torch.Tensor]:
    """The rows ``slices`` (consecutive, from row 0, as :func:`row_chunks` makes them) of the initial ΔW, drawn one
    chunk at a time: only a chunk exists, never the whole matrix.

    CPU ``uniform_`` draws one number per entry in order, so consecutive chunks from one generator equal the whole
    draw. ``normal_`` transforms blocks of 16 draws (Box-Muller) and redraws a ragged tail at the end, so chunks
    match the whole draw only when every chunk but the last holds a multiple of 16 entries and the last at least
    16; otherwise the whole matrix is generated once and sliced. (tests/test_pruning.py checks both against
    :func:`generate_initial_delta`.)
    """
    out_features, in_features = int(shape[0]), int(shape[1])
    starts = [0] + [sl.stop for sl in slices[:-1]]
    if [sl.start for sl in slices] != starts or (slices and slices[-1].stop > out_features):
        raise ValueError("slices must be consecutive row ranges starting at row 0")
    sizes = [(sl.stop - sl.start) * in_features for sl in slices]
    streamable = init == "kaiming_uniform" or (
        all(n % 16 == 0 for n in sizes[:-1]) and (len(sizes) == 1 or sizes[-1] >= 16)
    )
    if not streamable:
        whole = generate_initial_delta(shape, seed, init, init_std, device)
        for sl in slices:
            yield whole[sl]
        return
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    for sl in slices:
        yield _draw_rows(sl.stop - sl.start, in_features, gen, init, init_std, device)


def random_mask_(adapters: dict[str, DenseDeltaLinear], density: float, seed: int) -> None:
    """Give every module a uniformly random mask with exactly ``round(density * numel)`` kept entries.

    The mask of a module depends only on ``(seed, module name)`` (same seed, same masks). Survivors restart from
    their initial ΔW and pruned entries are zero (the ``random_mask`` baseline: a fixed random sparse adapter).
    """
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ConfigError("adapter.density", f"{density} is outside (0, 1]", "use a density such as 0.5")
    counts = {name: int(round(density * module.mask.numel())) for name, module in adapters.items()}
    random_mask_counts_(adapters, counts, seed)


def random_mask_counts_(adapters: dict[str, DenseDeltaLinear], counts: dict[str, int], seed: int) -> None:
    """Give every module a uniformly random mask with exactly ``counts[name]`` kept entries.

    The random ticket of the lottery-ticket protocol: with the per-matrix counts of a RIGSA run's final mask, the
    ticket and this control keep the same number of entries in every matrix and differ only in which ones. The
    draw is the one of :func:`random_mask_` (a permutation seeded by ``(seed, module name)``, its first ``count``
    positions kept), so a uniform density gives the same masks through either function.
    """
    missing = sorted(set(adapters) - set(counts))
    if missing:
        raise ConfigError(
            "adapter.density_from",
            f"no kept count for module {missing[0]} ({len(missing)} modules missing)",
            "pair the random ticket with a RIGSA run of the same model and adapter.targets",
        )
    for name, module in adapters.items():
        numel = module.mask.numel()
        keep = int(counts[name])
        if not 0 <= keep <= numel:
            raise ConfigError(
                "adapter.density_from",
                f"module {name} keeps {keep} of {numel} entries",
                "pair the random ticket with a RIGSA run of the same model and adapter.targets",
            )
        gen = torch.Generator(device="cpu")
        gen.manual_seed(derive_seed(int(seed), name, "mask"))
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=gen)[:keep]] = True
        module.apply_mask(flat.view(module.mask.shape), rewind=True, pruned_value="zero")
