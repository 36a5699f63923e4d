"""Every option declared once (rigsa_lightning/config/options.py): each shipped config file's keys are declared, each
declaration is used by some file, and bad values end in one line ``error: <option>: ... -> <fix>`` (exit 2)
before the config tree is printed or anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rigsa_lightning.config.access import CONFIG_DIR, available
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.config.options import OPTIONS, check_options
from tests.helpers import SMALL, assert_nothing_written, assert_one_line_error, compose_cfg, run_cli


def _compose(config_name: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _every_shipped_config() -> list[tuple[str, list[str]]]:
    """(root config, overrides) selecting every file of every group once."""
    cases: list[tuple[str, list[str]]] = [("train", []), ("evaluate", [])]
    for group in ("adapter", "data", "model", "trainer", "logger", "eval", "pruning", "debug"):
        cases += [("train", [f"{group}={name}"]) for name in available(group)]
    cases += [("train", [f"experiment={name}"]) for name in available("experiment")]
    cases += [("train", [f"+sweep={name}"]) for name in available("sweep")]
    return cases


CASES = _every_shipped_config()


@pytest.mark.parametrize(
    ("root", "overrides"), CASES, ids=[f"{r}:{' '.join(o) or 'default'}" for r, o in CASES]
)
def test_every_shipped_config_passes_and_is_declared(root: str, overrides: list[str]) -> None:
    """check_options rejects undeclared keys, so passing means every key of the file is declared."""
    check_options(_compose(root, overrides))


def _yaml_keys() -> set[str]:
    """Every dotted key that some shipped config produces (composed as above)."""
    from omegaconf import OmegaConf

    from rigsa_lightning.config.options import _leaves

    keys: set[str] = set()
    for root, overrides in CASES:
        raw = OmegaConf.to_container(_compose(root, overrides), resolve=False)
        raw.pop("hydra", None)
        keys |= {k for k, _ in _leaves(raw)}
    return keys


def test_every_declaration_is_used_by_a_config_file() -> None:
    """No dead declarations: each declared option appears in some shipped file (its default lives in YAML)."""
    unused = sorted(set(OPTIONS) - _yaml_keys())
    assert unused == []


@pytest.mark.parametrize(
    ("override", "option", "fragments"),
    [
        ("adapter.alpha_init=abc", "adapter.alpha_init", ("must be a number, got 'abc'", "gate alpha")),
        ("adapter.lr=-1", "adapter.lr", ("must be >= 0, got -1", "use a number >= 0")),
        ("seed=abc", "seed", ("must be an integer, got 'abc'",)),
        ("adapter.weight_decay=-0.5", "adapter.weight_decay", ("must be >= 0, got -0.5",)),
        ("pruning.rounds=0", "pruning.rounds", ("nothing would be pruned", "pruning=none")),
        ("optim.warmup_ratio=2", "optim.warmup_ratio", ("2 is outside [0, 1)", "use a number in [0, 1)")),
        ("adapter.lr=0", "adapter.lr", ("would not train",)),
        ("adapter.init=xavier", "adapter.init", ("unknown value 'xavier'", "kaiming_uniform | normal")),
        ("adapter.density=1.5", "adapter.density", ("1.5 is outside (0, 1]",)),
        ("data.batch_size=0", "data.batch_size", ("must be positive, got 0", "a positive integer")),
        ("optim.betas=[0.9]", "optim.betas", ("must have 2 entries",)),
        ("eval.limit={piqa: 0}", "eval.limit.piqa", ("must be positive, got 0",)),
        ("stop_at.val_acc=0", "stop_at.val_acc", ("0 is outside (0, 1]",)),
        ("logger.type=tensorboard", "logger.type", ("unknown value 'tensorboard'",)),
        ("checkpoint.enabled=maybe", "checkpoint.enabled", ("must be true or false",)),
        ("+adapter.lrr=1e-3", "adapter.lrr", ("is not an option", "did you mean adapter.lr")),
        ("+data.trian_size=5", "data.trian_size", ("is not an option", "data.train_size")),
    ],
)
def test_bad_values_are_one_line_errors(override: str, option: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        check_options(compose_cfg(["experiment=rigsa_50", override]))
    line = info.value.one_line()
    assert line.startswith(f"error: {option}: ") and " -> " in line and "\n" not in line, line
    for fragment in fragments:
        assert fragment in line, line


def test_per_task_values_name_benchmarks() -> None:
    from rigsa_lightning.config.options import check_value

    with pytest.raises(ConfigError, match=r"^eval\.limit: names no benchmark \('arc'\)"):
        check_value("eval.limit", {"piqa": 10, "arc": 5})
    check_value("eval.limit", {"piqa": 10, "gsm8k": None})
    check_value("eval.limit", None)
    with pytest.raises(ConfigError, match=r"must be positive, got 0"):
        check_value("eval.limit", 0)


def test_good_edge_values_pass() -> None:
    cfg = compose_cfg(
        [
            "experiment=rigsa_50",
            "adapter.alpha_init=0.5",
            "adapter.lr=3",  # an int where a float is declared
            "optim.warmup_ratio=0",
            "stop_at.val_acc=1",
            "eval.limit={piqa: 3, gsm8k: null}",
            "+trainer.gradient_clip_algorithm=norm",  # any Lightning Trainer argument passes through
            "threads=null",
        ]
    )
    check_options(cfg)


def test_zero_shot_may_have_lr_zero() -> None:
    check_options(compose_cfg(["experiment=zero_shot"]))


@pytest.mark.parametrize(
    ("override", "option", "fragment"),
    [
        ("adapter.alpha_init=abc", "adapter.alpha_init", "must be a number"),
        ("adapter.weight_decay=-0.5", "adapter.weight_decay", "must be >= 0"),
        ("pruning.rounds=0", "pruning.rounds", "nothing would be pruned"),
    ],
)
def test_cli_rejects_before_printing_the_config(
    tmp_path: Path, override: str, option: str, fragment: str
) -> None:
    """What a user sees: the one error line, no config tree printed first, no run folder left."""
    res = run_cli(["experiment=rigsa_50", *SMALL, override], tmp_path)
    assert_one_line_error(res, option, fragment)
    assert "CONFIG" not in res.stdout and "adapter" not in res.stdout, res.stdout[-2000:]
    assert_nothing_written(tmp_path)


def test_evaluate_checks_options(tmp_path: Path) -> None:
    from rigsa_lightning.evaluate import evaluate

    cfg = _compose("evaluate", ["data.levels=1"])
    with pytest.raises(ConfigError, match=r"^data\.levels: 1 is outside \[2, 256\]"):
        evaluate(cfg)


@pytest.mark.parametrize("value", [None, "", "null", "none", "None", "false", "False", False])
def test_resume_null_spellings_agree(value: Any) -> None:
    """``resume=none`` (a string on the command line): the run-folder resolver and the training code agree that
    nothing is resumed, so hydra.run.dir is a fresh folder, never one named ``none``."""
    from rigsa_lightning.config.access import _run_dir_resolver
    from rigsa_lightning.config.validation import resume_folder

    assert _run_dir_resolver(value, "outputs/runs/fresh") == "outputs/runs/fresh"
    assert resume_folder({"resume": value}) is None


def test_resume_none_composes_a_fresh_run_dir(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["resume=none"], return_hydra_config=True)
    run_dir = str(cfg.hydra.run.dir)
    assert "/runs/" in run_dir and not run_dir.endswith("none"), run_dir


def test_secret_names_one_list_for_cli_and_wandb() -> None:
    """One list decides both what the command line refuses and what W&B never receives; options that merely
    mention tokens (eval.token_budget, eval.drift.max_new_tokens) are not credentials."""
    from rigsa_lightning.config.access import is_secret
    from rigsa_lightning.training.tracking import flat_config

    for key in ("logger.api_key", "wandb_api_key", "hf_token", "token", "db.password", "client_secret"):
        assert is_secret(key), key
    for key in (
        "eval.token_budget",
        "eval.drift.max_new_tokens",
        "data.gen_max_new_tokens",
        "model.tiny.seed",
    ):
        assert not is_secret(key), key
    from omegaconf import OmegaConf

    tree = {"eval": {"token_budget": 2048, "drift": {"max_new_tokens": 32}}, "logger": {"api_key": "x"}}
    flat = flat_config(OmegaConf.create(tree))
    assert flat.get("eval.token_budget") == 2048 and flat.get("eval.drift.max_new_tokens") == 32
    assert "logger.api_key" not in flat


def test_choices_are_typed_once() -> None:
    """The option table's choices are the very tuples the components check: one definition each."""
    from rigsa_lightning.adapters.rigsa import constants, inject, layer, seeding, sparse, storage
    from rigsa_lightning.config.options import OPTIONS
    from rigsa_lightning.pruning import schedule
    from rigsa_lightning.training.schedule import ADAMW_IMPLS

    # the components' own checks use the leaf's tuples: the same objects, imported, not written again
    components = {
        "adapter.init": (constants.INIT_SCHEMES, seeding.INIT_SCHEMES),
        "adapter.gate": (constants.GATES, inject.GATES),
        "adapter.forward_mode": (constants.FORWARD_MODES, layer.FORWARD_MODES),
        "adapter.keep_init": (constants.KEEP_INIT, layer.KEEP_INIT),
        "adapter.storage": (constants.STORAGES, storage.STORAGES),
        "adapter.sparse_grad": (constants.GRAD_MODES, sparse.GRAD_MODES),
        "pruning.pruned_value": (constants.PRUNED_VALUES, layer.PRUNED_VALUES),
    }
    for key, (leaf, used) in components.items():
        assert leaf is used, key
    # the option table offers exactly the tuples the code checks
    table = {key: leaf for key, (leaf, _) in components.items()}
    table |= {
        "pruning.keep_of": schedule.KEEP_OF,
        "pruning.criterion": schedule.CRITERIA,
        "pruning.score": schedule.SCORES,
        "pruning.scope": schedule.SCOPES,
        "pruning.sign_reference": schedule.SIGN_REFERENCES,
        "pruning.rewind": schedule.REWINDS,
        "optim.impl": ADAMW_IMPLS,
    }
    for key, choices in table.items():
        assert tuple(OPTIONS[key].choices) == tuple(choices), key
