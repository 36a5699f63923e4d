"""The shared config accessors ``config.get`` and ``config.choice``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from rigsa_lightning.config.access import choice, get
from rigsa_lightning.config.errors import ConfigError


@pytest.mark.parametrize(
    "cfg",
    [
        {"a": 1, "n": None, "logger": {"project": "p"}},
        OmegaConf.create({"a": 1, "n": None, "logger": {"project": "p"}}),
        SimpleNamespace(a=1, n=None, logger=SimpleNamespace(project="p")),
    ],
)
def test_get_reads_dicts_configs_and_objects(cfg):
    assert get(cfg, "a") == 1
    assert get(cfg, "missing") is None
    assert get(cfg, "missing", 7) == 7
    assert get(cfg, "n", 7) is None  # a null value is a value
    assert get(cfg, "n", 7, null_is_default=True) == 7
    assert get(cfg, "logger.project") == "p"
    assert get(cfg, "logger.missing", "d") == "d"
    assert get(cfg, "a.b", "d") == "d"  # a leaf has no keys


def test_get_of_none_and_of_lists():
    assert get(None, "a", 3) == 3
    assert get({"xs": [1, 2]}, "xs.copy", "d") == "d"  # never a list's method


def test_choice():
    assert choice({"mode": "b"}, "mode", ("a", "b"), "a") == "b"
    assert choice({}, "mode", ("a", "b"), "a") == "a"
    assert choice({"mode": None}, "mode", ("a", "b"), "a") == "a"
    with pytest.raises(ConfigError, match=r"^x\.mode: unknown value 'c'.*use one of \['a', 'b'\]"):
        choice({"mode": "c"}, "mode", ("a", "b"), "a", option="x.mode")
    with pytest.raises(ConfigError, match=r"^mode: unknown value True"):
        choice({"mode": True}, "mode", (True, "a"), "a")
