"""LoRA and QLoRA through PEFT (methods ``lora`` and ``qlora``).

* ``method.py`` - the registry entries ``lora`` and ``qlora`` (no torch at import);
* ``model.py`` - :func:`apply_lora`, the 4-bit base (:func:`load_qlora_base`, the bitsandbytes CPU fix), the AdamW
  groups and the standard PEFT adapter export.
"""
