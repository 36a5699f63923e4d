"""Rendering images as text grids: quantisation rule, exact area downsampling, layout, token cost."""

from __future__ import annotations

import numpy as np
import pytest

from rigsa_lightning.data.render import downsample, grid_token_estimate, quantize, render_batch, render_grid


def test_hand_made_image_renders_exactly() -> None:
    img = np.array(
        [
            [0, 25, 26, 51, 52],
            [128, 230, 231, 254, 255],
            [255, 0, 100, 200, 13],
        ],
        dtype=np.uint8,
    )
    assert render_grid(img) == "00112\n58999\n90370"
    assert render_grid(img, separator=" ") == "0 0 1 1 2\n5 8 9 9 9\n9 0 3 7 0"
    assert render_grid(img, levels=2) == "00000\n11111\n10010"


def test_quantisation_edges() -> None:
    q = quantize(np.array([0, 25, 26, 255], dtype=np.uint8))
    assert q.tolist() == [0, 0, 1, 9]
    # every bin of the default rule min(9, p*10//256) starts at ceil(25.6 k): 0, 26, 52, 77, 103, 128, ...
    all_p = np.arange(256, dtype=np.uint8)
    assert quantize(all_p).tolist() == [min(9, p * 10 // 256) for p in range(256)]
    assert np.bincount(quantize(all_p)).tolist() == [26, 26, 25, 26, 25, 26, 26, 25, 26, 25]
    assert quantize(all_p, levels=256).tolist() == list(range(256))
    # out-of-range / float input is clipped first
    assert quantize(np.array([-5.0, 300.0])).tolist() == [0, 9]
    with pytest.raises(ValueError):
        quantize(all_p, levels=1)


@pytest.mark.parametrize("native,n", [(28, 28), (28, 14), (28, 8), (28, 7), (28, 5), (8, 3), (8, 8)])
@pytest.mark.parametrize("value", [0, 1, 77, 128, 254, 255])
def test_downsampling_a_constant_image_is_constant(native: int, n: int, value: int) -> None:
    img = np.full((native, native), value, dtype=np.uint8)
    out = downsample(img, n)
    assert out.shape == (n, n) and out.dtype == np.uint8
    assert (out == value).all()


def test_downsampling_uses_exact_area_weights() -> None:
    # 4 -> 3: output pixel 0 covers input [0, 4/3): all of pixel 0 and a third of pixel 1 (weights .75/.25), etc.
    row = np.array([0, 120, 240, 60], dtype=np.uint8)
    img = np.tile(row, (4, 1))
    out = downsample(img, 3)
    assert out.tolist() == [[30, 180, 105]] * 3
    # divisible sizes are the block mean (rounded half up)
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    blocks = big.reshape(3, 14, 2, 14, 2).astype(np.float64).mean(axis=(2, 4))
    assert np.array_equal(downsample(big, 14), np.floor(blocks + 0.5).astype(np.uint8))
    # mass is preserved up to rounding for non-divisible sizes
    assert abs(downsample(big, 8).astype(float).mean() - big.astype(float).mean()) < 0.6
    assert downsample(big, None) is big


def test_no_upsampling() -> None:
    with pytest.raises(ValueError, match="larger than the native"):
        downsample(np.zeros((8, 8), np.uint8), 9)
    with pytest.raises(ValueError):
        downsample(np.zeros((8, 8), np.uint8), 0)


def test_batch_rendering_matches_single_rendering() -> None:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (17, 6, 5), dtype=np.uint8)
    assert render_batch(imgs) == [render_grid(x) for x in imgs]
    assert render_batch(imgs, separator=",") == [render_grid(x, separator=",") for x in imgs]
    assert render_batch(imgs[:0]) == []
    text = render_batch(imgs)[0]
    assert text.count("\n") == 5 and all(len(line) == 5 for line in text.split("\n"))
    wide = render_batch(imgs[:1], levels=16, separator=" ")[0]
    assert [int(v) for v in wide.split("\n")[0].split()] == (imgs[0, 0].astype(int) * 16 // 256).tolist()
    with pytest.raises(ValueError, match="separator"):
        render_batch(imgs, levels=16)


@pytest.fixture(scope="module")
def tok(smollm2_dir: str):
    from rigsa_lightning.models import load_tokenizer

    return load_tokenizer(smollm2_dir)


@pytest.mark.parametrize("n", [8, 14, 28])
def test_smollm2_grid_token_count(tok, n: int) -> None:
    rng = np.random.default_rng(n)
    imgs = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    imgs[0] = 0  # all background
    imgs[1] = 255  # all ink
    for grid in render_batch(downsample(imgs, n)):
        ids = tok(grid, add_special_tokens=False)["input_ids"]
        assert len(ids) == grid_token_estimate(n) == n * n + n - 1
    assert grid_token_estimate(8) == 71 and grid_token_estimate(14) == 209 and grid_token_estimate(28) == 811
