"""Decontaminated colours: the background's spill removed from semi-transparent edge pixels."""

from __future__ import annotations

import numpy as np
import pytest

from bgmask import errors as E
from bgmask.mask.decontaminate import decontaminate
from bgmask.errors import BgmaskError


def scene(H: int = 300, W: int = 400):
    """Known F, B and alpha: an orange subject with a soft edge and fine strands over a blue-green,
    gently varying background, composited in the image's own encoding."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    alpha = np.clip((200.0 - xx) / 12.0 + 0.5, 0, 1)  # a 12 px soft edge at x = 200
    rng = np.random.default_rng(5)
    for x0 in rng.integers(215, 330, 25):  # strands of partial coverage
        alpha[40:260, x0] = np.maximum(alpha[40:260, x0], rng.uniform(0.3, 0.8))
    F = np.stack([0.9 - 0.1 * yy / H, 0.55 + 0.1 * xx / W, 0.2 + 0 * xx], axis=2).astype(np.float32)
    B = np.stack([0.1 + 0.2 * xx / W, 0.5 + 0.2 * yy / H, 0.7 + 0 * xx], axis=2).astype(np.float32)
    image = (F * alpha[..., None] + B * (1 - alpha[..., None])).astype(np.float32)
    return image, alpha.astype(np.float32), F, B


def test_colours_recompose_the_image_over_the_original_background():
    image, alpha, F, B = scene()
    out = decontaminate(image, alpha)
    edge = (alpha > 0.02) & (alpha < 0.98)
    a = alpha[..., None]
    err = np.abs(out * a + B * (1 - a) - image)[edge].mean()
    spill = np.abs(image * a + B * (1 - a) - image)[edge].mean()  # keeping the image's own colours
    assert err < 0.02 and err < spill / 5
    # The foreground colour itself is recovered where it matters (weighted by alpha), far better than
    # keeping the contaminated image colour.
    w = alpha[edge][:, None]
    f_err = float((w * np.abs(out[edge] - F[edge])).sum() / w.sum())
    i_err = float((w * np.abs(image[edge] - F[edge])).sum() / w.sum())
    assert f_err < i_err / 4


def test_opaque_and_invisible_pixels_keep_their_colour_and_values_stay_in_range():
    image, alpha, _, _ = scene()
    out = decontaminate(image, alpha)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    solid = alpha >= 1.0
    assert np.array_equal(out[solid], image[solid])
    clear = alpha <= 0.0
    assert clear.any() and np.array_equal(out[clear], image[clear])


@pytest.mark.parametrize("shape", [(1, 1), (1, 200), (200, 1)])
def test_tiny_images(shape):
    rng = np.random.default_rng(2)
    image = rng.random(shape + (3,)).astype(np.float32)
    alpha = rng.random(shape).astype(np.float32)
    out = decontaminate(image, alpha)
    assert out.shape == image.shape and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_cancel():
    image, alpha, _, _ = scene()
    with pytest.raises(BgmaskError) as info:
        decontaminate(image, alpha, cancel=lambda: True)
    assert info.value.code == E.CANCELLED
