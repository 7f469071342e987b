"""The mask pipeline: client pixels -> model input -> soft prediction -> full-resolution mask bytes.

Stages report progress and check for cancellation between them; the prediction stays float32 from the
model's output to the final conversion into the sample type the client asked for."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np
from PIL import Image

from bgmask import errors as E
from bgmask.mask import decontaminate, matte_ops, pixels, refine
from bgmask.errors import BgmaskError
from bgmask.protocol import ImageSpec, RemoveOptions
from bgmask.models.sessions import MattingSession

ProgressFn = Callable[[str, Optional[float]], None]
CancelFn = Callable[[], bool]


class Blend(Protocol):
    """The temporal steps of a frame of a sequence (sequences.FrameBlend)."""

    def prediction(self, image: np.ndarray, pred: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """What the model saw (3, h, w) and its prediction (h, w) -> the prediction to refine."""

    def mask(self, alpha: np.ndarray) -> np.ndarray:
        """The refined full-resolution mask of the model's box (float32, may be changed in place) -> the one
        the options and encoding take."""


@dataclass
class MaskResult:
    """What a remove request produces: the encoded mask (and decontaminated colours) plus where the time went."""

    mask: memoryview
    colours: Optional[bytes] = None
    timings: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 6)
        self.last = now

    def total(self) -> dict[str, float]:
        self.timings["total"] = round(time.perf_counter() - self.start, 6)
        return self.timings


@dataclass(frozen=True)
class Quality:
    """What a `quality` option value changes: the model input's filter when the image is shrunk to the model's
    input and when it is enlarged, and whether the prediction of the mirror image is averaged in (test-time
    augmentation: a second inference). Chosen with bench/quality.py --real on real photos (ECSSD): LANCZOS
    shrinking beat BILINEAR (U2-Netp, 400 -> 320 px: MAE 0.0266 -> 0.0250, boundary F 0.846 -> 0.853), but
    enlarging it rings around the subject (IS-Net, 400 -> 1024 px: boundary F 0.840 -> 0.825), so an image
    smaller than the model's input is enlarged with BILINEAR. bench/speed.py prints what each costs."""

    shrink: Image.Resampling
    enlarge: Image.Resampling
    mirror: bool

    def resample(self, width: int, height: int, size: tuple[int, int]) -> Image.Resampling:
        """The filter for a width x height image resized to `size`: shrinking when it has more pixels."""
        return self.shrink if width * height > size[0] * size[1] else self.enlarge


QUALITY = {
    "fast": Quality(Image.Resampling.BILINEAR, Image.Resampling.BILINEAR, False),
    "balanced": Quality(pixels.RESAMPLE, Image.Resampling.BILINEAR, False),
    "best": Quality(pixels.RESAMPLE, Image.Resampling.BILINEAR, True),
}


def model_inputs(session: MattingSession, small: np.ndarray, mirror: bool) -> list[np.ndarray]:
    """The input tensor of planes (3, h, w) and, with `mirror`, the tensor of their left-right mirror image."""
    return [session.prepare(small)] + ([session.prepare(small[:, :, ::-1])] if mirror else [])


def predict(session: MattingSession, tensors: list[np.ndarray]) -> np.ndarray:
    """The soft prediction of the first tensor; with a mirror tensor, the mean of both (the second flipped
    back), which evens out the model's one-sided mistakes. Values within refine.CERTAIN of 0 or 1 become
    exactly 0 or 1: otherwise a background the model is sure of keeps a haze of alpha 1/255 that a user
    sees as not quite removed (and the real-photo MAE counts)."""
    pred = session.postprocess(session.infer(tensors[0]))
    if len(tensors) > 1:
        pred += session.postprocess(session.infer(tensors[1]))[:, ::-1]
        pred *= np.float32(0.5)
    pred[pred < refine.CERTAIN] = 0.0
    pred[pred > 1.0 - refine.CERTAIN] = 1.0
    return pred


def model_box(spec: ImageSpec, options: RemoveOptions) -> tuple[int, int, int, int]:
    """The rectangle (x0, y0, x1, y1) the model sees: the region plus context padding, or the whole image."""
    if options.region is None:
        return (0, 0, spec.width, spec.height)
    x, y, w, h = options.region
    pad = int(round(options.padding * max(w, h)))
    return (max(0, x - pad), max(0, y - pad), min(spec.width, x + w + pad), min(spec.height, y + h + pad))


def place(alpha: np.ndarray, spec: ImageSpec, box: tuple[int, int, int, int],
          region: Optional[tuple[int, int, int, int]]) -> np.ndarray:
    """The full-size mask: the box's alpha put back in place, 0 outside the requested region."""
    if region is None:
        return alpha
    mask = np.zeros((spec.height, spec.width), dtype=np.float32)
    x, y, w, h = region
    x0, y0 = box[0], box[1]
    mask[y:y + h, x:x + w] = alpha[y - y0:y - y0 + h, x - x0:x - x0 + w]
    return mask


def compute_mask(
    session: MattingSession,
    data: memoryview | bytes,
    spec: ImageSpec,
    options: RemoveOptions,
    out_sample_type: str,
    progress: ProgressFn,
    cancel: CancelFn,
    blend: Optional[Blend] = None,
) -> MaskResult:
    """Run one remove request on a warm session (`blend`: the temporal steps of a frame of a sequence)."""

    def checkpoint(stage: str, fraction: Optional[float] = None) -> None:
        if cancel():
            raise BgmaskError(E.CANCELLED, "The request was cancelled.")
        progress(stage, fraction)

    clock = _Clock()
    checkpoint("inferring", 0.0)
    box = model_box(spec, options)
    box_data, box_spec = pixels.crop(data, spec, box)
    quality = QUALITY[options.quality]
    resample = quality.resample(box_spec.width, box_spec.height, session.size)
    small = pixels.model_rgb(box_data, box_spec, session.size, resample)
    tensors = model_inputs(session, small, quality.mirror)
    clock.lap("preprocess")
    pred = predict(session, tensors)
    clock.lap("inference")
    if blend is not None:
        pred = blend.prediction(small, pred, box)
    checkpoint("refining", 0.0)
    writer = pixels.MaskWriter(data, spec, out_sample_type, box, options.region)
    # Without matte options or decontamination the mask is encoded strip by strip as it is finished.
    whole = any(options.matte_ops().values()) or options.decontaminate or blend is not None
    sink, encoding = (None, refine.PLAIN) if whole else (writer.put, writer.encoding)
    if options.refine:
        guide = pixels.guide_image(box_data, box_spec)
        guide_small = small.transpose(1, 2, 0) if guide.ndim == 3 else small[0]  # exactly what the model saw
        alpha = refine.refine(pred, guide, guide_small=guide_small, cancel=cancel, sink=sink, encoding=encoding)
    else:
        alpha = refine.upsample(pred, box_spec.width, box_spec.height, sink=sink, encoding=encoding)
    if alpha is not None and blend is not None:
        alpha = blend.mask(alpha)
    if alpha is not None:  # the matte options work on the whole mask, and so does decontamination
        alpha = matte_ops.apply_options(alpha, **options.matte_ops(), cancel=cancel)
        writer.put_all(alpha)  # also zeroes the transparent pixels in `alpha`, as the colours need
    clock.lap("refine")
    checkpoint("refining", 0.9)
    colours = None
    if options.decontaminate:
        mask = place(alpha, spec, box, options.region)
        colours = pixels.encode_colours(
            decontaminate.decontaminate(pixels.colour_float(data, spec), mask, cancel=cancel), spec)
    encoded = writer.result()
    clock.lap("postprocess")
    return MaskResult(encoded, colours, clock.total())
