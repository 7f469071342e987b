"""User options that reshape the full-resolution matte: fill holes, remove specks, shift the edge, harden
it, feather it.

They run in that order whatever order the caller names them in: clean-up first (so specks do not grow
and holes do not shrink before they are judged), then the edge's position, then its steepness, and
softening last (so nothing undoes it). Every operation keeps soft values soft and stays in [0, 1]; all of
them are numpy only, O(pixels) (shifting the edge is O(pixels x distance)), and work in horizontal strips
or on run-length encodings so a 100 MP matte needs no more than a few extra full-size arrays.

| option | type | default | range | meaning |
| --- | --- | --- | --- | --- |
| `fill_holes` | float | 0 | >= 0 | px of area: enclosed holes smaller than this become opaque |
| `remove_specks` | float | 0 | >= 0 | px of area: foreground islands smaller than this are removed |
| `shift_edge` | float | 0 | -100 .. 100 | px: moves the 0.5 contour outward (+) or inward (-) |
| `hardness` | float | 0 | 0 .. 1 | steepens the edge around 0.5 while keeping it soft |
| `feather` | float | 0 | 0 .. 500 | px: Gaussian softening radius of the edge |
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np

from bgmask.mask.refine import BlockUpscale, CancelFn, _block_mean, _check, box_mean_1d

MAX_SHIFT = 100.0
MAX_FEATHER = 500.0
HARDNESS_GAIN = 10.0  # slope at 0.5 when hardness is 1
SOLID = 0.98  # at least this opaque counts as solid when deciding what a hole is
VISIBLE = 0.02  # more than this counts as visible when deciding what an island is
STRIP_PIXELS = 1 << 18


def apply_options(alpha: np.ndarray, *, hardness: float = 0.0, shift_edge: float = 0.0, feather: float = 0.0,
                  fill_holes: float = 0.0, remove_specks: float = 0.0,
                  cancel: Optional[CancelFn] = None) -> np.ndarray:
    """Apply the matte options to a float32 (H, W) matte in [0, 1]; returns float32 (H, W) in [0, 1].

    Applied in this order (each one a no-op at its default 0):

    - fill_holes (px of area, >= 0): a hole is a 4-connected region of pixels less than 98 % opaque that
      does not touch the image border (so it is enclosed by solid foreground); when its missing opacity,
      sum(1 - alpha), is below fill_holes it becomes fully opaque. A clean hole of N pixels "weighs" N.
    - remove_specks (px of area, >= 0): an island is an 8-connected region of pixels more than 2 %
      opaque; when its opacity, sum(alpha), is below remove_specks it is removed (set to 0). Islands that
      reach the border count like any other.
    - shift_edge (px, -100..100): grayscale dilation (+, the foreground grows) or erosion (-, it shrinks)
      with a disk of that radius, interpolated between whole-pixel disks for fractions: every contour,
      the 0.5 one included, moves outward or inward by that distance while soft detail keeps its shape.
    - hardness (0..1): the contrast curve logit(out) = g * logit(alpha) with g = 10 ** hardness: smooth,
      monotonic, fixes 0, 0.5 and 1 and never thresholds; at 1 the slope at 0.5 is 10x and a ramp's
      10-90 % width shrinks 7x, so a model edge of 8-15 px becomes 1-2 px.
    - feather (px, 0..500): Gaussian blur with sigma = feather / 2, so a hard edge becomes a ramp about
      2 x feather wide (2 % to 98 %); the image border does not fade the matte.

    The input is not modified. Raises ValueError for values out of range and BgmaskError(cancelled) when
    `cancel()` turns true."""
    _validate(hardness, shift_edge, feather, fill_holes, remove_specks)
    alpha = np.asarray(alpha, dtype=np.float32)
    if not (hardness or shift_edge or feather or fill_holes or remove_specks):
        return alpha
    out = np.clip(alpha, 0.0, 1.0)  # a fresh, contiguous array this function may change in place
    if fill_holes > 0:
        _check(cancel)
        _fill_holes(out, fill_holes)
    if remove_specks > 0:
        _check(cancel)
        _remove_specks(out, remove_specks)
    if shift_edge:
        out = shift(out, shift_edge, cancel)
    if hardness > 0:
        _harden(out, hardness, cancel)
    if feather > 0:
        out = blur(out, feather / 2.0, cancel)
    return out


def _validate(hardness: float, shift_edge: float, feather: float, fill_holes: float, remove_specks: float) -> None:
    checks = (("hardness", hardness, 0.0, 1.0), ("shift_edge", shift_edge, -MAX_SHIFT, MAX_SHIFT),
              ("feather", feather, 0.0, MAX_FEATHER), ("fill_holes", fill_holes, 0.0, math.inf),
              ("remove_specks", remove_specks, 0.0, math.inf))
    for name, value, lo, hi in checks:
        number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
        if not lo <= number <= hi:  # NaN (and so anything but a real number) fails every comparison
            raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}")


def _strips(height: int, width: int, at_least: int = 1) -> list[tuple[int, int]]:
    step = max(at_least, STRIP_PIXELS // max(1, width))
    return [(y, min(height, y + step)) for y in range(0, height, step)]


# ---------------------------------------------------------------------------------------------- hardness

def _harden(alpha: np.ndarray, hardness: float, cancel: Optional[CancelFn]) -> None:
    """m^g / (m^g + (1-m)^g) == logistic(g * logit(m)) on the nearer side m = min(x, 1 - x) and mirrored
    (1 - m is exact in float32 there), so the curve stays monotonic to the last bit; in place."""
    g = np.float32(HARDNESS_GAIN ** hardness)
    one = np.float32(1.0)
    for y0, y1 in _strips(*alpha.shape):
        _check(cancel)
        x = alpha[y0:y1]
        upper = x > 0.5
        m = np.minimum(x, one - x)
        up = np.power(m, g)
        down = np.power(one - m, g)
        down += up
        np.divide(up, down, out=m)
        np.subtract(one, m, out=m, where=upper)
        x[...] = m


# ---------------------------------------------------------------------------------------------- shift

def _disk_half_widths(radius: int) -> np.ndarray:
    """Half-width of each row |dy| = 0..radius of the digital disk dx^2 + dy^2 <= (radius + 0.5)^2 (the
    half-pixel margin makes diagonal reach match the axial one to within about 0.2 px)."""
    dy = np.arange(radius + 1)
    return np.floor(np.sqrt((radius + 0.5) ** 2 - dy.astype(np.float64) ** 2)).astype(int)


def shift(alpha: np.ndarray, distance: float, cancel: Optional[CancelFn] = None) -> np.ndarray:
    """Move every contour of the matte by `distance` px: outward (max over a disk) when positive, inward
    (min over a disk) when negative. A fractional distance blends the two whole-pixel disks around it."""
    op = np.maximum if distance > 0 else np.minimum
    whole = int(math.floor(abs(distance)))
    frac = float(abs(distance) - whole)
    radii = [whole] + ([whole + 1] if frac > 0 else [])
    widths = {r: _disk_half_widths(r) for r in radii}
    reach = radii[-1]
    H, W = alpha.shape
    out = np.empty_like(alpha)
    for y0, y1 in _strips(H, W, at_least=max(8, 2 * reach)):
        _check(cancel)
        ya, yb = max(0, y0 - reach), min(H, y1 + reach)
        src = alpha[ya:yb]
        grown = src.copy()  # max (or min) over a horizontal segment of half-width w, w growing below
        acc = {r: alpha[y0:y1].copy() for r in radii}
        for w in range(reach + 1):
            if 0 < w < W:
                op(grown[:, w:], src[:, :-w], out=grown[:, w:])
                op(grown[:, :-w], src[:, w:], out=grown[:, :-w])
            for r in radii:
                for ady in np.nonzero(widths[r] == w)[0]:
                    for dy in {int(ady), -int(ady)}:
                        # output rows y take row y + dy of `grown`, where that row exists
                        lo, hi = max(y0, -dy), min(y1, H - dy)
                        if lo < hi:
                            dst = acc[r][lo - y0:hi - y0]
                            op(dst, grown[lo + dy - ya:hi + dy - ya], out=dst)
        if frac > 0:
            lo_r, hi_r = acc[whole], acc[whole + 1]
            hi_r -= lo_r
            hi_r *= np.float32(frac)
            hi_r += lo_r
            out[y0:y1] = hi_r
        else:
            out[y0:y1] = acc[whole]
    return out


# ---------------------------------------------------------------------------------------------- feather

def _box_radii(sigma: float, passes: int = 3) -> list[int]:
    """Radii of `passes` box filters whose composition has variance sigma^2 as closely as integer radii
    allow (a box of radius r has variance r(r+1)/3)."""
    if sigma <= 0:
        return []
    r = max(0, int(math.floor(math.sqrt(3 * sigma * sigma / passes + 0.25) - 0.5)))
    radii = [r] * passes
    for i in range(passes):  # step single passes up while that brings the variance closer
        cur = sum(q * (q + 1) / 3 for q in radii)
        bigger = cur - radii[i] * (radii[i] + 1) / 3 + (radii[i] + 1) * (radii[i] + 2) / 3
        if abs(bigger - sigma * sigma) < abs(cur - sigma * sigma):
            radii[i] += 1
    return [q for q in radii if q > 0]


def _gaussian_small(x: np.ndarray, sigma: float, cancel: Optional[CancelFn]) -> np.ndarray:
    """Three box passes per axis with radii of a few pixels; strips along y carry a halo."""
    radii = _box_radii(sigma)
    if not radii:
        return x
    H, W = x.shape
    halo = sum(radii)
    out = np.empty_like(x)
    for y0, y1 in _strips(H, W, at_least=max(16, 4 * halo)):
        _check(cancel)
        ya, yb = max(0, y0 - halo), min(H, y1 + halo)
        s = x[ya:yb]
        for r in radii:
            s = box_mean_1d(s, r, axis=1)
        for r in radii:
            s = box_mean_1d(s, r, axis=0)
        out[y0:y1] = s[y0 - ya:y1 - ya]
    return out


def blur(alpha: np.ndarray, sigma: float, cancel: Optional[CancelFn] = None) -> np.ndarray:
    """Gaussian-like blur with standard deviation sigma, O(pixels) whatever sigma: large blurs run on a
    block-averaged copy (factor k ~ sigma / 2) and are upscaled bilinearly, subtracting the variance those
    two steps add themselves (about k^2 / 4)."""
    H, W = alpha.shape
    k = max(1, min(int(sigma // 2), H, W))
    if k == 1:
        return _gaussian_small(alpha, sigma, cancel)
    low = _block_mean(alpha[:, :, None], k, k, cancel)[0]
    low = _gaussian_small(low, math.sqrt(max(sigma * sigma - k * k / 4.0, 0.0)) / k, cancel)
    out = np.empty_like(alpha)
    up = BlockUpscale(low, k, k, H, W)
    for m in up.strips(STRIP_PIXELS):
        _check(cancel)
        y0, y1 = up.pixel_rows(m)
        np.clip(up(m)[0], 0.0, 1.0, out=out[y0:y1])
    return out


# ---------------------------------------------------------------------------------------------- regions

class Runs:
    """Run-length encoding of a binary mask (row, start, end) with connected-component labels per run.

    Components are found on the runs, not the pixels: runs in consecutive rows are linked when they
    overlap (4-connectivity) or touch diagonally (8-connectivity), then a vectorised union-find (hooking
    plus pointer jumping) labels the graph. Cost O(pixels) for the encoding, O(runs log runs) after."""

    def __init__(self, mask: np.ndarray, connectivity: int) -> None:
        H, W = mask.shape
        self.shape = (H, W)
        edges = np.zeros((H, W + 2), dtype=np.int8)
        edges[:, 1:W + 1] = mask
        step = np.diff(edges, axis=1)  # +1 where a run starts, -1 one past where it ends
        starts = np.flatnonzero(step == 1)
        ends = np.flatnonzero(step == -1)
        self.row = starts // (W + 1)
        self.start = starts % (W + 1)
        self.end = ends % (W + 1)
        self.label = self._label(connectivity)

    def _label(self, connectivity: int) -> np.ndarray:
        n = self.row.size
        if n == 0:
            return np.zeros(0, dtype=np.intp)
        H, W = self.shape
        stride = W + 2
        diag = 1 if connectivity == 8 else 0
        key_start = self.row * stride + self.start
        key_end = self.row * stride + self.end
        nxt = (self.row + 1) * stride
        # Runs of the next row that overlap run i form the index range [lo, hi).
        lo = np.searchsorted(key_end, nxt + self.start - diag, side="right")
        hi = np.searchsorted(key_start, nxt + self.end + diag, side="left")
        count = np.maximum(hi - lo, 0)
        u = np.repeat(np.arange(n), count)
        first = np.cumsum(count) - count
        v = np.repeat(lo, count) + (np.arange(u.size) - np.repeat(first, count))
        parent = np.arange(n)
        while u.size:
            pu, pv = parent[u], parent[v]
            differ = pu != pv
            if not differ.any():
                break
            u, v, pu, pv = u[differ], v[differ], pu[differ], pv[differ]
            np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
            while True:  # pointer jumping until every run points at its root
                grand = parent[parent]
                if np.array_equal(grand, parent):
                    break
                parent = grand
        return parent

    def pixel_index(self, runs: np.ndarray) -> np.ndarray:
        """Flat (row-major) indices of every pixel of the selected runs."""
        W = self.shape[1]
        length = self.end[runs] - self.start[runs]
        base = self.row[runs] * W + self.start[runs]
        first = np.cumsum(length) - length
        return np.repeat(base - first, length) + np.arange(int(length.sum()))

    def component_sums(self, values: np.ndarray) -> np.ndarray:
        """Sum of `values` (flat, per pixel) over each component, indexed by label."""
        W = self.shape[1]
        bounds = np.empty(2 * self.row.size, dtype=np.intp)
        bounds[0::2] = self.row * W + self.start
        bounds[1::2] = self.row * W + self.end
        if bounds[-1] == values.size:  # the last run ends the image: reduceat runs to the end by itself
            bounds = bounds[:-1]
        per_run = np.add.reduceat(values, bounds, dtype=np.float64)[0::2]
        return np.bincount(self.label, weights=per_run, minlength=self.row.size)


def _select(runs: Runs, weights: np.ndarray, area: float, exclude_border: bool) -> np.ndarray:
    """Flat pixel indices of the components whose summed weight is below `area`."""
    if runs.row.size == 0:
        return np.zeros(0, dtype=np.intp)
    size = runs.component_sums(weights)
    small = size < area
    if exclude_border:
        H, W = runs.shape
        at_border = (runs.row == 0) | (runs.row == H - 1) | (runs.start == 0) | (runs.end == W)
        small[runs.label[at_border]] = False
    return runs.pixel_index(np.flatnonzero(small[runs.label]))


def _fill_holes(alpha: np.ndarray, area: float) -> None:
    """Enclosed non-solid regions whose missing opacity is below `area` px become opaque, in place."""
    flat = alpha.reshape(-1)
    runs = Runs(alpha < SOLID, connectivity=4)
    flat[_select(runs, 1.0 - flat, area, exclude_border=True)] = 1.0


def _remove_specks(alpha: np.ndarray, area: float) -> None:
    """Visible islands whose total opacity is below `area` px are removed, in place."""
    flat = alpha.reshape(-1)
    runs = Runs(alpha > VISIBLE, connectivity=8)
    flat[_select(runs, flat, area, exclude_border=False)] = 0.0
