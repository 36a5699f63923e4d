"""Config helpers: where the Hydra configs live, the config accessors (``get``, ``choice``), OmegaConf resolvers,
argument checks, the config tree printer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rigsa_lightning.config.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"

_MISSING = object()
# Leaf values that are never looked into for a (dotted) key: ``getattr`` on them would find methods.
_LEAVES = (str, bytes, int, float, bool, list, tuple)


def get(cfg: Any, key: str, default: Any = None, *, null_is_default: bool = False) -> Any:
    """``cfg[key]`` for a DictConfig, a Mapping, an object with attributes or None; ``default`` when missing.

    ``key`` may be dotted (``"logger.project"``: ``cfg["logger"]["project"]``). ``null_is_default=True`` also
    returns ``default`` for a key that is present but null (an option written ``key: null`` meaning "the default").
    """
    node: Any = cfg
    for part in key.split("."):
        if node is None or isinstance(node, _LEAVES):
            return default
        node = node.get(part, _MISSING) if hasattr(node, "get") else getattr(node, part, _MISSING)
        if node is _MISSING:
            return default
    return default if null_is_default and node is None else node


def choice(cfg: Any, key: str, choices: Sequence[Any], default: Any, *, option: str | None = None) -> Any:
    """The value of the option ``key`` (dotted), one of ``choices``; ``default`` when missing or null.

    Anything else raises the one-line ``ConfigError(option, "unknown value ...", "use one of [...]")``
    (``option`` names the option in the message, ``key`` by default).
    """
    value = get(cfg, key, default, null_is_default=True)
    if isinstance(value, bool) or value not in choices:
        raise ConfigError(option or key, f"unknown value {value!r}", f"use one of {list(choices)}")
    return value


# Values of an optional path option (``resume``) that mean "not set", however they were typed on a command line.
NULL_VALUES = (None, False, "", "null", "Null", "NULL", "None", "none", "false", "False")


def plain_cfg(cfg: Any) -> Any:
    """OmegaConf containers -> plain python (resolved); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return cfg


def is_null(value: Any) -> bool:
    """Whether an optional option's value means "not set" (null, none, false or empty, as typed by a user)."""
    return value in NULL_VALUES


# Names of credentials: an option whose last dotted component is one of them or ends with ``_<name>``
# (``logger.api_key``, ``wandb_api_key``, ``hf_token``; not ``token_budget`` or ``max_new_tokens``) is refused on the
# command line (it would be written to .hydra/config.yaml) and never sent to W&B.
SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password")


def is_secret(key: str) -> bool:
    """Whether the option ``key`` (dotted) names a credential."""
    last = key.rsplit(".", 1)[-1].lower()
    return any(last == word or last.endswith("_" + word) for word in SECRET_WORDS)


def _run_dir_resolver(resume: Any, default: str) -> str:
    """``hydra.run.dir``: the folder being resumed (``resume=<run folder>``) or a fresh, unique one."""
    return default if is_null(resume) else str(resume)


def register_resolvers() -> None:
    """Register the project's OmegaConf resolvers (idempotent)."""
    if not OmegaConf.has_resolver("rigsa_run_dir"):
        OmegaConf.register_new_resolver("rigsa_run_dir", _run_dir_resolver)


register_resolvers()


def available(group: str) -> list[str]:
    """Names of the options of a config group (``experiment``, ``adapter``, ...)."""
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_experiment_args(args: Sequence[str]) -> None:
    """Fail with one line (listing the valid names) when ``experiment=<name>`` names no experiment file."""
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in ("experiment", "sweep"):
            continue
        valid = available(key)
        for name in value.split(","):
            if name and name not in valid and not name.startswith(("choice(", "range(", "glob(")):
                raise ConfigError(key, f"no {key} named {name!r}", f"valid: {', '.join(valid)}")


def print_config_tree(cfg: DictConfig, fields: Sequence[str] | None = None) -> None:
    """Print the resolved config as a rich tree (one branch per group)."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    order = list(fields) if fields else [k for k in cfg.keys() if k != "hydra"]
    for name in order:
        branch = tree.add(str(name), guide_style="dim")
        value = cfg.get(name)
        if isinstance(value, DictConfig):
            text = OmegaConf.to_yaml(value, resolve=True)
        else:
            text = str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    rich.print(tree)
