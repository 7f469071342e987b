"""Reading image files into protocol pixel layouts and writing cut-outs and masks (CLI side only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageOps

from bgmask import errors as E
from bgmask.errors import BgmaskError

PNG_LEVEL = 1
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
    if mode in ("I;16", "I;16L", "I;16B", "I", "F"):
        import numpy as np  # only for these: `bgmask remove` of an ordinary photo starts faster without it
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


def _preview(gray: "np.ndarray") -> Image.Image:
    import numpy as np

    return Image.fromarray(np.clip(np.asarray(gray) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def mask_image(mask: bytes, width: int, height: int, sample_type: str) -> Image.Image:
    """The daemon's mask as a Pillow image: "L" for u8, "I;16" for u16 (little-endian, as sent)."""
    mode = {"u8": "L", "u16": "I;16"}[sample_type]
    return Image.frombytes(mode, (width, height), mask)


def save_mask(path: Path, mask: Image.Image) -> None:
    """Grayscale PNG, 8-bit or 16-bit as the mask is. zlib level 1: a few per cent larger than Pillow's
    default and several times faster to write, and the user is waiting for it."""
    mask.save(path, compress_level=PNG_LEVEL)


def save_cutout(path: Path, picture: Image.Image, mask8: Image.Image) -> None:
    """The original pixels with the mask as alpha (straight, not premultiplied); existing alpha is kept
    by multiplying (rounded down), so partly transparent pixels never become more opaque."""
    rgb_mode = "L" if picture.mode in ("L", "LA") else "RGB"
    alpha = mask8
    if picture.mode in ("LA", "RGBA"):
        alpha = ImageChops.multiply(picture.getchannel("A"), mask8)
    out = picture.convert(rgb_mode)
    out.putalpha(alpha)
    out.save(path, compress_level=PNG_LEVEL)
