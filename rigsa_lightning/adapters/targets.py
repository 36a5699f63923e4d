"""Which linear layers an adapter wraps: matched by name suffix or regex inside the decoder blocks.

A target entry is either a module-name suffix (``q_proj`` matches ``model.layers.3.self_attn.q_proj``: the last
dotted component must equal the entry) or, when it starts with ``re:``, a regular expression searched
(:func:`re.search`) in the full module name. Only ``nn.Linear`` modules (bitsandbytes ``Linear4bit`` subclasses it)
inside a numbered block (a ``ModuleList`` index such as ``layers.3.``) are eligible; the LM head, the embeddings
and anything already wrapped by an adapter (``...base_layer``) never are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

from rigsa_lightning.config.errors import ConfigError

_BLOCK_INDEX = re.compile(r"(?:^|\.)\d+(?:\.|$)")


def _as_list(targets: Any) -> list[str]:
    if targets is None:
        return []
    if isinstance(targets, str):
        return [targets]
    return [str(t) for t in targets]


def _excluded_ids(model: nn.Module) -> set[int]:
    """ids of modules that must never be adapted: input/output embeddings (LM head)."""
    out: set[int] = set()
    for getter in ("get_output_embeddings", "get_input_embeddings"):
        fn = getattr(model, getter, None)
        if callable(fn):
            try:
                mod = fn()
            except (NotImplementedError, AttributeError):
                mod = None
            if mod is not None:
                out.add(id(mod))
    return out


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """All ``nn.Linear`` modules inside the decoder blocks (numbered ``ModuleList`` entries), LM head excluded."""
    excluded = _excluded_ids(model)
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or id(module) in excluded:
            continue
        parts = name.split(".")
        if "base_layer" in parts or name.endswith("lm_head"):
            continue
        if not _BLOCK_INDEX.search(name):
            continue
        found[name] = module
    return found


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return name.rsplit(".", 1)[-1] == pattern


def find_target_linears(model: nn.Module, targets: Iterable[str] | str | None) -> dict[str, nn.Linear]:
    """Return ``{module name: nn.Linear}`` of the decoder-block linears matched by ``targets``, in model order.

    Raises :class:`ConfigError` (option ``adapter.targets``) when ``targets`` is empty, a regex is invalid, or an
    entry matches no eligible linear layer (naming the first such entry and listing available suffixes).
    """
    patterns = _as_list(targets)
    if not patterns:
        raise ConfigError("adapter.targets", "is empty", "list module-name suffixes such as [q_proj, v_proj]")
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise ConfigError(
                    "adapter.targets", f"invalid regex {pattern!r}: {exc}", "fix the pattern"
                ) from exc
    candidates = block_linears(model)
    selected: dict[str, nn.Linear] = {}
    for pattern in patterns:
        hits = [name for name in candidates if _matches(name, pattern)]
        if not hits:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in candidates})
            example = next(iter(candidates), "<none>")
            raise ConfigError(
                "adapter.targets",
                f"pattern {pattern!r} matches no linear layer in the decoder blocks",
                f"use suffixes among {suffixes[:12]} or a regex 're:...' on full names such as {example!r}",
            )
        for name in hits:
            selected[name] = candidates[name]
    # Keep the model's module order (deterministic seeds and file layout do not depend on the pattern order).
    return {name: mod for name, mod in candidates.items() if name in selected}


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The parent module of ``name`` and the attribute under which the child is stored."""
    if "." in name:
        parent_name, child = name.rsplit(".", 1)
        return model.get_submodule(parent_name), child
    return model, name


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the submodule called ``name`` by ``new``; return the old module."""
    parent, child = get_parent(model, name)
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
