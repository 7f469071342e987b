"""Foreground colours without the background's spill: what a semi-transparent edge pixel would look like
over any other background.

An edge pixel is a blend I = F * alpha + B * (1 - alpha); cutting the layer out with a mask keeps I, so
hair and soft edges carry a fringe of the old background. This estimates F by blur fusion (after Forte
and Pitie, "Approximate Fast Foreground Colour Estimation", ICIP 2021): alpha-weighted blurs give smooth
local estimates of the foreground and background colours, which are then moved the least distance that
makes F * alpha + B * (1 - alpha) = I hold exactly, first with a wide blur, then with a narrow one. All of
it is a handful of O(pixels) blurs (matte_ops.blur) per channel."""

from __future__ import annotations

from typing import Optional

import numpy as np

from bgmask.mask.matte_ops import blur
from bgmask.mask.refine import CancelFn, _check

WIDE_SIGMA = 24.0  # px: the neighbourhood that supplies pure foreground and background colours
NARROW_SIGMA = 2.0  # px: the second pass that brings the estimate back to the edge's own detail
OPAQUE = 1.0 - 1.0 / 1024.0  # at least this opaque: the pixel is all foreground, its colour is kept
CLEAR = 1.0 / 1024.0  # at most this opaque: the pixel is invisible, its colour is kept too
_TINY = np.float32(1e-6)


def _fused(image: np.ndarray, alpha: np.ndarray, f_src: np.ndarray, b_src: np.ndarray,
           w_f: np.ndarray, w_b: np.ndarray, sigma: float, cancel: Optional[CancelFn]) -> tuple[np.ndarray, np.ndarray]:
    """One blur-fusion step for one channel: F and B estimated as alpha- (resp. 1 - alpha-) weighted
    blurs of f_src and b_src, then corrected along (alpha, 1 - alpha) so they recompose I exactly."""
    f = blur(f_src * alpha, sigma, cancel)
    f /= w_f
    b = blur(b_src * (1.0 - alpha), sigma, cancel)
    b /= w_b
    resid = image - alpha * f - (1.0 - alpha) * b
    resid /= alpha * alpha + (1.0 - alpha) * (1.0 - alpha)  # >= 0.5: the least-distance projection
    f += alpha * resid
    b += (1.0 - alpha) * resid
    np.clip(f, 0.0, 1.0, out=f)
    np.clip(b, 0.0, 1.0, out=b)
    return f, b


def decontaminate(image: np.ndarray, alpha: np.ndarray, *, cancel: Optional[CancelFn] = None) -> np.ndarray:
    """Foreground colours with the background spill removed at edge pixels.

    image: float32 (H, W, 3) in [0, 1], in the input's own encoding; alpha: float32 (H, W) in [0, 1].
    Returns float32 (H, W, 3) in [0, 1]: semi-transparent pixels get the foreground colour that,
    composited back over the background they were shot against, reproduces the image
    (F * alpha + B * (1 - alpha) = I with the estimated B); pixels at least 1 - 1/1024 opaque or at most
    1/1024 opaque keep their colour exactly. The work is confined to the box around the soft pixels.
    Raises BgmaskError(cancelled) when `cancel()` turns true."""
    image = np.asarray(image, dtype=np.float32)
    a = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    out = image.copy()
    soft = (a > CLEAR) & (a < OPAQUE)
    rows, cols = np.flatnonzero(soft.any(axis=1)), np.flatnonzero(soft.any(axis=0))
    if rows.size == 0:
        return out
    # Only the box around the soft pixels (plus the blurs' reach) needs work; the rest keeps its colour.
    m = int(np.ceil(3 * (WIDE_SIGMA + NARROW_SIGMA)))
    H, W = a.shape
    box = (slice(max(0, rows[0] - m), min(H, rows[-1] + m + 1)), slice(max(0, cols[0] - m), min(W, cols[-1] + m + 1)))
    a = np.ascontiguousarray(a[box])
    weights = {}
    for sigma in (WIDE_SIGMA, NARROW_SIGMA):
        w_f = blur(a, sigma, cancel)
        w_b = 1.0 - w_f
        w_f += _TINY
        w_b += _TINY
        weights[sigma] = (w_f, w_b)
    keep = ~((a > CLEAR) & (a < OPAQUE))
    for c in range(image.shape[2]):
        _check(cancel)
        ch = np.ascontiguousarray(image[box + (c,)])
        f, b = _fused(ch, a, ch, ch, *weights[WIDE_SIGMA], WIDE_SIGMA, cancel)
        f, _ = _fused(ch, a, f, b, *weights[NARROW_SIGMA], NARROW_SIGMA, cancel)
        f[keep] = ch[keep]
        out[box + (c,)] = f
    return out
