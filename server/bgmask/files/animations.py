"""Animated images (GIF, WebP, APNG) as frame lists and back, for `bgmask remove` and `bgmask.remove()`.

Frames are read composited onto the full canvas (Pillow applies each format's disposal and blending), as RGBA8:
the daemon gets whole pictures and every result frame is a whole picture with its own alpha, written so that
no frame is drawn over the one before (GIF disposal 2, APNG disposal 1 with source blending, WebP's own
keyframes). Frame durations (ms) and the loop count are kept."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image

from bgmask import errors as E
from bgmask.errors import BgmaskError

FORMATS = {".gif": "GIF", ".webp": "WEBP", ".png": "PNG", ".apng": "PNG"}  # suffix -> Pillow format


@dataclass
class Animation:
    """Frames (H, W, 4) uint8 RGBA, each shown for durations[i] ms, played `loop` times (0: forever)."""

    frames: list[np.ndarray]
    durations: list[int]
    loop: int
    format: str  # the Pillow format it was read from: GIF, WEBP or PNG


def load(source: Union[str, Path, bytes]) -> Optional[Animation]:
    """The frames of an animated GIF, WebP or PNG; None for a still image or another format."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.format not in ("GIF", "WEBP", "PNG") or getattr(im, "n_frames", 1) < 2:
                return None
            frames, durations = [], []
            for index in range(im.n_frames):
                im.seek(index)
                frames.append(np.asarray(im.convert("RGBA")))  # WebP sets the frame's duration only once loaded
                durations.append(int(round(float(im.info.get("duration") or 100))))
            return Animation(frames, durations, int(im.info.get("loop", 0) or 0), im.format)
    except (OSError, ValueError, EOFError) as exc:
        raise BgmaskError(E.BAD_IMAGE, f"not a readable animation ({exc}); check the file") from None


def is_animation(path: Union[str, Path]) -> bool:
    """Whether the file is an animated GIF, WebP or PNG (only its headers and frame count are read); a file
    that cannot be read is not, and fails when it is loaded."""
    try:
        with Image.open(path) as im:
            return im.format in ("GIF", "WEBP", "PNG") and getattr(im, "n_frames", 1) >= 2
    except (OSError, ValueError, EOFError):
        return False


def format_for(suffix: str) -> str:
    """The Pillow format an animation is written in for a result file's suffix, or a BAD_REQUEST."""
    fmt = FORMATS.get(suffix.lower())
    if fmt is None:
        raise BgmaskError(E.BAD_REQUEST, f"an animation's result must be .gif, .webp or .png (APNG), not {suffix or 'no extension'!r}")
    return fmt


def write(stream: BinaryIO, fmt: str, frames: list[np.ndarray], durations: list[int], loop: int) -> None:
    """Frames ((H, W) masks or (H, W, C) 8-bit results) as an animation of `fmt`. GIF holds only on/off
    transparency: its alpha is the cut-out's at 50 %."""
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    options: dict = {"GIF": {"disposal": 2, "optimize": False}, "WEBP": {"lossless": True},
                     "PNG": {"disposal": 1, "blend": 0}}[fmt]
    images[0].save(stream, format=fmt, save_all=True, append_images=images[1:], duration=durations, loop=loop,
                   **options)
