"""The RIGSA adapter: a frozen linear layer plus a gated, masked, randomly initialised full-rank ΔW.

``y = x @ (W0 + alpha * effective_delta())ᵀ + b`` with

* ``W0``, ``b`` the frozen base weights;
* ``delta`` (ΔW, fp32, full rank) drawn at random from a per-module seed (so the initial ΔW can be regenerated for
  rewinding instead of being stored);
* ``alpha`` a learnable gate (ReZero analog) initialised at ``alpha_init`` (1e-6): at init the adapted model equals
  the base model to ~1e-6 relative, yet ΔW and alpha both receive gradients;
* ``mask`` a bool buffer (persistent: it lives in checkpoints): pruned entries are zero (``pruned_value: zero``)
  or frozen at their initial value (``pruned_value: init``).

The module follows PEFT's layer contract (``base_layer``, ``get_delta_weight``, ``merge``, ``unmerge``). See
docs/ARCHITECTURE.md for the contract and ``rigsa_lightning/conf/adapter/rigsa.yaml`` for the options.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rigsa_lightning.adapters.chunks import float_mask, row_chunks
from rigsa_lightning.adapters.targets import find_target_linears, replace_module
from rigsa_lightning.config import get
from rigsa_lightning.errors import ConfigError

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
INIT_SCHEMES = ("kaiming_uniform", "normal")
GATES = ("matrix", "layer", "global")
FORWARD_MODES = ("merged", "two_matmul")
KEEP_INIT = ("regenerate", "copy")
PRUNED_VALUES = ("zero", "init")

_BLOCK_PREFIX = re.compile(r"^(.*?(?:^|\.)\d+)(?:\.|$)")


# ``adapter.<key>: null`` means the default.
_get = functools.partial(get, null_is_default=True)


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


def gate_key(name: str, gate: str) -> str:
    """The key of the alpha a module uses: its own name (matrix), its block ``...layers.<i>`` (layer), or global."""
    if gate == "matrix":
        return name
    if gate == "global":
        return "global"
    match = _BLOCK_PREFIX.match(name)
    return match.group(1) if match else name


class AdapterLayer(nn.Module):
    """What both storages of the gated adapter share (PEFT-style layer contract): the frozen ``base_layer`` and
    its ``weight``/``bias``, the ΔW seed (``delta_seed`` buffer), and ``merge``/``unmerge`` of
    ``get_delta_weight()`` (``alpha`` times the effective ΔW) into the base weight."""

    base_layer: nn.Linear
    delta_seed: torch.Tensor
    alpha: nn.Parameter
    alpha_init: float
    init: str
    init_std: float
    gate_key: str
    forward_mode: str
    merged: bool

    @property
    def init_seed(self) -> int:
        """Seed of the initial ΔW."""
        return int(self.delta_seed)

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (so code reading ``module.weight`` of a linear layer keeps working)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base bias."""
        return self.base_layer.bias

    def get_delta_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """``alpha * effective ΔW`` (fp32)."""
        raise NotImplementedError

    def _check_mergeable(self) -> None:
        """Raise when the base weight cannot take the update (quantised bases)."""

    def merge(self) -> None:
        """Add ``get_delta_weight()`` into the base weight; the forward then skips the adapter."""
        if self.merged:
            return
        self._check_mergeable()
        with torch.no_grad():
            w0 = self.base_layer.weight
            w0.add_(self.get_delta_weight().detach().to(device=w0.device, dtype=w0.dtype))
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the merged update back out of the base weight (exact up to float rounding)."""
        if not self.merged:
            return
        with torch.no_grad():
            w0 = self.base_layer.weight
            w0.sub_(self.get_delta_weight().detach().to(device=w0.device, dtype=w0.dtype))
        self.merged = False


class GatedSparseLinear(AdapterLayer):
    """``y = x (W0 + alpha * effective_delta())ᵀ + b`` around a frozen ``nn.Linear`` (see the module docstring).

    Args:
        base_layer: the wrapped linear layer (frozen here).
        init_seed: seed of the initial ΔW (see :func:`derive_seed`); stored as a persistent buffer so a checkpoint
            carries the seed it was trained with.
        alpha: a gate parameter to share with other modules (``gate: layer|global``); a new one when None.
        alpha_init: initial (and reset) value of the gate.
        init, init_std: ΔW distribution (``kaiming_uniform`` | ``normal``).
        forward_mode: ``merged`` (one matmul with ``W0 + alpha·ΔW``) or ``two_matmul``.
        keep_init: ``regenerate`` the initial ΔW from the seed when needed, or keep a ``copy`` in memory.
        gate_key: identifier of the (possibly shared) gate, for reporting and export.
        delta: explicit ΔW values (loading an exported adapter); skips the random draw.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        *,
        init_seed: int,
        alpha: nn.Parameter | None = None,
        alpha_init: float = 1e-6,
        init: str = "kaiming_uniform",
        init_std: float = 0.02,
        forward_mode: str = "merged",
        keep_init: str = "regenerate",
        gate_key: str | None = None,
        delta: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if forward_mode not in FORWARD_MODES:
            raise ConfigError(
                "adapter.forward_mode", f"unknown mode {forward_mode!r}", f"use one of {list(FORWARD_MODES)}"
            )
        if keep_init not in KEEP_INIT:
            raise ConfigError(
                "adapter.keep_init", f"unknown value {keep_init!r}", f"use one of {list(KEEP_INIT)}"
            )
        if init not in INIT_SCHEMES:
            raise ConfigError("adapter.init", f"unknown init {init!r}", f"use one of {list(INIT_SCHEMES)}")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        weight = base_layer.weight
        self.in_features = int(base_layer.in_features)
        self.out_features = int(base_layer.out_features)
        shape = (self.out_features, self.in_features)
        device = weight.device
        self.init = init
        self.init_std = float(init_std)
        self.forward_mode = forward_mode
        self.keep_init = keep_init
        self.alpha_init = float(alpha_init)
        self.gate_key = gate_key or ""
        self.register_buffer("delta_seed", torch.tensor(int(init_seed), dtype=torch.int64), persistent=True)
        if delta is None:
            initial = generate_initial_delta(shape, int(init_seed), init, init_std, device=device)
        else:
            if tuple(delta.shape) != shape:
                raise ValueError(f"delta has shape {tuple(delta.shape)}, expected {shape}")
            initial = delta.detach().to(device=device, dtype=torch.float32)
        self.delta = nn.Parameter(initial.clone())
        if keep_init == "copy":
            init_copy = (
                initial
                if delta is None
                else generate_initial_delta(shape, int(init_seed), init, init_std, device)
            )
            self.register_buffer("initial_copy", init_copy.clone(), persistent=False)
        else:
            self.initial_copy = None
        if alpha is None:
            alpha = nn.Parameter(torch.tensor(float(alpha_init), dtype=torch.float32, device=device))
        self.alpha = alpha
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device), persistent=True)
        # pruned_value == "init" (entries outside the mask frozen at their initial value), persistent for resume.
        self.register_buffer("pruned_init", torch.tensor(False, device=device), persistent=True)
        self.pruned_value = "zero"
        self.merged = False
        self._full: bool | None = True  # cache of mask.all() (None: recompute)
        # The initial ΔW, held only with pruned_value=init (a buffer so that .to() moves it; not checkpointed: it
        # is regenerated from the seed).
        self.register_buffer("_frozen", None, persistent=False)
        # The merged form needs a plain floating-point weight; 4-bit/quantised bases use the two-matmul form.
        self._mergeable = weight.dtype.is_floating_point and type(base_layer).forward is nn.Linear.forward

    # ----------------------------------------------------------------------------------------------- state
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._full = None
        self.pruned_value = "init" if bool(self.pruned_init) else "zero"
        self._frozen = None

    def _is_full(self) -> bool:
        if self._full is None:
            self._full = bool(self.mask.all())
        return self._full

    def initial_delta(self) -> torch.Tensor:
        """The initial ΔW (fp32, on the module's device): the stored copy, or regenerated from ``init_seed``."""
        if self.initial_copy is not None:
            return self.initial_copy
        return generate_initial_delta(
            (self.out_features, self.in_features), self.init_seed, self.init, self.init_std, self.delta.device
        )

    def initial_delta_chunks(self, slices: list[slice]) -> Iterator[torch.Tensor]:
        """The initial ΔW by consecutive row chunks (see :func:`initial_delta_chunks`; slices of the copy with
        ``keep_init: copy``)."""
        if self.initial_copy is not None:
            return (self.initial_copy[sl] for sl in slices)
        return initial_delta_chunks(
            (self.out_features, self.in_features),
            self.init_seed,
            slices,
            self.init,
            self.init_std,
            self.delta.device,
        )

    def _frozen_values(self) -> torch.Tensor:
        if self._frozen is None:
            self._frozen = self.initial_delta()
        return self._frozen

    def effective_delta(self) -> torch.Tensor:
        """ΔW as the forward sees it: ``mask ⊙ ΔW``, or ΔW at kept entries and the initial value elsewhere."""
        if self._is_full():
            return self.delta
        if self.pruned_value == "init":
            return torch.where(self.mask, self.delta, self._frozen_values())
        return self.delta * float_mask(self.mask, self.delta.dtype)  # float x float: vectorised, fwd and bwd

    def get_delta_weight(self) -> torch.Tensor:
        """``alpha * effective_delta()`` (fp32): what :meth:`merge` adds to the base weight."""
        return self.alpha * self.effective_delta()

    def trainable_delta(self) -> nn.Parameter:
        """The ΔW parameter the optimizer updates (dense storage: the whole matrix)."""
        return self.delta

    def numel(self) -> int:
        """Entries of the (out, in) matrix."""
        return self.out_features * self.in_features

    def nnz(self) -> int:
        """Number of kept (trainable) entries of ΔW."""
        return int(torch.count_nonzero(self.mask))  # no integer copy of the mask (unlike sum)

    def density(self) -> float:
        """Fraction of kept entries."""
        return self.nnz() / max(1, self.mask.numel())

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapted linear map (the base layer alone once merged)."""
        if self.merged:
            return self.base_layer(x)
        delta = self.effective_delta()
        if self.forward_mode == "merged" and self._mergeable:
            w0 = self.base_layer.weight
            # Sum in W0's dtype: under bf16 autocast F.linear casts the summed weight; with a bf16 base the update
            # is cast to bf16 before the addition (autograd still gives exact fp32 grads to alpha and ΔW).
            weight = w0 + (self.alpha * delta).to(w0.dtype)
            return F.linear(x, weight, self.base_layer.bias)
        y = self.base_layer(x)
        return y + F.linear(x, (self.alpha * delta).to(x.dtype)).to(y.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, gate={self.gate_key!r}, "
            f"forward_mode={self.forward_mode}, init={self.init}, seed={self.init_seed}"
        )

    # ----------------------------------------------------------------------------------------------- masks
    def apply_mask(
        self,
        mask: torch.Tensor,
        rewind: bool = False,
        pruned_value: str = "zero",
        initial: torch.Tensor | None = None,
    ) -> None:
        """Set the mask; optionally rewind survivors to their initial values; set pruned entries.

        Args:
            mask: bool (or 0/1) tensor of ΔW's shape, True = kept.
            rewind: survivors := initial ΔW (lottery-ticket rewinding to iteration 0).
            pruned_value: ``zero`` (pruned entries := 0) or ``init`` (pruned entries := initial ΔW, frozen).
            initial: the initial ΔW when the caller already has it (saves regenerating it).
        """
        if pruned_value not in PRUNED_VALUES:
            raise ConfigError(
                "pruning.pruned_value", f"unknown value {pruned_value!r}", f"use one of {list(PRUNED_VALUES)}"
            )
        if mask.numel() != self.mask.numel():
            raise ValueError(f"mask has {mask.numel()} entries, expected {self.mask.numel()}")
        if self.merged:
            raise RuntimeError("unmerge() the adapter before changing its mask")
        new_mask = mask.detach().reshape(self.mask.shape).to(device=self.mask.device, dtype=torch.bool)
        if initial is None and pruned_value == "init":
            initial = self.initial_delta()  # kept as the frozen values anyway
        slices = row_chunks(self.mask.shape)
        # Row chunks: the initial ΔW (when not given) and the 0/1 float mask exist one chunk at a time.
        inits: Iterator[torch.Tensor | None]
        if initial is not None:
            inits = (initial[sl] for sl in slices)
        elif rewind:
            inits = self.initial_delta_chunks(slices)
        else:
            inits = (None for _ in slices)
        with torch.no_grad():
            self.mask.copy_(new_mask)
            for sl, init_rows in zip(slices, inits):
                source = init_rows if rewind else self.delta.detach()[sl]
                assert source is not None
                if pruned_value == "zero":
                    torch.mul(source, float_mask(self.mask[sl], source.dtype), out=self.delta.data[sl])
                else:
                    torch.where(self.mask[sl], source, init_rows, out=self.delta.data[sl])
            self.pruned_init.fill_(pruned_value == "init")
        self.pruned_value = pruned_value
        self._frozen = initial if pruned_value == "init" else None
        self._full = None

    def enforce_mask(self) -> None:
        """Put pruned entries back at their pruned value (after an optimizer step; a no-op while dense).

        With a masked gradient and cleared optimizer state, AdamW already leaves zeroed entries at exactly 0; this
        is the guarantee (e.g. against momentum kept with ``reset_optimizer: false`` or a user's optimizer).
        """
        if self._is_full():
            return
        with torch.no_grad():
            if self.pruned_value == "zero":
                # ~20x faster than masked_fill_(~mask, 0) on CPU (see float_mask)
                self.delta.mul_(float_mask(self.mask, self.delta.dtype))
            else:
                torch.where(self.mask, self.delta, self._frozen_values(), out=self.delta.data)

    # ----------------------------------------------------------------------------------------------- merge
    def _check_mergeable(self) -> None:
        if not self._mergeable:
            raise ConfigError(
                "adapter.merge",
                f"cannot merge into a {type(self.base_layer).__name__} base (quantised weight)",
                "load the base model unquantised (model.dtype=float32 or bfloat16) to merge",
            )


# --------------------------------------------------------------------------------------------------- injection
def _check_choice(value: Any, choices: tuple[str, ...], option: str) -> str:
    value = str(value)
    if value not in choices:
        raise ConfigError(option, f"unknown value {value!r}", f"use one of {list(choices)}")
    return value


def inject_gated_sparse(
    model: nn.Module, adapter_cfg: Any, *, density: float | None = None
) -> dict[str, GatedSparseLinear]:
    """Freeze every parameter of ``model`` and wrap each target linear in a :class:`GatedSparseLinear`.

    Args:
        model: a (transformers) model, modified in place.
        adapter_cfg: the ``adapter`` config group (DictConfig or dict); see conf/adapter/rigsa.yaml.
        density: initial random-mask density; defaults to ``adapter_cfg.density`` (null or 1.0: dense).

    Returns:
        ``{module name: GatedSparseLinear}`` in model order (e.g. ``model.layers.0.self_attn.q_proj``).
    """
    targets = _get(adapter_cfg, "targets", DEFAULT_TARGETS)
    init = _check_choice(_get(adapter_cfg, "init", "kaiming_uniform"), INIT_SCHEMES, "adapter.init")
    gate = _check_choice(_get(adapter_cfg, "gate", "matrix"), GATES, "adapter.gate")
    forward_mode = _check_choice(
        _get(adapter_cfg, "forward_mode", "merged"), FORWARD_MODES, "adapter.forward_mode"
    )
    keep_init = _check_choice(_get(adapter_cfg, "keep_init", "regenerate"), KEEP_INIT, "adapter.keep_init")
    init_std = float(_get(adapter_cfg, "init_std", 0.02))
    if init == "normal" and not init_std > 0:
        raise ConfigError("adapter.init_std", f"must be > 0 for init=normal, got {init_std}", "use e.g. 0.02")
    alpha_init = float(_get(adapter_cfg, "alpha_init", 1e-6))
    seed = int(_get(adapter_cfg, "seed", 1234))
    if density is None:
        density = _get(adapter_cfg, "density", None)

    for p in model.parameters():
        p.requires_grad_(False)
    linears = find_target_linears(model, targets)
    gates: dict[str, nn.Parameter] = {}
    adapters: dict[str, GatedSparseLinear] = {}
    for name, linear in linears.items():
        key = gate_key(name, gate)
        alpha = None
        if gate != "matrix":
            if key not in gates:
                gates[key] = nn.Parameter(
                    torch.tensor(alpha_init, dtype=torch.float32, device=linear.weight.device)
                )
            alpha = gates[key]
        module = GatedSparseLinear(
            linear,
            init_seed=derive_seed(seed, name),
            alpha=alpha,
            alpha_init=alpha_init,
            init=init,
            init_std=init_std,
            forward_mode=forward_mode,
            keep_init=keep_init,
            gate_key=key,
        )
        replace_module(model, name, module)
        adapters[name] = module
    if density is not None and float(density) < 1.0:
        random_mask_(adapters, float(density), int(_get(adapter_cfg, "mask_seed", 0)))
    return adapters


def random_mask_(adapters: dict[str, GatedSparseLinear], density: float, seed: int) -> None:
    """Give every module a uniformly random mask with exactly ``round(density * numel)`` kept entries.

    The mask of a module depends only on ``(seed, module name)`` (same seed, same masks). Survivors restart from
    their initial ΔW and pruned entries are zero (the ``random_mask`` baseline: a fixed random sparse adapter).
    """
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ConfigError("adapter.density", f"{density} is outside (0, 1]", "use a density such as 0.5")
    for name, module in adapters.items():
        numel = module.mask.numel()
        keep = int(round(density * numel))
        gen = torch.Generator(device="cpu")
        gen.manual_seed(derive_seed(int(seed), name, "mask"))
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=gen)[:keep]] = True
        module.apply_mask(flat.view(module.mask.shape), rewind=True, pruned_value="zero")


def unique_alphas(adapters: dict[str, nn.Module]) -> list[nn.Parameter]:
    """The distinct gate parameters (shared gates counted once), in module order."""
    seen: dict[int, nn.Parameter] = {}
    for module in adapters.values():
        seen.setdefault(id(module.alpha), module.alpha)
    return list(seen.values())


def adapter_param_groups(adapters: dict[str, nn.Module], adapter_cfg: Any) -> list[dict]:
    """AdamW parameter groups: ΔW (dense storage) or its kept values (sparse storage) with
    ``adapter.weight_decay`` at ``adapter.lr``; the gates without decay at ``adapter.alpha_lr``. Only adapter
    tensors appear (the base model is frozen)."""
    lr = float(_get(adapter_cfg, "lr", 1e-3))
    alpha_lr = _get(adapter_cfg, "alpha_lr", None)
    alpha_lr = lr if alpha_lr is None else float(alpha_lr)
    weight_decay = float(_get(adapter_cfg, "weight_decay", 1.0))
    return [
        {
            "params": [m.trainable_delta() for m in adapters.values()],
            "lr": lr,
            "weight_decay": weight_decay,
            "name": "delta",
        },
        {"params": unique_alphas(adapters), "lr": alpha_lr, "weight_decay": 0.0, "name": "alpha"},
    ]
