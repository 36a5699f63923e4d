"""Benchmark 4 - Textual MNIST at the paper's size: 60,000 synthetic 28x28 images rendered and tokenised through
the real :class:`~rigsa_lightning.data.textual_mnist.TextualMNISTDataModule`.

The images are synthetic MNIST look-alikes (dark background, a few bright strokes) written as IDX files
(``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte``) in a temporary folder, and read with ``data.source=mnist
data.path=<folder>`` exactly as a user's local MNIST copy would be: 50,000 train + 5,000 val + 5,000 test =
60,000 images, 28x28, 10 levels, SmolLM2's chat template (~860 tokens per example).

* ``cold``: a fresh process and an empty cache folder: ``prepare_data()`` (load IDX, split, render, tokenise, save
  with ``datasets``) + ``setup()``. Target <= 60 s.
* ``warm``: a fresh process on the filled cache: ``setup()`` (memory-mapped reload) and the first training batch.
  Target <= 5 s. Measured ``reps`` times.
* reference: the straightforward per-example ``tokenizer.apply_chat_template(..., tokenize=True)`` on 2,000 of the
  images, extrapolated to 60,000 (the gain of batch tokenisation + the template split).

Tokenisation runs with ``TOKENIZERS_PARALLELISM=false`` as in the train job (one Rust thread).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import environment, print_table, record, run_worker, say, summary, verdict

N_IMAGES = 60_000
QUICK_IMAGES = 12_000
COLD_TARGET_S = 60.0
WARM_TARGET_S = 5.0


def synthetic_mnist(n: int, seed: int = 0) -> tuple[Any, Any]:
    """``n`` 28x28 uint8 MNIST look-alikes (2-4 gaussian strokes on black, ~20% lit pixels) and labels 0-9."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for _ in range(3):
        cy = rng.uniform(7, 21, size=(n, 1, 1)).astype(np.float32)
        cx = rng.uniform(7, 21, size=(n, 1, 1)).astype(np.float32)
        sy = rng.uniform(1.5, 5.0, size=(n, 1, 1)).astype(np.float32)
        sx = rng.uniform(1.0, 3.0, size=(n, 1, 1)).astype(np.float32)
        images += np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
    images = np.clip(images * 400 - 80, 0, 255).astype(np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    return images, labels


def write_dataset(folder: str, n: int = N_IMAGES) -> str:
    """Write the IDX pair of ``n`` synthetic images into ``folder``; return it."""
    from rigsa_lightning.data.sources import write_idx

    Path(folder).mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_mnist(n)
    write_idx(Path(folder) / "train-images-idx3-ubyte", images)
    write_idx(Path(folder) / "train-labels-idx1-ubyte", labels)
    return folder


def data_cfg(path: str, n: int = N_IMAGES) -> dict[str, Any]:
    """The ``data`` group: conf/data/mnist.yaml's rendering with the local folder; ``n`` images pooled into
    train / val / test (val and test ``n / 12`` each: 50,000 / 5,000 / 5,000 for 60,000)."""
    return {
        "source": "mnist",
        "path": path,
        "resolution": None,
        "levels": 10,
        "separator": "",
        "seed": 0,
        "batch_size": 8,
        "eval_batch_size": 32,
        "num_workers": 0,
        "system_prompt": None,
        "supervise_eos": True,
        "cache": True,
        "train_size": None,
        "val_size": n // 12,
        "test_size": n // 12,
    }


def measure(phase: str, data_path: str, cache: str, n: int = N_IMAGES) -> dict[str, Any]:
    """Worker: one cold build or one warm reload in this (fresh) process."""
    t_import = time.perf_counter()
    from bench.common import model_dir
    from rigsa_lightning.data.textual_mnist import TextualMNISTDataModule
    from rigsa_lightning.models import load_tokenizer

    tok = load_tokenizer(str(model_dir()))
    setup_s = time.perf_counter() - t_import
    t0 = time.perf_counter()
    dm = TextualMNISTDataModule(data_cfg(data_path, n), tok, cache_dir=cache, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    ready = time.perf_counter() - t0
    batch = next(iter(dm.train_dataloader()))
    first_batch = time.perf_counter() - t0
    sizes = {k: len(v) for k, v in dm.splits.items()}
    stats = dm.prompt_length_stats()
    return {
        "phase": phase,
        "cache_hit": dm.cache_hit,
        "seconds_to_ready": ready,
        "seconds_to_first_batch": first_batch,
        "build_seconds": dm.build_seconds,
        "imports_and_tokenizer_s": setup_s,
        "examples": sizes,
        "total_examples": sum(sizes.values()),
        "tokens_per_example_max": stats["train"]["total_max"],
        "batch_shape": list(batch["input_ids"].shape),
    }


def naive_reference(data_path: str, n: int = 2000) -> dict[str, Any]:
    """Worker: per-example chat templating + tokenisation of ``n`` images (extrapolated to 60,000)."""
    from bench.common import model_dir
    from rigsa_lightning.data.render import render_batch
    from rigsa_lightning.data.sources import read_idx
    from rigsa_lightning.data.textual_mnist import DEFAULT_PROMPT
    from rigsa_lightning.models import load_tokenizer

    tok = load_tokenizer(str(model_dir()))
    images = read_idx(Path(data_path) / "train-images-idx3-ubyte")[:n]
    t0 = time.perf_counter()
    grids = render_batch(images, levels=10, separator="")
    ids = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"{g}\n{DEFAULT_PROMPT}"}], tokenize=True, add_generation_prompt=True
        )
        for g in grids
    ]
    seconds = time.perf_counter() - t0
    first = ids[0]["input_ids"] if hasattr(ids[0], "keys") else ids[0]  # transformers 5 returns an encoding
    return {
        "images": n,
        "seconds": seconds,
        "extrapolated_60k_s": seconds * N_IMAGES / n,
        "tokens": len(first),
    }


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the benchmark (workers in fresh processes); returns (and records) its results entry."""
    reps = reps or (1 if quick else 3)
    t_start = time.time()
    env = environment()
    tmp = Path(tempfile.mkdtemp(prefix="rigsa_bench_mnist_"))
    try:
        n = QUICK_IMAGES if quick else N_IMAGES
        data = write_dataset(str(tmp / "mnist"), n)
        cache = str(tmp / "cache")
        say(f"[textual_mnist] cold build of {n:,} images (fresh process, empty cache)")
        cold = run_worker(
            "bench.textual_mnist:measure", {"phase": "cold", "data_path": data, "cache": cache, "n": n}
        )
        warm_runs = []
        for i in range(reps):
            say(f"[textual_mnist] warm reload {i + 1}/{reps} (fresh process)")
            warm_runs.append(
                run_worker(
                    "bench.textual_mnist:measure",
                    {"phase": "warm", "data_path": data, "cache": cache, "n": n},
                )
            )
        naive = run_worker(
            "bench.textual_mnist:naive_reference", {"data_path": data, "n": 500 if quick else 2000}
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    warm = summary([w["seconds_to_ready"] for w in warm_runs])
    cold_verdict = verdict(cold["seconds_to_ready"], COLD_TARGET_S) if n == N_IMAGES else "n/a (quick size)"
    warm_first = summary([w["seconds_to_first_batch"] for w in warm_runs])
    print_table(
        f"Textual MNIST: {cold['total_examples']:,} synthetic 28x28 images "
        f"({cold['tokens_per_example_max']} tokens max per example)",
        ["phase", "seconds", "first batch s", "target", "verdict"],
        [
            [
                "cold (render+tokenise+save)",
                f"{cold['seconds_to_ready']:.1f}",
                f"{cold['seconds_to_first_batch']:.1f}",
                "<= 60",
                cold_verdict,
            ],
            [
                f"warm (cached reload, median of {reps})",
                f"{warm['median']:.2f}",
                f"{warm_first['median']:.2f}",
                "<= 5",
                verdict(warm["median"], WARM_TARGET_S),
            ],
            [
                f"reference: per-example chat template ({naive['images']} -> 60k)",
                f"{naive['extrapolated_60k_s']:.1f}",
                "",
                "",
                "",
            ],
        ],
    )
    entry = {
        "benchmark": "textual_mnist",
        "quick": quick,
        "cold": cold,
        "warm": warm_runs,
        "warm_stats": warm,
        "naive_reference": naive,
        "targets": {"cold_s": COLD_TARGET_S, "warm_s": WARM_TARGET_S},
        "verdicts": {
            "cold": cold_verdict,
            "warm": verdict(warm["median"], WARM_TARGET_S),
        },
        "env": env,
        "env_end_loadavg": environment()["loadavg"],
        "wall_s": time.time() - t_start,
    }
    record("textual_mnist", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    return [
        (
            f"cold build, {entry['cold']['total_examples']:,} images",
            f"{entry['cold']['seconds_to_ready']:.1f} s",
            "<= 60 s",
            entry["verdicts"]["cold"],
        ),
        ("warm reload", f"{entry['warm_stats']['median']:.2f} s", "<= 5 s", entry["verdicts"]["warm"]),
    ]
