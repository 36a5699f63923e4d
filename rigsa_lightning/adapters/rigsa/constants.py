"""RIGSA's option values that code outside the adapter checks too (a leaf: no torch), e.g. the pruning schedule."""

#: ``pruning.pruned_value``: what a pruned entry of ΔW holds (``zero``, or its frozen initial value ``init``).
PRUNED_VALUES = ("zero", "init")

#: The value dtypes a PEFT SHiRA export can round ``α·ΔW`` to (``--dtype``, ``export.peft`` with ``model.dtype``).
PEFT_VALUE_DTYPES = ("float32", "bfloat16", "float16")
#: The manifest of a PEFT export split into several SHiRA folders (one ``r`` per folder).
SPLIT_MANIFEST = "rigsa_peft_adapters.json"
