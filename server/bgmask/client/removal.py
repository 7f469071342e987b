"""One image through the daemon to a result array: what `bgmask remove`, `bgmask watch` and `bgmask.remove()`
share. The mask options keep the protocol's names (docs/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from bgmask.files import cutouts
from bgmask import errors as E
from bgmask.errors import BgmaskError
from bgmask.files.reading import LoadedImage

ProgressFn = Callable[[str, Optional[float]], None]


@dataclass
class Settings:
    """What to ask the daemon for and what to make of its answer."""

    model: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)  # protocol options: refine, hardness, ..., quality
    mask_only: bool = False
    bg: Optional[cutouts.Colour] = None
    depth: Optional[int] = None  # None: the input's (16 for 16-bit and float input, else 8)


def result_depth(img: LoadedImage, settings: Settings, sixteen_bit_ok: bool = True) -> int:
    """The bits per sample of the result: --depth, else the input's where the format can hold it."""
    if settings.depth is not None:
        return settings.depth
    return cutouts.depth_of(img.pixels) if sixteen_bit_ok else 8


def remove(client: Any, img: LoadedImage, settings: Settings, depth: int, on_progress: Optional[ProgressFn] = None,
           cancel: Optional[Callable[[], bool]] = None) -> np.ndarray:
    """The mask (H, W) or the cut-out (H, W, C) of `img` at `depth` bits, computed by the daemon behind
    `client` (a bgmask_client.Client)."""
    reply = client.remove_full(img.protocol_bytes(), img.width, img.height, img.channels, img.sample_type,
                               model=settings.model, options=settings.options,
                               out_sample_type="u16" if depth == 16 else "u8", on_progress=on_progress, cancel=cancel)
    return _result(reply, img, settings, depth)


def remove_frames(client: Any, frames: list[LoadedImage], settings: Settings, depth: int,
                  on_progress: Optional[Callable[[int, str, Optional[float]], None]] = None,
                  cancel: Optional[Callable[[], bool]] = None, temporal: bool = True) -> list[np.ndarray]:
    """The masks or cut-outs of an animation's frames (all of one size and layout), as one sequence: frames are
    pipelined through the daemon and, with `temporal`, their masks do not flicker (docs/protocol.md)."""
    first = frames[0]
    for k, img in enumerate(frames):
        if (img.width, img.height, img.channels, img.sample_type) != (first.width, first.height, first.channels, first.sample_type):
            raise BgmaskError(E.BAD_IMAGE, f"frame {k} is {img.width}x{img.height} with {img.channels} channels "
                                           f"({img.sample_type}), frame 0 {first.width}x{first.height} with "
                                           f"{first.channels} ({first.sample_type}): the frames of a sequence must match")
    replies = client.remove_frames((img.protocol_bytes() for img in frames), first.width, first.height,
                                   first.channels, first.sample_type, model=settings.model, options=settings.options,
                                   out_sample_type="u16" if depth == 16 else "u8", temporal=temporal,
                                   on_progress=on_progress, cancel=cancel)
    return [_result(reply, img, settings, depth) for reply, img in zip(replies, frames)]


def _result(reply: Any, img: LoadedImage, settings: Settings, depth: int) -> np.ndarray:
    mask = cutouts.mask_array(reply.mask, img.width, img.height, depth)
    if settings.mask_only:
        return mask
    pixels = img.pixels
    if settings.options.get("decontaminate") and reply.extra:
        colour_channels = 3 if img.channels >= 3 else 1
        colours = np.frombuffer(reply.extra[0], pixels.dtype.newbyteorder("<"))
        pixels = pixels.copy()
        pixels[..., :colour_channels] = colours.reshape(img.height, img.width, colour_channels)
    return cutouts.cutout(pixels, mask, settings.bg)
