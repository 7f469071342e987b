"""Pixel format conversion: raw client bytes in any supported layout to what the model and the refinement
need, and the float mask back to the sample type the client asked for.

The full-resolution image is only viewed (never copied whole) except where a conversion is unavoidable,
so a 100 MP layer stays within memory."""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

from bgmask.mask import parallel
from bgmask.protocol import ImageSpec

DTYPES = {"u8": np.dtype(np.uint8), "u16": np.dtype("<u2"), "f16": np.dtype("<f2"), "f32": np.dtype("<f4")}
SCALES = {"u8": 1.0 / 255.0, "u16": 1.0 / 65535.0, "f16": 1.0, "f32": 1.0}
# The model input's filter (area-weighted when shrinking). LANCZOS, as rembg uses, keeps the model's view of
# fine detail sharper than BILINEAR (measured on real photos with bench/quality.py --real); BILINEAR stays for
# the `fast` quality and for enlarging. Support: the filter's reach in input pixels per output pixel when
# shrinking. A large shrink takes Pillow's integer box reduce first and the filter only over the last REDUCING_GAP
# times or less: LANCZOS's three lobes still antialias a 2x step, and 2 rather than 3 halves its cost where
# the reduce would otherwise not start (IS-Net at 24 MP: 0.31 -> 0.21 s CPU, BILINEAR's 0.12 s).
RESAMPLE = Image.Resampling.LANCZOS
FILTER_SUPPORT = {Image.Resampling.BILINEAR: 1.0, Image.Resampling.LANCZOS: 3.0}
REDUCING_GAP = {Image.Resampling.BILINEAR: 3.0, Image.Resampling.LANCZOS: 2.0}
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 weights, the same Pillow uses for convert("L")


def view(data: memoryview | bytes, spec: ImageSpec) -> np.ndarray:
    """A zero-copy (H, W, C) array over the client's bytes, honouring the row stride."""
    dtype = DTYPES[spec.sample_type]
    return np.ndarray(
        shape=(spec.height, spec.width, spec.channels), dtype=dtype, buffer=data,
        strides=(spec.stride, spec.channels * dtype.itemsize, dtype.itemsize),
    )


def srgb_encode(x: np.ndarray) -> np.ndarray:
    """Linear light to sRGB-encoded values, float32 in [0, 1]."""
    x = np.clip(x, 0.0, 1.0, dtype=np.float32)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1.0 / 2.4, dtype=np.float32) - 0.055).astype(np.float32)


def _channel_float(arr: np.ndarray, c: int, sample_type: str) -> np.ndarray:
    """One channel as float32 in [0, 1] (NaN and out-of-range floats clamped)."""
    ch = arr[..., c].astype(np.float32)
    if sample_type in ("u8", "u16"):
        ch *= SCALES[sample_type]
    else:
        np.nan_to_num(ch, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(ch, 0.0, 1.0, out=ch)
    return ch


def _reduce_factors(width: int, height: int, size: tuple[int, int], resample: Image.Resampling) -> tuple[int, int]:
    """Pillow's integer reduce for resize(size, resample, reducing_gap=REDUCING_GAP[resample])."""
    gap = REDUCING_GAP[resample]
    return int(width / size[0] / gap) or 1, int(height / size[1] / gap) or 1


def _resize_f(ch: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """A float channel resized exactly as the 8-bit path is, but for rounding: the same reduce, rows first, then
    columns, clamped to [0, 1] after each pass as Pillow's 8-bit passes are (LANCZOS overshoots at edges)."""
    img = Image.fromarray(ch, mode="F")
    (W, H), (w, h) = img.size, size
    fx, fy = _reduce_factors(W, H, size, resample)
    if fx > 1 or fy > 1:
        img = img.reduce((fx, fy))
    rows = np.clip(np.asarray(img.resize((img.width, h), resample, box=(0, 0, img.width, H / fy))), 0.0, 1.0)
    out = Image.fromarray(rows, mode="F").resize(size, resample, box=(0, 0, W / fx, h))
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


_SRGB_LUT = srgb_encode(np.arange(65536, dtype=np.float32) / np.float32(65535.0))


def _encoded_channel(arr: np.ndarray, c: int, spec: ImageSpec) -> np.ndarray:
    """One channel as sRGB-encoded float32 in [0, 1]. Linear samples go through a 16-bit lookup table: exact
    for u8/u16, finer than any model input needs for floats, and far cheaper than a power per pixel."""
    if not spec.linear:
        return _channel_float(arr, c, spec.sample_type)
    if spec.sample_type == "u16":
        return _SRGB_LUT[arr[..., c]]
    if spec.sample_type == "u8":
        return _SRGB_LUT[arr[..., c].astype(np.uint16) * np.uint16(257)]
    x = _channel_float(arr, c, spec.sample_type)
    x *= np.float32(65535.0)
    x += np.float32(0.5)
    return _SRGB_LUT[x.astype(np.uint16)]


class _U8Rows:
    """8-bit sRGB RGB/RGBA rows as Pillow images (its C code is fastest there), any band of rows without a
    copy. Pillow wants stride x height bytes: a crop or a short last row is packed into one contiguous copy
    first, so every layout of the same pixels gives the model exactly the same input."""

    def __init__(self, data: memoryview | bytes, spec: ImageSpec) -> None:
        # RGBX: the alpha byte is padding, so Pillow's resize does not weight colours by alpha (an "RGBA" raw
        # mode would make the mapped image RGBA, and its resize premultiplied: not what the float paths do).
        self.raw = self.mode = "RGB" if spec.channels == 3 else "RGBX"
        self.width, self.height, self.stride = spec.width, spec.height, spec.stride
        self.data = memoryview(data).cast("B")
        if len(self.data) < spec.stride * spec.height:
            self.data = memoryview(np.ascontiguousarray(view(data, spec))).cast("B")
            self.stride = spec.row_bytes

    @staticmethod
    def of(data: memoryview | bytes, spec: ImageSpec) -> Optional["_U8Rows"]:
        if spec.sample_type != "u8" or spec.channels < 3 or spec.linear:
            return None
        return _U8Rows(data, spec)

    def band(self, y0: int, y1: int) -> Image.Image:
        rows = self.data[y0 * self.stride:y1 * self.stride]
        return Image.frombuffer(self.mode, (self.width, y1 - y0), rows, "raw", self.raw, self.stride, 1)


def _resize_in_bands(rows: _U8Rows, size: tuple[int, int], resample: Image.Resampling = RESAMPLE) -> Image.Image:
    """What Pillow's resize(size, resample, reducing_gap=REDUCING_GAP[resample]) gives when it resizes the rows first
    (within a level: Pillow places a band's filter from its own box), on all cores: each horizontal band of the output is made by its own
    thread from the rows it reads, over the client's bytes. A large shrink first takes Pillow's integer
    reduce of those rows, aligned to the reduce's blocks, exactly as the whole image's reduce would."""
    W, H = rows.width, rows.height
    w, h = size
    fx, fy = _reduce_factors(W, H, size, resample)
    bands = max(1, min(parallel.THREADS, H // (fy * 64)))
    scale = H / fy / h  # rows of the (reduced) image per output row
    reach = int(FILTER_SUPPORT[resample] * max(scale, 1.0)) + 2  # the filter's support, in those rows
    rows_in = -(-H // fy)

    def resize_band(i: int) -> Image.Image:
        top, bottom = cuts[i] * scale, cuts[i + 1] * scale
        r0, r1 = max(0, int(top) - reach), min(rows_in, int(bottom) + reach + 1)
        band = rows.band(r0 * fy, min(H, r1 * fy))
        if fx > 1 or fy > 1:  # as Pillow does: reduce by (fx, fy), then resize what is left
            band = band.reduce((fx, fy))
        rows_out = cuts[i + 1] - cuts[i]
        # The two passes in a fixed order, rows first: Pillow picks the order of its passes from the shapes
        # involved, and LANCZOS's negative lobes make the 8-bit result between passes order-dependent (up to
        # ~10 levels on noise), so a band's own call could differ from the whole image's. Rows first gives the
        # same pixels however many bands there are (the number follows the machine's cores).
        tall = band.resize((band.width, rows_out), resample, box=(0, top - r0, band.width, bottom - r0))
        return tall.resize((w, rows_out), resample, box=(0, 0, W / fx, rows_out))

    cuts = [h * i // bands for i in range(bands)] + [h]
    return _stacked(parallel.run(resize_band, range(bands)))


def _stacked(parts: list[Image.Image]) -> Image.Image:
    """Horizontal bands of one width, top to bottom, as one image."""
    out = Image.new(parts[0].mode, (parts[0].width, sum(part.height for part in parts)))
    y = 0
    for part in parts:
        out.paste(part, (0, y))
        y += part.height
    return out


def model_rgb(data: memoryview | bytes, spec: ImageSpec, size: tuple[int, int],
              resample: Image.Resampling = RESAMPLE) -> np.ndarray:
    """The image resized to the model's input size with `resample` as contiguous float32 planes (3, h, w),
    sRGB-encoded in [0, 1]: planar, as the model's input tensor is laid out. Every sample type goes through
    the same filter, so a 16-bit or float copy of a picture gives the model the 8-bit copy's input.

    Alpha is ignored (as rembg does): the model sees the colours; fully transparent pixels are zeroed in the
    mask afterwards. Linear images are encoded before resizing, so a linear and a perceptual copy of the same
    picture give the model the same input (the models were trained on sRGB-encoded photos)."""
    rows = _U8Rows.of(data, spec)
    if rows is not None:
        bands = _resize_in_bands(rows, size, resample).split()[:3]  # R, G, B (and the padding byte of RGBX)
        planes = np.empty((3, size[1], size[0]), dtype=np.float32)
        for plane, band in zip(planes, bands):
            plane[...] = np.asarray(band)  # cast straight into place: no float copy per band
        planes *= np.float32(1.0 / 255.0)
        return planes
    arr = view(data, spec)
    colour = (0, 1, 2) if spec.channels >= 3 else (0,)
    planes = [_resize_f(_encoded_channel(arr, c, spec), size, resample) for c in colour]
    return np.stack(planes if len(planes) == 3 else planes * 3)


def guide_image(data: memoryview | bytes, spec: ImageSpec) -> np.ndarray:
    """The full-resolution guide for edge-aware refinement, perceptual (sRGB-encoded) as the model sees it:
    for 8-bit sRGB colour a zero-copy uint8 (H, W, 3) view of the client's bytes; otherwise float32
    (H, W, 3), or (H, W) for gray images. Colour guides beat luma: foreground and background often differ
    in hue more than in brightness."""
    arr = view(data, spec)
    if spec.sample_type == "u8" and spec.channels >= 3 and not spec.linear:
        return arr[..., :3]
    if spec.channels < 3:
        return _encoded_channel(arr, 0, spec)
    return np.stack([_encoded_channel(arr, c, spec) for c in range(3)], axis=2)


class MaskWriter:
    """The full-size mask as the client asked for it, written strip by strip (so each strip is encoded while it
    is in cache, on the thread that finished it): the strips of the box the model saw are put in place, 0
    outside the requested region, fully transparent pixels of the image are zeroed, and values are rounded to
    the requested sample type."""

    def __init__(self, data: memoryview | bytes, spec: ImageSpec, sample_type: str,
                 box: Optional[tuple[int, int, int, int]] = None,
                 region: Optional[tuple[int, int, int, int]] = None) -> None:
        self.dtype = DTYPES[sample_type]
        # What put() takes: mask * scale + offset. Integers are stored by a truncating cast, so offset 0.5
        # rounds to the nearest level.
        self.encoding = (1.0, 0.0) if sample_type == "f32" else (float(np.iinfo(self.dtype).max), 0.5)
        self.out = np.zeros((spec.height, spec.width), dtype=self.dtype)
        self.alpha = view(data, spec)[..., spec.channels - 1] if spec.channels in (2, 4) else None
        self.float_alpha = spec.sample_type in ("f16", "f32")
        # Integer pixels of 4 or 8 bytes read as one little-endian number each: alpha (the last sample) is
        # 0 exactly where the number is below `opaque_from`, a contiguous test far cheaper than a strided one.
        self.whole, self.opaque_from = None, 0
        size = spec.channels * spec.sample_size
        if self.alpha is not None and not self.float_alpha and size in (4, 8):
            self.whole = np.ndarray((spec.height, spec.width), dtype=np.dtype(f"<u{size}"), buffer=data,
                                    strides=(spec.stride, size))
            self.opaque_from = 1 << (8 * (size - spec.sample_size))
        self.origin = (box[0], box[1]) if box is not None else (0, 0)
        x, y, w, h = region if region is not None else (0, 0, spec.width, spec.height)
        self.region = (x, y, x + w, y + h)

    def put(self, y0: int, y1: int, rows: np.ndarray, encoded: bool = True) -> None:
        """Rows y0..y1 of the box as float32: encoded (mask * scale + offset, within [offset, scale + offset];
        see `encoding`) or, with encoded=False, the mask itself in [0, 1]. Zeroed in place where the image
        is fully transparent."""
        ox, oy = self.origin
        rx0, ry0, rx1, ry1 = self.region
        top, bottom = max(y0 + oy, ry0), min(y1 + oy, ry1)
        left, right = max(ox, rx0), min(ox + rows.shape[1], rx1)
        if top >= bottom or left >= right:
            return
        part = rows[top - oy - y0:bottom - oy - y0, left - ox:right - ox]
        hidden = self._transparent(top, bottom, left, right)
        if hidden is not None:
            part[hidden] = 0.0
        scale, offset = self.encoding
        if not encoded and (scale, offset) != (1.0, 0.0):
            part = part * np.float32(scale)
            part += np.float32(offset)
        np.copyto(self.out[top:bottom, left:right], part, casting="unsafe")

    def _transparent(self, top: int, bottom: int, left: int, right: int) -> Optional[np.ndarray]:
        """Boolean mask of the fully transparent pixels of this rectangle of the image, None if it has none."""
        if self.alpha is None:
            return None
        if self.whole is not None and self.whole[top:bottom, left:right].min() >= self.opaque_from:
            return None
        a = self.alpha[top:bottom, left:right]
        hidden = ~(a > 0) if self.float_alpha else a == 0  # NaN alpha counts as transparent
        return hidden if hidden.any() else None

    def put_all(self, mask: np.ndarray) -> None:
        """A whole float32 mask of the box in [0, 1] at once, in strips on all cores; zeroed in place like put()."""
        step = max(1, (1 << 20) // max(1, mask.shape[1]))
        parallel.run(lambda y: self.put(y, min(mask.shape[0], y + step), mask[y:y + step], encoded=False),
                     range(0, mask.shape[0], step))

    def result(self) -> memoryview:
        """The packed little-endian rows, without a copy."""
        return memoryview(self.out).cast("B")


def crop(data: memoryview | bytes, spec: ImageSpec, box: tuple[int, int, int, int]) -> tuple[memoryview, ImageSpec]:
    """A zero-copy view of the rectangle box = (x0, y0, x1, y1), with the same row stride."""
    x0, y0, x1, y1 = box
    sub = ImageSpec(x1 - x0, y1 - y0, spec.channels, spec.sample_type, spec.stride, spec.linear)
    offset = y0 * spec.stride + x0 * spec.channels * spec.sample_size
    return memoryview(data).cast("B")[offset: offset + sub.min_bytes], sub


def colour_float(data: memoryview | bytes, spec: ImageSpec) -> np.ndarray:
    """The colour channels as float32 (H, W, 3) in [0, 1], in the image's own encoding (gray is repeated)."""
    arr = view(data, spec)
    if spec.channels >= 3:
        return np.stack([_channel_float(arr, c, spec.sample_type) for c in range(3)], axis=2)
    gray = _channel_float(arr, 0, spec.sample_type)
    return np.repeat(gray[..., np.newaxis], 3, axis=2)


def encode_colours(colours: np.ndarray, spec: ImageSpec) -> bytes:
    """Float colours (H, W, 3) back to packed rows in the input's sample type: 3 channels, or 1 for gray images."""
    if spec.channels < 3:
        colours = colours[..., :1]
    if spec.sample_type in ("f16", "f32"):
        return np.ascontiguousarray(colours, dtype=DTYPES[spec.sample_type]).tobytes()
    scale = 255.0 if spec.sample_type == "u8" else 65535.0
    return np.clip(np.floor(colours * scale + 0.5), 0, scale).astype(DTYPES[spec.sample_type]).tobytes()
