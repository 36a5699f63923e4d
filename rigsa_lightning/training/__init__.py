"""The training loop: the LightningModule (``module``), its callbacks, loggers and trainer (``callbacks``), the
stop-at-target rule (``stopping``), Textual MNIST scoring (``scoring``), W&B / CSV tracking (``tracking``,
``csv_history``) and the step-time breakdown (``timing``)."""
