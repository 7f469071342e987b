"""The mask pipeline: client pixels -> model input -> soft prediction -> full-resolution mask bytes.

Stages report progress and check for cancellation between them; the prediction stays float32 from the
model's output to the final conversion into the sample type the client asked for."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from bgmask import errors as E
from bgmask import pixels, refine
from bgmask.errors import BgmaskError
from bgmask.protocol import ImageSpec, RemoveOptions
from bgmask.sessions import MattingSession

ProgressFn = Callable[[str, Optional[float]], None]
CancelFn = Callable[[], bool]


@dataclass
class MaskResult:
    """What a remove request produces: the encoded mask plus where the time went."""

    mask: bytes
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


def compute_mask(
    session: MattingSession,
    data: memoryview | bytes,
    spec: ImageSpec,
    options: RemoveOptions,
    out_sample_type: str,
    progress: ProgressFn,
    cancel: CancelFn,
) -> MaskResult:
    """Run one remove request on a warm session."""

    def checkpoint(stage: str, fraction: Optional[float] = None) -> None:
        if cancel():
            raise BgmaskError(E.CANCELLED, "The request was cancelled.")
        progress(stage, fraction)

    clock = _Clock()
    checkpoint("inferring", 0.0)
    tensor = session.prepare(pixels.model_rgb(data, spec, session.size))
    clock.lap("preprocess")
    raw = session.infer(tensor)
    clock.lap("inference")
    pred = session.postprocess(raw)
    checkpoint("refining", 0.0)
    if options.refine:
        mask = refine.refine(pred, pixels.guide_luma(data, spec), cancel=cancel)
    else:
        mask = refine.upsample(pred, spec.width, spec.height)
    hidden = pixels.transparent(data, spec)
    if hidden is not None:
        mask[hidden] = 0.0
    clock.lap("refine")
    checkpoint("refining", 1.0)
    encoded = pixels.encode_mask(mask, out_sample_type)
    clock.lap("postprocess")
    return MaskResult(encoded, clock.total())

