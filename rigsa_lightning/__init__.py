"""rigsa-lightning: RIGSA (Random Initialization of Gated Sparse Adapters, arXiv 2511.01794) as a Lightning + Hydra
experiment framework. The heavy modules (torch, transformers, lightning) are imported lazily by their users."""

__version__ = "0.1.0"
