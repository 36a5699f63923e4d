"""The adapters' default seeds (a leaf: no imports), read by every method that draws something at random."""

#: ``adapter.seed`` when a config omits it: the seed of the initial ΔW (RIGSA) or LoRA's A (per module, derived).
ADAPTER_SEED = 1234
#: ``adapter.mask_seed`` when a config omits it: the seed of a random mask.
MASK_SEED = 0
