"""The training command line checked before Hydra creates or touches any folder (:func:`prepare_args`)."""

from __future__ import annotations

import os
from pathlib import Path

from rigsa_lightning.config.access import check_experiment_args, is_null, is_secret
from rigsa_lightning.config.errors import ConfigError
from rigsa_lightning.config.validation import check_resume_folder, check_run_folder_free
from rigsa_lightning.io import atomic_write_text


def _override_key(arg: str) -> str:
    return arg.lstrip("+~").split("=", 1)[0]


def _arg_value(args: list[str], key: str) -> str | None:
    value = None
    for arg in args:
        if "=" in arg and _override_key(arg) == key:
            value = arg.split("=", 1)[1]
    return value


def prepare_args(args: list[str]) -> list[str]:
    """Check the command line before Hydra creates or touches any folder; return the arguments to run with.

    * ``experiment=``/``sweep=`` name existing files (the error lists the valid ones);
    * ``resume=<run folder>`` points at a resumable run; that run's own overrides (its ``.hydra/overrides.yaml``,
      saved as ``overrides.original.yaml`` before Hydra rewrites it) are put in front, so ``resume=<folder>`` alone
      continues it with the same options (an override given again on this command line wins, and the checkpoint
      check then reports the difference);
    * ``hydra.run.dir=<folder>`` never names a folder that already holds a run, unless resuming it;
    * no credential is passed as an override (it would be written into the run folder).
    """
    check_experiment_args(args)
    for arg in args:
        key = _override_key(arg)
        if "=" in arg and is_secret(key):
            raise ConfigError(
                key,
                "credentials must not be passed as config overrides (they would be written to .hydra/config.yaml)",
                "set WANDB_API_KEY in the environment or run `wandb login` (stored in ~/.netrc)",
            )
    multirun = any(a in ("-m", "--multirun") for a in args)
    resume = _arg_value(args, "resume")
    if resume is not None and not is_null(resume):
        if multirun:
            raise ConfigError(
                "resume", "can't be combined with a multirun (-m)", "resume one job folder at a time"
            )
        folder = check_resume_folder(resume)
        # Hydra rewrites .hydra/overrides.yaml at every start (also of a failed resume attempt): the run's own
        # overrides are kept once, before the first resume, in overrides.original.yaml.
        overrides_file = folder / ".hydra" / "overrides.yaml"
        original_file = folder / ".hydra" / "overrides.original.yaml"
        if overrides_file.is_file() and not original_file.is_file():
            atomic_write_text(original_file, overrides_file.read_text())
        if original_file.is_file():
            import yaml

            original = yaml.safe_load(original_file.read_text()) or []
            given = {_override_key(a) for a in args if "=" in a}
            skip = given | {"resume", "ckpt_path", "hydra.run.dir"}
            kept = [str(o) for o in original if _override_key(str(o)) not in skip]
            if kept:
                print(f"resume: continuing {folder} with its original overrides: {' '.join(kept)}")
            return kept + list(args)
        return list(args)
    run_dir = _arg_value(args, "hydra.run.dir")
    skip_completed = str(_arg_value(args, "skip_completed") or "").lower() in ("true", "1", "yes")
    if run_dir and not multirun and not skip_completed:  # skip_completed reuses its job folder on purpose
        check_run_folder_free(Path(os.path.expanduser(run_dir)))
    return list(args)
