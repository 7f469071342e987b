"""Temporal consistency for frame sequences: each frame's mask blended with the previous frames'.

A model's soft edge wobbles from one frame to the next even where nothing moved, and a mask computed frame by
frame flickers. Here every frame's full-resolution mask is blended with the blended mask of the frame before,
carried along the image's motion: a global translation found by phase correlation on the model-size images
(the camera pans of clips and animations), then, per pixel, a weight that falls to 0 where the motion-
compensated image still differs (a subject that moved on its own, a cut, newly uncovered border). Where the
image did not change the result is a running average, which cancels most of the wobble; where it did, the
new mask stands alone. The weights are decided at the model's resolution, on a blended history of the model's
predictions that mirrors the masks' (refinement itself gets each frame's own prediction, so blends do not
compound), and they are limited so that the blend changes at most BUDGET of a frame's own mask: where the
model changed its mind about a region beyond what edge wobble explains, its new answer stands (each frame
keeps its own quality). Pure numpy, deterministic, O(model pixels) plus a comparison per output pixel: the
full-resolution blend only changes pixels where this frame's mask and the carried one differ (near the
outline; elsewhere both are exactly 0 or 1), so the weights are upscaled and blended only there."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from PIL import Image

from bgmask.mask.refine import Taps, _spans, upscale

# Weight of the history where the compensated image is unchanged: the steady state averages about
# (1 + CARRY) / (1 - CARRY) = 7 frames (the budget below keeps that from overriding the model).
CARRY = 0.75
# Mean absolute difference of the compensated model-size images (sRGB in [0, 1], 3x3 box-averaged) at which
# the history's weight reaches 0: well above sensor noise after the model's downscale (< 0.01), well below
# the change a moving subject or a cut makes.
CHANGED = 0.08
# Phase correlation peaks below this (of the ideal 1.0) are not trusted as a translation.
MIN_PEAK = 0.05
# A frame's blended prediction (at 0.5, model resolution) may differ from its own by at most this much
# (1 - IoU): the target is IoU >= 0.9 against the frame's own mask at full resolution, so half of it is left
# for what refinement and the full-resolution blend add.
BUDGET = 0.05
STRIP = 128  # rows of the full-resolution mask compared and blended at a time (a few hundred KB: in cache)
SPAN_GAP = 32  # columns: spans of a strip where the masks differ closer than this are blended as one
LEVELS = (0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.0)  # disagreement levels tried, most disagreeing regions first


def _hann(h: int, w: int) -> np.ndarray:
    return (np.hanning(h)[:, None] * np.hanning(w)[None, :]).astype(np.float32)


def _peak_offset(corr: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Sub-pixel position of the correlation peak at (y, x): a parabola through it and its two neighbours on
    each axis (wrapping, as the circular correlation does)."""
    h, w = corr.shape

    def vertex(a: float, b: float, c: float) -> float:
        den = a - 2.0 * b + c
        return 0.0 if den >= 0 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))

    dy = vertex(corr[(y - 1) % h, x], corr[y, x], corr[(y + 1) % h, x])
    dx = vertex(corr[y, (x - 1) % w], corr[y, x], corr[y, (x + 1) % w])
    return dy, dx


def translation(prev: np.ndarray, cur: np.ndarray) -> tuple[float, float, float]:
    """(dy, dx, peak): the shift that carries `prev` onto `cur` (cur(y, x) ~ prev(y - dy, x - dx)), in pixels
    of these (h, w) gray images, by phase correlation; peak is the normalised correlation peak in [0, 1]."""
    win = _hann(*cur.shape)
    a = np.fft.rfft2((prev - prev.mean()) * win)
    b = np.fft.rfft2((cur - cur.mean()) * win)
    cross = b * np.conj(a)
    cross /= np.maximum(np.abs(cross), 1e-12)
    corr = np.fft.irfft2(cross, s=cur.shape)
    y, x = np.unravel_index(int(np.argmax(corr)), corr.shape)
    peak = float(corr[y, x])
    fy, fx = _peak_offset(corr, int(y), int(x))
    h, w = cur.shape
    dy = (y + fy + h / 2) % h - h / 2
    dx = (x + fx + w / 2) % w - w / 2
    return float(dy), float(dx), peak


def shift(img: np.ndarray, dy: float, dx: float) -> tuple[np.ndarray, np.ndarray]:
    """`img` (..., h, w) moved by (dy, dx) with bilinear interpolation, and a (h, w) map of the pixels whose
    source lies inside the image (elsewhere the result is the nearest edge sample and must not be trusted)."""
    h, w = img.shape[-2:]
    ys = np.arange(h, dtype=np.float32) - np.float32(dy)
    xs = np.arange(w, dtype=np.float32) - np.float32(dx)
    valid = ((ys >= 0) & (ys <= h - 1))[:, None] & ((xs >= 0) & (xs <= w - 1))[None, :]
    # Every sample reads its neighbours at the same fraction: whole-pixel slices of the image padded with its
    # edges (what clamped coordinates read), weighted along rows, then along columns. No gathers.
    sy, sx = float(np.clip(-dy, -h, h)), float(np.clip(-dx, -w, w))
    iy, ix = int(np.floor(sy)), int(np.floor(sx))
    fy, fx = np.float32(sy - iy), np.float32(sx - ix)
    py, px = abs(iy) + 1, abs(ix) + 1
    padded = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(py, py), (px, px)], mode="edge")
    y0, x0 = py + iy, px + ix
    rows = padded[..., y0:y0 + h, :] * (1 - fy) + padded[..., y0 + 1:y0 + 1 + h, :] * fy
    return (rows[..., x0:x0 + w] * (1 - fx) + rows[..., x0 + 1:x0 + 1 + w] * fx).astype(np.float32), valid


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 box average with edge replication: single noisy pixels do not decide a weight."""
    p = np.pad(x, 1, mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * np.float32(1.0 / 9.0)


def _spread(x: np.ndarray, pick: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """The minimum or maximum (`pick`: np.minimum, np.maximum) of each 3x3 neighbourhood, edges replicated."""
    p = np.pad(x, 1, mode="edge")
    rows = pick(pick(p[:-2], p[1:-1]), p[2:])
    return pick(pick(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def departure(pred: np.ndarray, blended: np.ndarray) -> float:
    """1 - IoU of the two predictions' masks at 0.5: how much of the frame's own mask a blend changes."""
    mine, theirs = pred >= 0.5, blended >= 0.5
    union = int(np.count_nonzero(mine | theirs))
    return int(np.count_nonzero(mine ^ theirs)) / union if union else 0.0


def disagreement(pred: np.ndarray, carried: np.ndarray) -> np.ndarray:
    """How far this frame's prediction lies outside the range the carried history takes one model pixel
    around: an edge that wobbled or moved by up to a pixel is 0, a region the model changed its mind about
    is up to 1."""
    return np.maximum(np.maximum(_spread(carried, np.minimum) - pred, pred - _spread(carried, np.maximum)), 0.0)


def limit(pred: np.ndarray, carried: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The history's weight, limited so that the blend changes at most BUDGET of the frame's own mask (the
    blend's departure from the prediction): where it would change more, the regions where the prediction
    disagrees most with the history (beyond edge wobble) keep the prediction, the most disagreeing first;
    each such region's rim is taken with it (1 pixel). Wobble alone over budget keeps the prediction whole."""
    if departure(pred, pred + weight * (carried - pred)) <= BUDGET:
        return weight
    excess = disagreement(pred, carried)
    for level in LEVELS:
        limited = weight * _spread((excess <= level).astype(np.float32), np.minimum)
        if departure(pred, pred + limited * (carried - pred)) <= BUDGET:
            return limited
    return np.zeros_like(weight)


class _Upscaled:
    """The bilinear upscale of the model-resolution weights to the mask's (H, W) (centres aligned, edges
    clamped: Pillow's BILINEAR), computed only over the rectangles asked for (small arrays: no pass over,
    nor a fresh allocation of, a whole-size map). A mask smaller than the model's input along an axis is
    resized whole by Pillow (area-weighted there, and small)."""

    def __init__(self, low: np.ndarray, height: int, width: int) -> None:
        h, w = low.shape
        self.low, self.whole = low, None
        if height >= h and width >= w:
            self.rows, self.cols = Taps.bilinear(height, h, height / h), Taps.bilinear(width, w, width / w)
        else:
            resized = Image.fromarray(low, mode="F").resize((width, height), Image.Resampling.BILINEAR)
            self.whole = np.asarray(resized, dtype=np.float32)

    def at(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.whole is not None:
            return self.whole[y0:y1, x0:x1]
        return upscale(self.low, self.rows.part(y0, y1), self.cols.part(x0, x1))


def _blend_shifted(alpha: np.ndarray, prev: np.ndarray, weight: _Upscaled, ry: int, rx: int) -> None:
    """alpha += weight * (prev moved by (ry, rx) whole pixels - alpha), in place, where the moved prev covers
    alpha (elsewhere alpha stays as it is). Where the two are equal the blend gives alpha itself, and in a
    mask they are equal almost everywhere but near the outline (both exactly 0 or exactly 1): so each strip
    of STRIP rows is compared first, and the weights are upscaled and the blend made only over the rows and
    column spans where they differ. The result is the same as blending everywhere."""
    h, w = alpha.shape
    if abs(ry) >= h or abs(rx) >= w:
        return
    top, left = max(ry, 0), max(rx, 0)
    cur = alpha[top:h + min(ry, 0), left:w + min(rx, 0)]
    old = prev[max(-ry, 0):h - max(ry, 0), max(-rx, 0):w - max(rx, 0)]
    for y in range(0, cur.shape[0], STRIP):
        a, p = cur[y:y + STRIP], old[y:y + STRIP]
        differ = a != p
        rows = np.flatnonzero(differ.any(axis=1))
        if not rows.size:
            continue
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        for c0, c1 in _spans(differ[r0:r1].any(axis=0), SPAN_GAP):
            part = a[r0:r1, c0:c1]
            change = p[r0:r1, c0:c1] - part
            change *= weight.at(top + y + r0, top + y + r1, left + c0, left + c1)
            part += change


class TemporalFilter:
    """The history of a sequence; prediction() then mask() for each frame, frames in order. Holds the last
    frame's model input and blended prediction (about 1.6 MB at 320x320) and its full-resolution mask
    (4 bytes a pixel)."""

    def __init__(self) -> None:
        self._image: Optional[np.ndarray] = None  # (3, h, w) model input of the last frame
        self._pred: Optional[np.ndarray] = None  # (h, w) blended prediction of the last frame
        self._alpha: Optional[np.ndarray] = None  # (H, W) blended full-resolution mask of the last frame
        self._key: object = None
        self.weight: Optional[np.ndarray] = None  # this frame's history weight at the model's resolution
        self.motion: tuple[float, float] = (0.0, 0.0)  # this frame's translation, model pixels

    def prediction(self, image: np.ndarray, pred: np.ndarray, key: object = None) -> np.ndarray:
        """The prediction to refine (this frame's own) once this frame's weights are decided. `image` is what
        the model saw ((3, h, w) in [0, 1]), `pred` its prediction ((h, w) in [0, 1]); `key` names what the
        model looked at (model, crop box): when it changes, or the size does, the history starts over."""
        prev_image, prev_pred = self._image, self._pred
        fresh = prev_image is None or prev_pred is None or key != self._key or prev_image.shape != image.shape
        self._key = key
        self.weight, self.motion = None, (0.0, 0.0)
        self._image, self._pred = image, pred if fresh else self._blend(prev_image, prev_pred, image, pred)
        return pred

    def mask(self, alpha: np.ndarray) -> np.ndarray:
        """This frame's full-resolution mask (float32 (H, W), changed in place) blended with the last frame's,
        carried along the same motion (rounded to whole pixels at this resolution) with this frame's weights."""
        prev = self._alpha
        if self.weight is not None and prev is not None and prev.shape == alpha.shape:
            h, w = self.weight.shape
            H, W = alpha.shape
            ry, rx = int(round(self.motion[0] * H / h)), int(round(self.motion[1] * W / w))
            _blend_shifted(alpha, prev, _Upscaled(self.weight, H, W), ry, rx)
        if prev is not None and prev.shape == alpha.shape:
            np.copyto(prev, alpha)  # the history's buffer is reused: no new 4 bytes a pixel each frame
            self._alpha = prev
        else:
            self._alpha = alpha.copy()
        return alpha

    def _blend(self, prev_image: np.ndarray, prev_pred: np.ndarray, image: np.ndarray, pred: np.ndarray) -> np.ndarray:
        gray, prev_gray = image.mean(axis=0), prev_image.mean(axis=0)
        still = _box3(np.abs(image - prev_image).mean(axis=0))
        dy, dx, peak = translation(prev_gray, gray)
        best, moved, valid = still, None, np.ones(gray.shape, dtype=bool)
        if peak >= MIN_PEAK and (abs(dy) > 0.05 or abs(dx) > 0.05):
            stacked, inside = shift(np.concatenate([prev_image, prev_pred[None]]), dy, dx)
            diff = _box3(np.abs(image - stacked[:3]).mean(axis=0))
            if float(diff[inside].mean()) < float(still.mean()):  # the translation explains the change better
                best, moved, valid = diff, stacked[3], inside
        self.motion = (dy, dx) if moved is not None else (0.0, 0.0)
        carried = prev_pred if moved is None else moved
        weight = np.clip(1.0 - best * np.float32(1.0 / CHANGED), 0.0, 1.0) * np.float32(CARRY)
        weight = limit(pred, carried, (weight * valid).astype(np.float32))
        self.weight = weight
        return (pred + weight * (carried - pred)).astype(np.float32)
