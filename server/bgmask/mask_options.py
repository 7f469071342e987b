"""The daemon's mask options as the CLI and the Python API name them (docs/protocol.md has their meaning).
No imports beyond typing: the argument parser of every `bgmask` command reads this table."""

from __future__ import annotations

from typing import Optional

# The protocol's numeric mask options (docs/protocol.md): name -> (lowest, highest or None, metavar, what it does).
# The CLI makes a flag of each (--shift-edge for shift_edge), checked against the range before anything is sent.
MASK_OPTIONS: dict[str, tuple[float, Optional[float], str, str]] = {
    "hardness": (0.0, 1.0, "H", "0 .. 1: steepen the soft edge without cutting it (1 narrows an 8-15 px edge to 1-2 px)"),
    "shift_edge": (-100.0, 100.0, "PX", "grow (positive) or shrink (negative) the subject by this many pixels"),
    "feather": (0.0, 500.0, "PX", "soften the edge: a hard edge becomes a ramp about twice this wide"),
    "fill_holes": (0.0, None, "AREA", "make enclosed holes smaller than this many pixels opaque"),
    "remove_specks": (0.0, None, "AREA", "remove separate islands smaller than this many pixels"),
}
QUALITIES = ("fast", "balanced", "best")
