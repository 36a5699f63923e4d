"""RIGSA's option values that code outside the adapter checks too (a leaf: no torch), e.g. the pruning schedule."""

#: ``pruning.pruned_value``: what a pruned entry of ΔW holds (``zero``, or its frozen initial value ``init``).
PRUNED_VALUES = ("zero", "init")
