"""RIGSA's option choices, typed once (a leaf: no torch). The option table (``config/options.py``), the pruning
schedule and the adapter's own checks all read them from here."""

#: ``pruning.pruned_value``: what a pruned entry of ΔW holds (``zero``, or its frozen initial value ``init``).
PRUNED_VALUES = ("zero", "init")
#: ``adapter.init``: the ΔW distribution.
INIT_SCHEMES = ("kaiming_uniform", "normal")
#: ``adapter.gate``: one gate per matrix, per layer or one for the whole model.
GATES = ("matrix", "layer", "global")
#: ``adapter.forward_mode``: how ``W0 + α·ΔW`` is applied.
FORWARD_MODES = ("merged", "two_matmul")
#: ``adapter.keep_init``: how the initial ΔW is kept for rewinding.
KEEP_INIT = ("regenerate", "copy")
#: ``adapter.storage``: the storage of a pruned ΔW.
STORAGES = ("auto", "dense", "sparse")
#: ``adapter.sparse_grad``: the weight gradient of the sparse storage.
GRAD_MODES = ("auto", "sampled", "dense")
#: The value dtypes a PEFT SHiRA export can round ``α·ΔW`` to (``--dtype``, ``export.peft`` with ``model.dtype``).
PEFT_VALUE_DTYPES = ("float32", "bfloat16", "float16")
#: The manifest of a PEFT export split into several SHiRA folders (one ``r`` per folder).
SPLIT_MANIFEST = "rigsa_peft_adapters.json"
