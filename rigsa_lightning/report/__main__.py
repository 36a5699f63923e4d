"""``python -m rigsa_lightning.report <multirun folder> [--wandb]``: the sweep report's command line."""

from rigsa_lightning.report.cli import main

if __name__ == "__main__":
    main()
