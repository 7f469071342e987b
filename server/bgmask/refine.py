"""Carrying the model's low-resolution soft prediction to a full-resolution mask.

`refine` is a guided filter fitted at low resolution (after He & Sun, "Fast Guided Filter", 2015): near
an edge the matte is locally a linear function of the image's colour (alpha = a . I + b wherever the
foreground and background colours are locally flat), so the slopes a are fitted by regularised least
squares over small windows of the prediction's grid, against the image as the model saw it, and applied
to the full-resolution image. Hair and other detail finer than a model pixel comes back from the image
itself; where the guide explains the prediction well the model's own soft edge is sharpened to the
image's edge (the guided filter's offset), and where it does not the result falls back to the plain
bilinear prediction (not to a blurred one); flat regions of the prediction (exact 0 or 1) stay exact.
`upsample` is the plain bilinear resize used when refinement is switched off.

The grid is reduced from full resolution by integer factors, so the final pass is a bilinear upscale of
C+1 coefficient maps by integer factors and a multiply-add with the guide: horizontal strips of a few
hundred thousand pixels with contiguous float32 numpy operations. The work is O(pixels), the arithmetic
stays in cache, memory beyond the guide and the output is a few strips, and cancellation is checked
between strips. Parameters were chosen with bench/quality.py."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from PIL import Image

from bgmask import errors as E
from bgmask import parallel
from bgmask.errors import BgmaskError

CancelFn = Callable[[], bool]

# Window radius in model pixels (windows are 2r+1 wide: wide enough to see across a model's 2-3 px soft
# edge), and regularisation in squared guide units (contrast well below sqrt(EPS) = 0.3 % is ignored).
RADIUS = 3
EPS = 1e-5
STRIP_PIXELS = 1 << 18  # output pixels per strip: a few working arrays of this size stay in cache
TILE = 96  # grid cells a side of the tiles the slopes are fitted on
CERTAIN = 1.0 / 256.0  # a prediction this close to 0 or 1 is taken as certain: the guide is not consulted
INTEGER_SCALES = {np.dtype(np.uint8): 1.0 / 255.0, np.dtype(np.uint16): 1.0 / 65535.0}


def _check(cancel: Optional[CancelFn]) -> None:
    if cancel is not None and cancel():
        raise BgmaskError(E.CANCELLED, "The request was cancelled.")


def _resize_f(img: np.ndarray, width: int, height: int, box: Optional[tuple[float, float, float, float]] = None,
              resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """Pillow's resize of a small float32 map (bilinear is area-weighted when shrinking: no aliasing)."""
    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F").resize(
        (width, height), resample, box=box)
    return np.asarray(out, dtype=np.float32)


def _lerp_rows(low: np.ndarray, y0: int, y1: int, scale: float) -> np.ndarray:
    """Rows y0..y1 of a bilinear vertical upscale of `low` (..., h, w) by `scale` (pixel centres aligned,
    edges clamped). Written as lo + (hi - lo) * f so equal neighbours interpolate to exactly themselves."""
    h = low.shape[-2]
    src = np.clip((np.arange(y0, y1, dtype=np.float64) + 0.5) / scale - 0.5, 0.0, h - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, h - 1)
    f = (src - i0).astype(np.float32)[:, None]
    lo = np.take(low, i0, axis=-2)
    hi = np.take(low, i1, axis=-2)
    hi -= lo
    hi *= f
    hi += lo
    return hi


def _expand_cols(rows: np.ndarray, k: int, width: int) -> np.ndarray:
    """Bilinear horizontal upscale of (..., n, w) rows by the integer factor k, cropped to `width` columns.

    With an integer factor every output column is lo + (hi - lo) * f with one of k fixed fractions f, so
    the upscale is k strided passes over contiguous low-resolution rows instead of a gather."""
    if k == 1:
        return rows[..., :width]
    pad = np.concatenate([rows[..., :1], rows, rows[..., -1:]], axis=-1)  # clamped edges
    w = rows.shape[-1]
    out = np.empty(rows.shape[:-1] + (w, k), dtype=np.float32)
    left, mid, right = pad[..., :w], pad[..., 1:w + 1], pad[..., 2:]
    d_left = mid - left
    d_right = right - mid
    for j in range(k):
        f = (j + 0.5) / k - 0.5  # where output column j of a cell falls, in cells from the cell's centre
        dst = out[..., j]
        if f < 0:
            np.multiply(d_left, np.float32(1.0 + f), out=dst)
            dst += left
        else:
            np.multiply(d_right, np.float32(f), out=dst)
            dst += mid
    return out.reshape(rows.shape[:-1] + (w * k,))[..., :width]


def _strips(height: int, width: int) -> list[tuple[int, int]]:
    step = max(1, STRIP_PIXELS // max(1, width))
    return [(y, min(height, y + step)) for y in range(0, height, step)]


def upsample(pred: np.ndarray, width: int, height: int) -> np.ndarray:
    """Plain bilinear resize of a float32 (h, w) prediction in [0, 1] to (height, width) float32: the
    `refine: false` path. Pixel centres are aligned and edges clamped, as in Pillow; shrinking (an image
    smaller than the model input) is area-weighted so nothing aliases."""
    pred = np.clip(np.asarray(pred, dtype=np.float32), 0.0, 1.0)
    h, w = pred.shape
    if h > height or w > width:  # shrink on the small side first, then only ever enlarge
        h, w = min(h, height), min(w, width)
        pred = _resize_f(pred, w, h)
    sx = np.clip((np.arange(width, dtype=np.float64) + 0.5) * (w / width) - 0.5, 0.0, w - 1)
    x0 = np.floor(sx).astype(np.intp)
    x1 = np.minimum(x0 + 1, w - 1)
    fx = (sx - x0).astype(np.float32)
    out = np.empty((height, width), dtype=np.float32)
    for y0, y1 in _strips(height, width):
        rows = _lerp_rows(pred, y0, y1, height / h)
        lo = np.take(rows, x0, axis=1)
        hi = np.take(rows, x1, axis=1)
        hi -= lo
        hi *= fx
        hi += lo
        np.clip(hi, 0.0, 1.0, out=out[y0:y1])
    return out


def _factor(full: int, pred: int) -> int:
    """Integer reduction from full resolution to the grid the coefficients are fitted on: the nearest to
    the prediction's resolution, never finer than full resolution."""
    return max(1, round(full / pred))


def _block_mean(guide: np.ndarray, ky: int, kx: int, cancel: Optional[CancelFn]) -> np.ndarray:
    """Area-average (H, W, C) down by integer factors to float32 (C, ceil(H/ky), ceil(W/kx)); partial
    blocks at the bottom and right are averaged over the pixels they have."""
    H, W, C = guide.shape
    hl, wl = -(-H // ky), -(-W // kx)
    wf = (W // kx) * kx
    out = np.empty((hl, wl, C), dtype=np.float32)
    step = max(1, STRIP_PIXELS // max(1, W * ky))
    for i0 in range(0, hl, step):
        _check(cancel)
        i1 = min(hl, i0 + step)
        block = guide[i0 * ky:min(H, i1 * ky)]
        full = block.shape[0] // ky
        rows = np.empty((i1 - i0, W, C), dtype=np.float32)
        if full:
            v = block[:full * ky].reshape(full, ky, W, C)
            rows[:full] = v[:, 0]
            for j in range(1, ky):
                rows[:full] += v[:, j]
        if full < i1 - i0:
            rest = block[full * ky:]
            rows[full] = rest.sum(axis=0, dtype=np.float32) / np.float32(rest.shape[0]) * np.float32(ky)
        if wf:
            cols = rows[:, :wf].reshape(i1 - i0, wf // kx, kx, C)
            acc = cols[:, :, 0].copy()
            for j in range(1, kx):
                acc += cols[:, :, j]
            out[i0:i1, :wf // kx] = acc
        if wf < W:
            out[i0:i1, -1] = rows[:, wf:].sum(axis=1) / np.float32(W - wf) * np.float32(kx)
    out /= np.float32(kx * ky)  # a division, so a block of ones averages to exactly 1
    return np.moveaxis(out, -1, 0)


def box_mean_1d(x: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Mean over 2r+1 samples along `axis`, over the samples that exist at the borders (so a border does
    not fade the map). Direct sums of shifted slices rather than running sums: a run of identical values
    averages to exactly that value, which keeps flat regions of an exact 0/1 prediction exact."""
    n = x.shape[axis]
    total = x.copy()
    for k in range(1, min(r, n - 1) + 1):
        hi = [slice(None)] * x.ndim
        lo = [slice(None)] * x.ndim
        hi[axis], lo[axis] = slice(k, None), slice(None, n - k)
        total[tuple(hi)] += x[tuple(lo)]
        total[tuple(lo)] += x[tuple(hi)]
    idx = np.arange(n)
    count = (np.minimum(idx + r + 1, n) - np.maximum(idx - r, 0)).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = n
    total /= count.reshape(shape)
    return total


def _box(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, clipped at the borders, of float32 maps (..., h, w)."""
    return box_mean_1d(box_mean_1d(x, r, axis=-1), r, axis=-2)


def _coefficients(guide: np.ndarray, pred: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Guided filter at low resolution: window-averaged (a_1..a_C, b) as float32 (C+1, h, w) such that
    alpha ~ sum_c a_c * I_c + b. A window where the prediction is flat gives a = 0 and b = its value
    exactly (I * p is then exactly I * value, so the covariance cancels to exactly 0)."""
    C = guide.shape[0]
    I = guide
    p = pred
    pairs = [(i, j) for i in range(C) for j in range(i, C)]
    stack = np.concatenate([I, p[None], I * p[None], np.stack([I[i] * I[j] for i, j in pairs]), (p * p)[None]])
    # Window sums in float32 (exact for flat windows), the solve in float64: with eps as small as it is,
    # a near-gray window's covariance is nearly singular and float32 would lose its determinant.
    m = _box(stack, radius).astype(np.float64)
    mI, mp, mIp, mpp = m[:C], m[C], m[C + 1:2 * C + 1], m[-1]
    cov = mIp - mI * mp[None]
    sigma = {pair: m[2 * C + 1 + n] - mI[pair[0]] * mI[pair[1]] for n, pair in enumerate(pairs)}
    if C == 1:
        a = cov / (sigma[(0, 0)] + eps)[None]
    else:  # 3x3 symmetric solve per pixel by cofactors
        s = {k: v + (eps if k[0] == k[1] else 0.0) for k, v in sigma.items()}
        s00, s01, s02, s11, s12, s22 = s[(0, 0)], s[(0, 1)], s[(0, 2)], s[(1, 1)], s[(1, 2)], s[(2, 2)]
        c00 = s11 * s22 - s12 * s12
        c01 = s02 * s12 - s01 * s22
        c02 = s01 * s12 - s02 * s11
        c11 = s00 * s22 - s02 * s02
        c12 = s01 * s02 - s00 * s12
        c22 = s00 * s11 - s01 * s01
        det = s00 * c00 + s01 * c01 + s02 * c02
        a = np.stack([c00 * cov[0] + c01 * cov[1] + c02 * cov[2],
                      c01 * cov[0] + c11 * cov[1] + c12 * cov[2],
                      c02 * cov[0] + c12 * cov[1] + c22 * cov[2]]) / det[None]
    var_p = mpp - mp * mp
    explained = np.sum(a * cov, axis=0)  # variance of p the linear model explains, <= var_p
    fit = np.where(var_p > 1e-8, np.clip(explained / np.maximum(var_p, 1e-8), 0.0, 1.0), 0.0)
    b_window = mp - np.sum(a * mI, axis=0)
    a, b_window, fit = np.split(_box(np.concatenate([a, b_window[None], fit[None]]).astype(np.float32), radius),
                                [C, C + 1])
    # Two ways to turn the slopes into an offset: the guided filter's own (window means: it also
    # sharpens the model's blur, but falls back to a blurred prediction where the guide is flat), and
    # the prediction itself plus the guide's detail finer than a model pixel (falls back to the plain
    # prediction). Blend them by how much of the prediction's variance the guide explains.
    b_detail = pred - np.sum(a * guide, axis=0)
    b = b_detail + fit[0] * (b_window[0] - b_detail)
    return np.concatenate([a, b[None]])


def _spans(flags: np.ndarray, gap: int = 2) -> list[tuple[int, int]]:
    """[start, end) of the runs of True in a 1-D boolean array, runs at most `gap` apart joined: one wider
    span costs less than two narrow ones with their per-call overhead."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8))).tolist()
    spans: list[tuple[int, int]] = []
    for start, end in zip(edges[::2], edges[1::2]):
        if spans and start - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def _fit(low: np.ndarray, p_low: np.ndarray, radius: int, eps: float,
         cancel: Optional[CancelFn]) -> tuple[np.ndarray, np.ndarray]:
    """The coefficients (a_1..a_C, b) on the grid, and which TILE x TILE tiles of it were fitted.

    Only near cells whose prediction is strictly between CERTAIN and 1 - CERTAIN can the guide change
    anything, and on a photo those are the subject's outline, a small part of the grid: the slopes are fitted
    tile by tile, only on tiles within two windows (plus interpolation) of such a cell, each tile with a
    halo of two window radii (all a coefficient depends on), so a fitted tile holds exactly what a fit of
    the whole grid would give. Everywhere else a = 0 and b = the prediction, and the full-resolution pass
    only upscales b there. Tiles are fitted in parallel."""
    C = low.shape[0]
    hl, wl = p_low.shape
    coef = np.zeros((C + 1, hl, wl), dtype=np.float32)
    coef[C] = p_low
    unsure = (p_low > CERTAIN) & (p_low < 1.0 - CERTAIN)
    reach, halo = 2 * radius + 2, 2 * radius
    nty, ntx = -(-hl // TILE), -(-wl // TILE)
    fitted = np.zeros((nty, ntx), dtype=bool)
    for ty in range(nty):
        for tx in range(ntx):
            fitted[ty, tx] = unsure[max(0, ty * TILE - reach):(ty + 1) * TILE + reach,
                                    max(0, tx * TILE - reach):(tx + 1) * TILE + reach].any()

    def fit(tile: tuple[int, int]) -> None:
        _check(cancel)
        y0, x0 = tile[0] * TILE, tile[1] * TILE
        y1, x1 = min(hl, y0 + TILE), min(wl, x0 + TILE)
        ey0, ex0 = max(0, y0 - halo), max(0, x0 - halo)
        ey1, ex1 = min(hl, y1 + halo), min(wl, x1 + halo)
        c = _coefficients(low[:, ey0:ey1, ex0:ex1], p_low[ey0:ey1, ex0:ex1], radius, eps)
        coef[:, y0:y1, x0:x1] = c[:, y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]

    parallel.run(fit, [tuple(t) for t in np.argwhere(fitted).tolist()])
    return coef, fitted


def refine(pred: np.ndarray, guide: np.ndarray, *, cancel: Optional[CancelFn] = None,
           guide_small: Optional[np.ndarray] = None, radius: int = RADIUS, eps: float = EPS) -> np.ndarray:
    """Edge-aware upsampling of the model's prediction, guided by the full-resolution image.

    pred: float32 (h, w) in [0, 1] at model resolution, covering exactly the image area (any aspect).
    guide: float32 (H, W) or (H, W, 3), perceptual (sRGB-encoded) values in [0, 1] at full resolution;
    uint8 / uint16 arrays (any strides, e.g. a view of the RGB channels of the client's RGBA bytes) are
    taken as value / 255 or / 65535 without a full-size float copy. RGB guides work markedly better than
    luma (foreground and background often differ in hue more than in brightness).
    guide_small: optional, the same guide at the prediction's resolution ((h, w) or (h, w, 3)), ideally
    exactly what the model saw (its input before normalisation, reduced to luma for a luma guide); when
    absent it is area-averaged from `guide`. Returns float32 (H, W) in [0, 1].

    The result is q = a . I + b per pixel, a and b bilinear from a grid near the prediction's resolution:
    a is the least-squares slope of prediction against guide over windows of 2 * radius + 1 cells
    (regularised by `eps`); b blends the guided filter's offset (which also sharpens the model's blurred
    edge onto the guide's edge) with P - a . I_low (the bilinear prediction plus the guide's detail finer
    than a model pixel), by how much of the prediction's variance the guide explains. Where the guide
    has no contrast the result is the plain bilinear prediction; a dozen model pixels from any soft
    value of an exact 0/1 prediction it is exactly 0 or 1; everything is clipped to [0, 1]. Raises
    BgmaskError(cancelled) when `cancel()` turns true (checked between strips)."""
    pred = np.clip(np.nan_to_num(np.asarray(pred, dtype=np.float32), nan=0.0), 0.0, 1.0)
    guide = np.asarray(guide)
    unit = INTEGER_SCALES.get(guide.dtype)
    if unit is None:
        guide, unit = guide.astype(np.float32, copy=False), 1.0
    if guide.ndim == 2:
        guide = guide[:, :, None]
    if guide.ndim != 3 or guide.shape[2] not in (1, 3):
        raise ValueError(f"the guide must be (H, W) or (H, W, 3), got shape {guide.shape}")
    H, W, C = guide.shape
    h, w = pred.shape
    _check(cancel)
    if guide_small is None:
        # Area-average onto the prediction's grid: an integer block mean first, so that Pillow's exact
        # area resize only ever touches a small image.
        inter = _block_mean(guide, max(1, H // h), max(1, W // w), cancel)
        inter *= np.float32(unit)
        small = [_resize_f(inter[c], w, h, resample=Image.Resampling.BOX) for c in range(C)]
    else:
        gs = np.asarray(guide_small, dtype=np.float32).reshape(h, w, -1)
        if gs.shape[2] != C:
            raise ValueError(f"guide_small has {gs.shape[2]} channels, guide has {C}")
        small = [gs[:, :, c] for c in range(C)]
    # Prediction and guide go through the very same resize onto the grid the coefficients live on, which
    # is reduced from full resolution by integer factors (so the final upscale is cheap): the blur the
    # prediction has relative to the true matte is then the blur the guide has relative to the image,
    # and a . (I - I_low) restores exactly the detail that blur removed.
    ky, kx = _factor(H, h), _factor(W, w)
    hl, wl = -(-H // ky), -(-W // kx)
    # The grid may overhang the image by less than one cell: edge-pad a pixel so Pillow's box stays inside.
    box = (0.0, 0.0, w * wl * kx / W, h * hl * ky / H)

    def to_grid(x: np.ndarray) -> np.ndarray:
        return _resize_f(np.pad(x, ((0, 1), (0, 1)), mode="edge"), wl, hl, box=box)

    low = np.stack([to_grid(x) for x in small])
    p_low = to_grid(pred)
    coef, fitted = _fit(low, p_low, radius, eps, cancel)
    coef[:C] *= np.float32(unit)  # slopes per stored guide unit: integer guides are never converted whole
    out = np.empty((H, W), dtype=np.float32)

    def strip(rows: tuple[int, int]) -> None:
        y0, y1 = rows
        _check(cancel)
        lerped = _lerp_rows(coef, y0, y1, ky)  # (C+1, n, wl): cheap at grid resolution
        q = _expand_cols(lerped[C], kx, W)
        i_lo = max(0, int((y0 + 0.5) / ky - 0.5))
        i_hi = min(hl - 1, int((y1 - 0.5) / ky - 0.5) + 1)
        for c0, c1 in _spans(fitted[i_lo // TILE:i_hi // TILE + 1].any(axis=0)):
            # Pixels of the fitted cells and of their neighbours (which interpolate towards them), expanded
            # from one more cell on each side so that every pixel sees its true neighbours.
            lo, hi = max(0, c0 * TILE - 1), min(wl, c1 * TILE + 1)
            ca, cb = max(0, lo - 1), min(wl, hi + 1)
            x0, x1 = lo * kx, min(W, hi * kx)
            up = _expand_cols(lerped[:C, :, ca:cb], kx, (cb - ca) * kx)
            up = up[..., (lo - ca) * kx:(lo - ca) * kx + x1 - x0]
            part = q[:, x0:x1]
            for c in range(C):
                a = up[c]
                a *= guide[y0:y1, x0:x1, c]
                part += a
        np.clip(q, 0.0, 1.0, out=out[y0:y1])

    parallel.run(strip, _strips(H, W))
    return out
