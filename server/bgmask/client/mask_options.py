"""The daemon's mask options as the CLI and the Python API name them (docs/protocol.md has their meaning).
The ranges and quality names are the protocol's own table (protocol.py, no numpy there), so the CLI refuses
exactly what the daemon would refuse."""

from __future__ import annotations

from bgmask.protocol import NUMERIC_OPTIONS, QUALITIES

__all__ = ["MASK_OPTIONS", "QUALITIES"]

# name -> (metavar, what it does); the CLI makes a flag of each (--shift-edge for shift_edge).
_FLAGS = {
    "hardness": ("H", "steepen the soft edge without cutting it (1 narrows an 8-15 px edge to 1-2 px)"),
    "shift_edge": ("PX", "grow (positive) or shrink (negative) the subject by this many pixels"),
    "feather": ("PX", "soften the edge: a hard edge becomes a ramp about twice this wide"),
    "fill_holes": ("AREA", "make enclosed holes smaller than this many pixels opaque"),
    "remove_specks": ("AREA", "remove separate islands smaller than this many pixels"),
}
# name -> (lowest, highest, metavar, what it does), checked against the range before anything is sent.
MASK_OPTIONS: dict[str, tuple[float, float, str, str]] = {
    name: (*NUMERIC_OPTIONS[name], metavar, f"{NUMERIC_OPTIONS[name][0]:g} .. {NUMERIC_OPTIONS[name][1]:g}: {what}".replace("e+", "e"))
    for name, (metavar, what) in _FLAGS.items()
}
