"""Writing the finished mask: placement, transparency and rounding, strip by strip (pixels.MaskWriter)."""

from __future__ import annotations

import numpy as np
import pytest

from bgmask.mask import pipeline, pixels
from bgmask.protocol import ImageSpec, RemoveOptions

ALPHA_TYPES = {"u8": np.uint8, "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}


def layer(sample_type: str, width: int = 301, height: int = 203) -> tuple[bytes, ImageSpec, np.ndarray]:
    """An RGBA layer whose alpha is 0 in a few blocks (and NaN in one block for float layers)."""
    rng = np.random.default_rng(3)
    dtype = ALPHA_TYPES[sample_type]
    top = 1.0 if sample_type == "f32" else float(np.iinfo(dtype).max)
    arr = (rng.random((height, width, 4)) * top).astype(dtype)
    arr[..., 3] = top
    arr[10:40, 20:90, 3] = 0
    arr[150:, 250:, 3] = 0
    arr[60:70, 30:40, 3] = 1 if sample_type != "f32" else 1e-6  # nearly transparent is not transparent
    if sample_type == "f32":
        arr[100:110, 100:120, 3] = np.nan
    hidden = ~(arr[..., 3] > 0)
    return arr.tobytes(), ImageSpec(width, height, 4, sample_type, width * 4 * arr.itemsize, False), hidden


def expected(mask: np.ndarray, hidden: np.ndarray, sample_type: str) -> np.ndarray:
    """The documented result: transparent pixels 0, values rounded to the nearest level (in float32)."""
    mask = np.where(hidden, np.float32(0), mask).astype(np.float32)
    if sample_type == "f32":
        return mask.astype("<f4")
    top = np.float32(255 if sample_type == "u8" else 65535)
    return np.floor(mask * top + np.float32(0.5)).astype(ALPHA_TYPES[sample_type])


@pytest.mark.parametrize("sample_type", ["u8", "u16", "f32"])
@pytest.mark.parametrize("region", [None, (40, 30, 200, 120), (0, 150, 301, 53)])
def test_strips_put_in_any_order_give_the_whole_masks_encoding(sample_type: str, region) -> None:
    data, spec, hidden = layer(sample_type)
    out_type = sample_type
    options = RemoveOptions(region=region, padding=0.1)
    box = pipeline.model_box(spec, options)
    rng = np.random.default_rng(5)
    alpha = rng.random((box[3] - box[1], box[2] - box[0])).astype(np.float32)
    alpha[::7] = 1.0
    alpha[3::11] = 0.0
    alpha[5, :] = 0.5 / 255  # ties round up, as everywhere else
    whole = pipeline.place(alpha.copy(), spec, box, region)

    writer = pixels.MaskWriter(data, spec, out_type, box, region)
    scale, offset = writer.encoding
    cuts = [0, 1, 17, 18, 90, alpha.shape[0]]
    for y0, y1 in reversed(list(zip(cuts, cuts[1:]))):
        writer.put(y0, y1, alpha[y0:y1] * np.float32(scale) + np.float32(offset))
    got = np.frombuffer(writer.result(), dtype=ALPHA_TYPES[out_type]).reshape(spec.height, spec.width)
    assert got.shape == (spec.height, spec.width)
    assert np.array_equal(got, expected(whole, hidden, out_type))

    in_place = pixels.MaskWriter(data, spec, out_type, box, region)
    in_place.put_all(alpha)
    assert bytes(in_place.result()) == bytes(writer.result())
    inside = pipeline.place(alpha, spec, box, region)
    assert np.array_equal(inside, np.where(hidden, 0.0, whole)), "put_all zeroes transparent pixels in place"


def test_layer_without_alpha_keeps_every_value() -> None:
    spec = ImageSpec(50, 40, 3, "u8", 150, False)
    mask = np.linspace(0, 1, 2000, dtype=np.float32).reshape(40, 50)
    writer = pixels.MaskWriter(bytes(6000), spec, "u8")
    writer.put_all(mask.copy())
    got = np.frombuffer(writer.result(), np.uint8).reshape(40, 50)
    assert got[0, 0] == 0 and got[-1, -1] == 255
    assert np.array_equal(got, np.floor(mask.astype(np.float64) * 255 + 0.5).astype(np.uint8))
