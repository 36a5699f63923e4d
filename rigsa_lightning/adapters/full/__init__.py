"""Full fine-tuning of the target matrices (method ``full``, the forgetting reference) and ``none`` (zero-shot).

* ``method.py`` - the registry entries ``full`` and ``none`` (no torch at import);
* ``model.py`` - :func:`apply_full` / :func:`apply_none`, the AdamW groups, the ``full_weights.safetensors`` export
  and its loader.
"""
