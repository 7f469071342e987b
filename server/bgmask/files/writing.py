"""Writing results as PNG, TIFF, WebP or JPEG, chosen by the file extension (CLI and Python API side only).

8-bit files go through Pillow. Pillow cannot write 16-bit RGB, RGBA or gray+alpha, so 16-bit PNG and TIFF
are written here: PNG with the Up filter (one vectorised subtraction; photos compress about as well as with
adaptive filtering at zlib level 1), TIFF uncompressed in one strip. Both are read back by Pillow and libpng."""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Optional

import numpy as np
from PIL import Image

from bgmask import errors as E
from bgmask.errors import BgmaskError

PNG_LEVEL = 1  # a few per cent larger than Pillow's default and several times faster to write
FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".jpg": "JPEG", ".jpeg": "JPEG"}
SIXTEEN_BIT = {"PNG", "TIFF"}


def format_for(suffix: str, has_alpha: bool, depth: Optional[int]) -> str:
    """The format a result named `...suffix` is written in, or a one-line BAD_REQUEST saying what works."""
    fmt = FORMATS.get(suffix.lower())
    if fmt is None:
        shown = suffix or "no extension"
        raise BgmaskError(E.BAD_REQUEST, f"cannot write {shown}: name the output .png, .tif, .webp or .jpg")
    if fmt == "JPEG" and has_alpha:
        raise BgmaskError(E.BAD_REQUEST, "JPEG has no transparency: name the output .png (or give --bg COLOR to "
                                         "flatten onto a colour)")
    if depth == 16 and fmt not in SIXTEEN_BIT:
        raise BgmaskError(E.BAD_REQUEST, f"{fmt} holds 8 bits per sample: name the output .png or .tif for --depth 16")
    return fmt


def write(stream: BinaryIO, fmt: str, pixels: np.ndarray) -> None:
    """(H, W) or (H, W, C) uint8/uint16 samples (C: 2 gray+alpha, 3 RGB, 4 RGBA) in `fmt`."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype == np.uint16 and fmt in SIXTEEN_BIT:
        (_write_png16 if fmt == "PNG" else _write_tiff16)(stream, pixels)
        return
    if pixels.dtype == np.uint16:
        pixels = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)  # L, LA, RGB or RGBA
    if fmt == "PNG":
        img.save(stream, "PNG", compress_level=PNG_LEVEL)
    elif fmt == "WEBP":
        img.save(stream, "WEBP", lossless=True, exact=True)  # every colour kept, under alpha 0 too, as in the PNG
    elif fmt == "JPEG":
        img.save(stream, "JPEG", quality=95)
    else:
        img.save(stream, "TIFF", compression="tiff_deflate")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_png16(stream: BinaryIO, pixels: np.ndarray) -> None:
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    up = rows.copy()
    up[1:] -= rows[:-1]  # filter 2 (Up): each byte minus the one above it, modulo 256
    scanlines = np.empty((height, up.shape[1] + 1), np.uint8)
    scanlines[:, 0] = 2
    scanlines[:, 1:] = up
    stream.write(b"\x89PNG\r\n\x1a\n")
    stream.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)))
    stream.write(_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), PNG_LEVEL)))
    stream.write(_chunk(b"IEND", b""))


def _write_tiff16(stream: BinaryIO, pixels: np.ndarray) -> None:
    """Little-endian baseline TIFF: one strip, uncompressed, alpha unassociated. Gray+alpha is written as RGBA:
    Pillow reads no 16-bit two-sample TIFF."""
    if pixels.shape[2] == 2:
        pixels = pixels[..., [0, 0, 0, 1]]
    height, width, channels = pixels.shape
    data = pixels.astype("<u2").tobytes()
    tags: list[tuple[int, int, list[int]]] = [  # (tag, type: 3 SHORT / 4 LONG, values), ascending by tag
        (256, 4, [width]), (257, 4, [height]), (258, 3, [16] * channels), (259, 3, [1]),
        (262, 3, [2 if channels >= 3 else 1]), (273, 4, [0]), (277, 3, [channels]), (278, 4, [height]),
        (279, 4, [len(data)]), (284, 3, [1]),
    ]
    if channels == 4:
        tags.append((338, 3, [2]))
    ifd_size = 2 + 12 * len(tags) + 4
    extra = bytearray()  # values that do not fit in an entry's 4 bytes
    extra_at = 8 + ifd_size
    data_at = extra_at + sum(len(v) * (2 if t == 3 else 4) for _, t, v in tags if len(v) * (2 if t == 3 else 4) > 4)
    entries = bytearray(struct.pack("<H", len(tags)))
    for tag, kind, values in tags:
        if tag == 273:
            values = [data_at]
        packed = struct.pack("<%d%s" % (len(values), "H" if kind == 3 else "I"), *values)
        if len(packed) <= 4:
            entries += struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\0")
        else:
            entries += struct.pack("<HHII", tag, kind, len(values), extra_at + len(extra))
            extra += packed
    entries += struct.pack("<I", 0)
    stream.write(b"II*\0" + struct.pack("<I", 8) + bytes(entries) + bytes(extra) + data)
