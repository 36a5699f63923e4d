"""The registry of adapter methods: what every call site asks of ``adapter.method``, answered by the method.

Each method is one folder (``rigsa/``, ``lora/``, ``full/``) whose ``method.py`` holds its :class:`AdapterMethod`
subclasses, with one registration line each in :func:`_ensure_builtins`. A method from outside the package calls
:func:`register_method` when its module is imported: name the module in ``RIGSA_METHOD_MODULES`` (comma-separated
module names, imported once with the built-ins) so every process (the train job, a sweep's jobs, the report) has it.
Call sites ask the registry (``get_method(name).gated``, ``.prepare(...)``, ``.export(...)``, ...) instead of
comparing method names.

Light on purpose: importing this module (or a method module) imports no torch, so ``options.py`` and the report use
it; each hook imports the heavy implementation (``rigsa``, ``lora.model``, ``full.model``, ``export``) when it runs.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from rigsa_lightning.adapters.base import AdapterMethod
from rigsa_lightning.config.errors import ConfigError

#: Environment variable naming the modules of methods from outside the package (comma-separated module names).
METHOD_MODULES_ENV = "RIGSA_METHOD_MODULES"
#: The report's place for a method that declares no ``order`` (after every method that does).
UNLISTED_ORDER = 99


_REGISTRY: dict[str, AdapterMethod] = {}
_builtins_loaded = False


def _add(method: AdapterMethod) -> None:
    if not method.name:
        raise ValueError(f"{type(method).__name__} has no name")
    if method.name in _REGISTRY:
        raise ValueError(f"adapter method {method.name!r} is already registered")
    _REGISTRY[method.name] = method


def _ensure_builtins() -> None:
    """Register the built-in methods once, one line each, in the order of ``adapter.method``'s choices."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    from rigsa_lightning.adapters.full import method as full
    from rigsa_lightning.adapters.lora import method as lora
    from rigsa_lightning.adapters.rigsa import method as rigsa

    builtins = [
        rigsa.Rigsa(),
        rigsa.RandomMask(),
        lora.Lora(),
        lora.QLora(),
        full.Full(),
        full.NoAdapter(),
    ]
    _builtins_loaded = True
    for method in builtins:
        _add(method)
    _import_method_modules()


def _import_method_modules() -> None:
    """Import the modules named in ``RIGSA_METHOD_MODULES`` (each registers its methods when imported)."""
    for module in os.environ.get(METHOD_MODULES_ENV, "").split(","):
        if not module.strip():
            continue
        try:
            importlib.import_module(module.strip())
        except ImportError as exc:
            raise ConfigError(
                METHOD_MODULES_ENV,
                f"can't import method module {module.strip()!r} ({exc})",
                "put its folder on PYTHONPATH, or drop it from the variable",
            ) from exc


def register_method(method: AdapterMethod) -> AdapterMethod:
    """Make ``method`` available under ``method.name`` (after the built-in ones); returns it."""
    _ensure_builtins()
    _add(method)
    return method


def get_method(name: str) -> AdapterMethod:
    """The registered method called ``name``; a one-line ConfigError for an unknown name."""
    _ensure_builtins()
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        raise ConfigError("adapter.method", f"unknown method {name!r}", f"use one of {list(_REGISTRY)}")
    return method


def find_method(name: Any) -> AdapterMethod | None:
    """The registered method called ``name``, or None (for recorded runs whose method may be unknown)."""
    _ensure_builtins()
    return _REGISTRY.get(name) if isinstance(name, str) else None


def method_names() -> tuple[str, ...]:
    """Every registered method name, in registration order."""
    _ensure_builtins()
    return tuple(_REGISTRY)


def method_label(name: str) -> str:
    """The display name of method ``name`` in the report (the name itself for an unknown method or no label)."""
    method = find_method(name)
    return (method.label if method is not None else "") or str(name)


def method_order(name: str) -> int:
    """The place of method ``name`` in the report's tables and legends (:data:`UNLISTED_ORDER` when it has none)."""
    method = find_method(name)
    return method.order if method is not None and method.order is not None else UNLISTED_ORDER


def gated_methods() -> tuple[str, ...]:
    """The names of the gated methods (alpha gate + mask), in registration order."""
    _ensure_builtins()
    return tuple(name for name, method in _REGISTRY.items() if method.gated)


def method_for_export(folder: Path) -> AdapterMethod:
    """The first registered method whose export format ``folder`` holds; ConfigError (``adapter_path``) if none."""
    _ensure_builtins()
    for method in _REGISTRY.values():
        if method.detects(folder):
            return method
    files = list(dict.fromkeys(m.export_file for m in _REGISTRY.values() if m.export_file))
    listed = ", ".join(files[:-1]) + " or " + files[-1] if len(files) > 1 else "".join(files)
    raise ConfigError(
        "adapter_path", f"{folder} holds no adapter ({listed})", "point it at the adapter/ folder of a run"
    )


def method_for_export_kind(kind: str) -> AdapterMethod:
    """The first registered method exporting the folder format ``kind`` (``sparse``, ``peft``, ``full``, ...)."""
    _ensure_builtins()
    for method in _REGISTRY.values():
        if method.export_kind == kind:
            return method
    kinds = list(dict.fromkeys(m.export_kind for m in _REGISTRY.values() if m.export_kind))
    raise ValueError(f"no adapter method exports {kind!r} folders (known: {kinds})")


def __getattr__(attr: str) -> Any:
    """``METHODS``: the registered names (computed on access, so later registrations are included)."""
    if attr == "METHODS":
        return method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
