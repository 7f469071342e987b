"""Pixel layouts and mask geometry for the Krita plugin, in plain Python.

Krita's bundled Python on Windows and macOS has no numpy, so everything here works on bytes with
extended-slice copies (one C-level copy per channel byte, fast at photo sizes) and on plain tuples
for rectangles. Nothing here imports Krita or Qt, so it is unit-tested on the host.
"""

from __future__ import annotations

import re
from typing import Dict, NamedTuple, Optional, Tuple

Rect = Tuple[int, int, int, int]
"""(x, y, width, height) in image coordinates, like Krita's QRect."""


class Layout(NamedTuple):
    """How one Krita colour space lays out a pixel, and how the protocol wants it."""

    channels: int       # protocol channel count: 2 gray+alpha, 4 RGBA
    sample_type: str    # protocol sample type: u8, u16, f16, f32
    sample_size: int    # bytes per sample
    source_of: Tuple[int, ...]  # source_of[i] = Krita's channel index holding protocol channel i

    @property
    def pixel_size(self) -> int:
        return self.channels * self.sample_size


_SAMPLES = {"U8": ("u8", 1), "U16": ("u16", 2), "F16": ("f16", 2), "F32": ("f32", 4)}

# Krita's integer RGBA spaces store B,G,R,A (KoBgrU8/KoBgrU16 traits) while its float RGBA spaces
# store R,G,B,A (KoRgbF16/KoRgbF32 traits); Node.channels() in Krita 5.2.9 confirms both orders.
LAYOUTS: Dict[Tuple[str, str], Layout] = {}
for _depth, (_stype, _size) in _SAMPLES.items():
    _rgba_source = (2, 1, 0, 3) if _depth in ("U8", "U16") else (0, 1, 2, 3)
    LAYOUTS[("RGBA", _depth)] = Layout(4, _stype, _size, _rgba_source)
    LAYOUTS[("GRAYA", _depth)] = Layout(2, _stype, _size, (0, 1))


def layout_for(color_model: str, color_depth: str) -> Optional[Layout]:
    """The layout of a colour space the daemon can take as it is, or None (CMYK, Lab, XYZ, YCbCr...)."""
    return LAYOUTS.get((color_model, color_depth))


def to_protocol_order(data: bytes, layout: Layout) -> bytes:
    """Reorder Krita's channels (B,G,R,A for integer RGBA) into the protocol's R,G,B,A.

    Samples keep their precision and byte order (little-endian on every platform Krita ships for);
    only the channels that move are copied, one extended-slice assignment per byte of each.
    """
    moves = [(dst, src) for dst, src in enumerate(layout.source_of) if dst != src]
    if not moves:
        return bytes(data)
    px, size = layout.pixel_size, layout.sample_size
    if len(data) % px:
        raise ValueError(f"{len(data)} bytes is not a whole number of {px}-byte pixels")
    out = bytearray(data)
    for dst, src in moves:
        for b in range(size):
            out[dst * size + b::px] = data[src * size + b::px]
    return bytes(out)


def is_linear_profile(profile_name: str) -> bool:
    """Whether an ICC profile name denotes linear light (Krita's "...-g10.icc", "scRGB (linear)").

    Krita 5.2 creates U16, F16 and F32 RGBA/GRAYA documents with linear (g10) profiles by default;
    the daemon must encode such samples to sRGB before the model sees them.
    """
    name = profile_name.lower()
    return "g10" in name or "linear" in name


def intersect(a: Rect, b: Rect) -> Rect:
    """The overlap of two rectangles; width or height 0 when they do not overlap."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def is_empty(r: Rect) -> bool:
    return r[2] <= 0 or r[3] <= 0


def embed(mask: bytes, inner: Rect, outer: Rect) -> bytes:
    """Place a one-byte-per-pixel mask of `inner` into a zero-filled mask of `outer` (inner within outer)."""
    if inner == outer:
        return bytes(mask)
    if intersect(inner, outer) != inner:
        raise ValueError(f"{inner} is not inside {outer}")
    ox, oy, ow, oh = outer
    ix, iy, iw, ih = inner
    if len(mask) != iw * ih:
        raise ValueError(f"mask has {len(mask)} bytes, expected {iw * ih}")
    out = bytearray(ow * oh)
    for row in range(ih):
        start = (iy - oy + row) * ow + (ix - ox)
        out[start:start + iw] = mask[row * iw:(row + 1) * iw]
    return bytes(out)


# For a partial selection value s, _SCALE[s] maps a mask byte m to round(m * s / 255).
_SCALE = [bytes((m * s + 127) // 255 for m in range(256)) for s in range(256)]
_SOLID_RUNS = re.compile(rb"\x00+|\xff+")


def multiply(mask: bytes, selection: bytes) -> bytes:
    """Per-pixel mask x selection / 255 (both one byte per pixel, same size).

    Selections are mostly fully selected or fully unselected, so runs of 0 and 255 are handled as
    slices and only the soft edge goes through a per-pixel table lookup.
    """
    if len(mask) != len(selection):
        raise ValueError(f"mask ({len(mask)} bytes) and selection ({len(selection)} bytes) differ in size")
    out = bytearray(len(mask))  # zero where the selection is 0
    pos = 0
    for run in _SOLID_RUNS.finditer(selection):
        start, end = run.span()
        for i in range(pos, start):  # soft values between solid runs
            out[i] = _SCALE[selection[i]][mask[i]]
        if selection[start] == 0xFF:
            out[start:end] = mask[start:end]
        pos = end
    for i in range(pos, len(selection)):
        out[i] = _SCALE[selection[i]][mask[i]]
    return bytes(out)
