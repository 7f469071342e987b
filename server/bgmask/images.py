"""Reading image files into protocol pixel layouts and writing cut-outs and masks (CLI side only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bgmask import errors as E
from bgmask.errors import BgmaskError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


@dataclass
class LoadedImage:
    """Pixels in a protocol layout, plus the 8-bit picture the cut-out is written from."""

    data: bytes
    width: int
    height: int
    channels: int
    sample_type: str
    picture: Image.Image  # L, LA, RGB or RGBA: what the cut-out keeps untouched


def load(path: Path) -> LoadedImage:
    """Decode a file, upright per its EXIF orientation, in its own precision where Pillow keeps it."""
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            img.load()
    except Exception as exc:
        raise BgmaskError(E.BAD_IMAGE, f"{path} could not be read as an image ({exc}).") from None
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        arr = np.asarray(img)
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            gray = arr.astype(np.float32) / max(float(arr.max()), 1.0)
            return LoadedImage(gray.astype("<f4").tobytes(), img.width, img.height, 1, "f32", _preview(gray))
        gray16 = arr.astype("<u2")
        return LoadedImage(gray16.tobytes(), img.width, img.height, 1, "u16", _preview(gray16 / 65535.0))
    if mode == "F":
        gray = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32)), 0.0, 1.0)
        return LoadedImage(gray.astype("<f4").tobytes(), img.width, img.height, 1, "f32", _preview(gray))
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    gray = mode in ("1", "L", "LA", "La", "I;16", "F")
    target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
    picture = img if img.mode == target else img.convert(target)
    return LoadedImage(picture.tobytes(), picture.width, picture.height, len(target), "u8", picture)


def _preview(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(gray) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def mask_array(mask: bytes, width: int, height: int, sample_type: str) -> np.ndarray:
    dtype = {"u8": np.uint8, "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}[sample_type]
    return np.frombuffer(mask, dtype=dtype).reshape(height, width)


def save_mask(path: Path, mask: np.ndarray) -> None:
    """Grayscale PNG, 8-bit (uint8 mask) or 16-bit (uint16 mask)."""
    if mask.dtype == np.uint8:
        Image.fromarray(mask, "L").save(path)
    else:
        height, width = mask.shape
        Image.frombytes("I;16", (width, height), mask.astype("<u2").tobytes()).save(path)


def save_cutout(path: Path, picture: Image.Image, mask8: np.ndarray) -> None:
    """The original pixels with the mask as alpha (straight, not premultiplied); existing alpha is kept
    by multiplying, so partly transparent pixels never become more opaque."""
    rgb_mode = "L" if picture.mode in ("L", "LA") else "RGB"
    alpha = mask8
    if picture.mode in ("LA", "RGBA"):
        existing = np.asarray(picture.getchannel("A"), dtype=np.uint16)
        alpha = ((existing * mask8.astype(np.uint16) + 127) // 255).astype(np.uint8)
    out = picture.convert(rgb_mode)
    out.putalpha(Image.fromarray(alpha, "L"))
    out.save(path)
