"""Render grey-level images as text grids: the "vision in text" part of Textual MNIST.

The rule (the paper's: one character 0-9 per pixel, one image row per line):

1. Optional downsampling to ``n x n`` by **exact area averaging** (:func:`downsample`): every output pixel is the
   mean of the input area it covers, fractional pixels weighted by their covered fraction, then rounded half up.
   For divisible sizes (28 -> 14, 28 -> 7) this is the plain block mean.
2. Quantisation of a uint8 intensity ``p`` (0 = background, 255 = ink) to ``levels`` levels (:func:`quantize`):
   ``q = min(levels - 1, p * levels // 256)``. With the default 10 levels: 0..25 -> 0, 26..51 -> 1, ...,
   231..255 -> 9 (equal-width bins of 25.6 intensity units).
3. Layout (:func:`render_grid`): each level is written as its decimal number, pixels of a row joined by
   ``separator`` (default: nothing), rows joined by ``"\\n"`` (no trailing newline).

With SmolLM2's tokenizer every digit is one token, so an ``n x n`` grid costs ``n*n + n - 1`` tokens
(8x8: 71, 14x14: 209, 28x28: 811).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["quantize", "downsample", "render_grid", "render_batch", "grid_token_estimate"]


def _check_levels(levels: int) -> int:
    levels = int(levels)
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in [2, 256], got {levels}")
    return levels


def quantize(img: np.ndarray, levels: int = 10) -> np.ndarray:
    """Quantise uint8 intensities to ``levels`` levels: ``min(levels - 1, p * levels // 256)`` (uint8 array).

    Works on any shape (one image or a batch). Non-uint8 input is clipped to 0..255 and truncated to integers first.
    """
    levels = _check_levels(levels)
    p = np.asarray(img)
    if p.dtype != np.uint8:
        p = np.clip(p, 0, 255).astype(np.uint8)
    # p * levels <= 255 * 256 fits in uint16; `>> 8` is `// 256`.
    return np.minimum(levels - 1, (p.astype(np.uint16) * levels) >> 8).astype(np.uint8)


@lru_cache(maxsize=64)
def _area_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) matrix: row i holds the covered fraction of each input pixel, normalised to sum 1."""
    scale = size_in / size_out
    edges_lo = np.arange(size_out, dtype=np.float64)[:, None] * scale
    edges_hi = edges_lo + scale
    pix_lo = np.arange(size_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(edges_hi, pix_lo + 1) - np.maximum(edges_lo, pix_lo), 0.0, None)
    weights = overlap / scale
    weights.setflags(write=False)
    return weights


def downsample(img: np.ndarray, n: int | None) -> np.ndarray:
    """Area-average ``img`` ([H, W] or [N, H, W], uint8) down to ``n x n`` (uint8, rounded half up).

    ``n=None`` or ``n == H == W`` returns the input unchanged. Non-square inputs are resized to ``n x n`` with
    separate row and column weights. ``n`` larger than the native size raises ``ValueError`` (no upsampling).
    """
    arr = np.asarray(img)
    if n is None:
        return arr
    n = int(n)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an [H, W] or [N, H, W] image array, got shape {arr.shape}")
    h, w = arr.shape[-2:]
    if n <= 0:
        raise ValueError(f"resolution must be positive, got {n}")
    if n > h or n > w:
        raise ValueError(f"resolution {n} is larger than the native {h}x{w} (no upsampling)")
    if n == h and n == w:
        return arr
    rows = _area_weights(h, n)
    cols = _area_weights(w, n)
    out = np.einsum("ih,...hw,jw->...ij", rows, arr.astype(np.float64), cols, optimize=True)
    # Round half up; the tiny epsilon absorbs float error of weights that should sum to exactly 1.
    return np.clip(np.floor(out + 0.5 + 1e-9), 0, 255).astype(np.uint8)


def render_grid(img: np.ndarray, levels: int = 10, separator: str = "") -> str:
    """Render one uint8 image ([H, W]) as a text grid: quantised levels, ``separator`` between pixels, rows by "\\n".

    Example: ``render_grid(np.array([[0, 255], [26, 128]], np.uint8))`` -> ``"09\\n15"``.
    """
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"render_grid expects one [H, W] image, got shape {arr.shape}")
    return render_batch(arr[None], levels=levels, separator=separator)[0]


def render_batch(images: np.ndarray, levels: int = 10, separator: str = "") -> list[str]:
    """Render a batch of uint8 images ([N, H, W]) as text grids (same rule as :func:`render_grid`), vectorised.

    With single-character levels (``levels <= 10``) and no separator the whole batch is built as one byte buffer.
    Levels above 10 are written as decimal numbers and need a non-empty ``separator`` (else they are ambiguous).
    """
    arr = np.asarray(images)
    if arr.ndim != 3:
        raise ValueError(f"render_batch expects [N, H, W] images, got shape {arr.shape}")
    levels = _check_levels(levels)
    if levels > 10 and separator == "":
        raise ValueError("levels > 10 give multi-character pixels: set a non-empty separator")
    q = quantize(arr, levels)
    n, h, w = q.shape
    if n == 0:
        return []
    if levels <= 10 and separator == "":
        chars = np.empty((n, h, w + 1), dtype=np.uint8)
        chars[:, :, :w] = q + ord("0")
        chars[:, :, w] = ord("\n")
        flat = chars.reshape(n, h * (w + 1))[:, :-1]  # drop each image's trailing newline
        width = flat.shape[1]
        blob = np.ascontiguousarray(flat).tobytes().decode("ascii")
        return [blob[i * width : (i + 1) * width] for i in range(n)]
    tokens = np.char.mod("%d", q)  # [N, H, W] of str
    return ["\n".join(separator.join(row) for row in image) for image in tokens.tolist()]


def grid_token_estimate(n: int) -> int:
    """Tokens of an ``n x n`` grid when every digit and newline is one token (SmolLM2): ``n*n + n - 1``."""
    return n * n + n - 1
