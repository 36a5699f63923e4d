"""Benchmarks of rigsa-lightning (``make bench`` / ``python -m bench.run``); see bench/README.md."""
