"""Reading image files into protocol pixel layouts, in their own precision (CLI and Python API side only).

Pillow decodes 16-bit RGB(A) PNG and TIFF to 8 bits. Its decoder still does the unfiltering; only the last
step keeps the high bytes. Decoding the same tiles once more with the little-endian raw mode keeps the low
bytes instead, and the two together are the file's exact 16-bit samples (16-bit gray+alpha, which Pillow
opens as RGBA, is read as 8-bit RGBA bytes: the same 4 bytes a pixel, nothing dropped)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bgmask import errors as E
from bgmask.errors import BgmaskError

_WIDE_RAWMODES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "RGB;16L": "RGB;16B", "RGBA;16L": "RGBA;16B"}

Source = Union[str, Path, bytes]


@dataclass
class LoadedImage:
    """Pixels as an (H, W, C) array (uint8, uint16 or float32 in [0, 1]; C: 1 gray, 2 gray+alpha, 3 RGB,
    4 RGBA), and whether the file held more frames than the one read."""

    pixels: np.ndarray
    animated: bool = False

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    @property
    def sample_type(self) -> str:
        return {"uint8": "u8", "uint16": "u16", "float32": "f32"}[self.pixels.dtype.name]

    def protocol_bytes(self) -> bytes:
        """The pixels as a remove request's frame: packed, little-endian."""
        return self.pixels.astype(self.pixels.dtype.newbyteorder("<"), copy=False).tobytes()


def load(source: Source) -> LoadedImage:
    """Decode a file (a path or its bytes), upright per its EXIF orientation. Messages name no file: the
    caller says which one."""
    data = source if isinstance(source, bytes) else None
    try:
        with Image.open(io.BytesIO(data) if data is not None else source) as opened:
            animated = getattr(opened, "n_frames", 1) > 1
            wide = _wide_samples(opened, data if data is not None else Path(source))
            orientation = opened.getexif().get(0x0112, 1)
            # exif_transpose copies even an upright image: 36 MB and ~0.1 s at 12 MP for nothing
            img = ImageOps.exif_transpose(opened) if orientation in _ORIENT else opened
            img.load()
    except UnidentifiedImageError:
        raise BgmaskError(E.BAD_IMAGE, "not an image bgmask can read (PNG, JPEG, WebP, TIFF, BMP, GIF); check the file, "
                                       "or save it again as PNG") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        why = str(exc).replace(str(source), "the file") if data is None else str(exc)  # the caller names the file
        raise BgmaskError(E.BAD_IMAGE, f"not a readable image ({why}); check the file, or save it again as PNG") from None
    if wide is not None:
        return LoadedImage(_upright(wide, orientation), animated)
    return LoadedImage(_array(img), animated)


# EXIF orientation -> the numpy form of the transpose Pillow's exif_transpose applies for it.
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    turn = _ORIENT.get(orientation)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


def _wide_samples(img: Image.Image, source: Union[bytes, Path]) -> "np.ndarray | None":
    """The exact 16-bit samples of a 16-bit RGB, RGBA or gray+alpha file, or None for anything else."""
    tiles = getattr(img, "tile", None) or []
    rawmodes = {_rawmode(t) for t in tiles}
    if len(rawmodes) != 1:
        return None
    rawmode = rawmodes.pop()
    if rawmode in _WIDE_RAWMODES:
        hi = _decode_as(source, rawmode)  # the file's own raw mode keeps the high bytes,
        lo = _decode_as(source, _WIDE_RAWMODES[rawmode])  # the other byte order's the low ones
        return (hi.astype(np.uint16) << 8) | lo
    if img.mode == "RGBA" and rawmode == "LA;16B":  # how Pillow opens 16-bit gray+alpha PNG
        raw = _decode_as(source, "RGBA")  # the file's bytes as they are: Y hi, Y lo, A hi, A lo
        return raw.view(">u2").reshape(raw.shape[0], raw.shape[1], 2).astype(np.uint16)
    return None


def _rawmode(tile: tuple) -> str:
    args = tile[3]
    return args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else "")


def _decode_as(source: Union[bytes, Path], rawmode: str) -> np.ndarray:
    """The file's pixels decoded with another raw mode of the same bits per pixel (so the same unfiltering)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        img.tile = [_with_rawmode(t, rawmode) for t in img.tile]
        img.load()
        return np.asarray(img)


def _with_rawmode(tile: tuple, rawmode: str) -> tuple:
    args = tile[3]
    args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    return tile._replace(args=args) if hasattr(tile, "_replace") else (tile[0], tile[1], tile[2], args)


def _array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode as (H, W, C): gray stays gray, palettes and CMYK become RGB(A), alpha is kept."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B"):
        return np.asarray(img).astype(np.uint16)[..., None]
    if mode in ("I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if mode == "I" and 0 <= arr.min() and arr.max() <= 65535:
            return arr.astype(np.uint16)[..., None]
        top = max(float(arr.max()), 1.0) if mode == "I" else 1.0
        return np.clip(arr / top, 0.0, 1.0).astype(np.float32)[..., None]
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    gray = mode in ("1", "L", "LA", "La")
    target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
    arr = np.asarray(img if mode == target else img.convert(target))
    return arr.reshape(arr.shape[0], arr.shape[1], len(target))
