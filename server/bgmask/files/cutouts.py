"""What a result file holds: the original samples with the mask as alpha, flattened onto a colour, or the
mask alone, at 8 or 16 bits (CLI and Python API side only)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import ImageColor

from bgmask import errors as E
from bgmask.errors import BgmaskError

Colour = tuple[int, int, int]


def parse_colour(text: str) -> Colour:
    """'white', '#ff8800', 'rgb(0,128,255)', '0,128,255': anything Pillow knows, as 8-bit RGB."""
    parts = text.split(",")
    try:
        if len(parts) == 3:
            rgb = tuple(int(p) for p in parts)
            if all(0 <= v <= 255 for v in rgb):
                return rgb  # type: ignore[return-value]
            raise ValueError
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise BgmaskError(E.BAD_REQUEST, f"{text!r} is not a colour; give a name (white), #rrggbb or R,G,B") from None


def depth_of(pixels: np.ndarray) -> int:
    """The bits a file of these samples keeps by default: 16 for 16-bit and float input, else 8."""
    return 8 if pixels.dtype == np.uint8 else 16


def to_depth(samples: np.ndarray, depth: int) -> np.ndarray:
    """uint8, uint16 or float32 in [0, 1] samples as uint8 (depth 8) or uint16 (depth 16), rounded."""
    if samples.dtype == np.float32:
        top = 255 if depth == 8 else 65535
        return (np.clip(samples, 0.0, 1.0) * top + 0.5).astype(np.uint8 if depth == 8 else np.uint16)
    if depth == 16:
        return samples.astype(np.uint16) * 257 if samples.dtype == np.uint8 else samples
    if samples.dtype == np.uint16:
        return ((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return samples


def mask_array(mask: bytes, width: int, height: int, depth: int) -> np.ndarray:
    """The daemon's mask (u8 for depth 8, u16 for depth 16, little-endian) as an (H, W) array."""
    if depth == 8:
        return np.frombuffer(mask, np.uint8).reshape(height, width)
    return np.frombuffer(mask, "<u2").reshape(height, width).astype(np.uint16, copy=False)


def cutout(pixels: np.ndarray, mask: np.ndarray, bg: Optional[Colour] = None) -> np.ndarray:
    """(H, W, C+1) colours with alpha, or (H, W, 3) flattened onto `bg`, at the mask's depth. The colour
    samples are the input's, untouched (straight alpha, not premultiplied); an existing alpha is multiplied
    by the mask and rounded down, so a partly transparent pixel never becomes more opaque."""
    depth = 16 if mask.dtype == np.uint16 else 8
    top = (1 << depth) - 1
    channels = pixels.shape[2]
    colours = to_depth(pixels[..., : 1 if channels < 3 else 3], depth)
    alpha = mask
    if channels in (2, 4):
        alpha = (to_depth(pixels[..., -1], depth).astype(np.uint32) * mask // top).astype(mask.dtype)
    if bg is None:
        return np.concatenate([colours, alpha[..., None]], axis=2)
    if colours.shape[2] == 1:
        colours = np.repeat(colours, 3, axis=2)
    # top x top + top // 2 < 2**32: uint32 holds every sum at 16 bits too
    background = np.array(bg, dtype=np.uint32) * (257 if depth == 16 else 1)
    a = alpha.astype(np.uint32)[..., None]
    flat = (colours.astype(np.uint32) * a + background * (top - a) + top // 2) // top
    return flat.astype(mask.dtype)
