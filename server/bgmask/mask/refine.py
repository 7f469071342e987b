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
hundred thousand pixels with contiguous float32 numpy operations, on all cores. The slopes are upscaled
only where they are not 0 (near the outline); everywhere else the pass is the upscale of b alone. The
work is O(pixels), the arithmetic stays in cache, memory beyond the guide and the output is a few strips
(none at all when the caller takes the strips as they are finished), and cancellation is checked between
strips. Parameters were chosen with bench/quality.py."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import numpy as np
from PIL import Image

from bgmask import errors as E
from bgmask.mask import parallel
from bgmask.errors import BgmaskError

CancelFn = Callable[[], bool]
# Receives finished rows y0..y1 of the mask as float32 (y1 - y0, W), encoded (see Encoding), from several
# threads at once (each call its own rows); it may change them in place.
RowsSink = Callable[[int, int, np.ndarray], None]
# (scale, offset): the mask is produced as mask * scale + offset, within [offset, scale + offset]. A caller that
# stores integers passes its scale and rounding offset, and the rows need only a cast: folding them into the
# coefficients saves two passes over every output sample.
Encoding = tuple[float, float]
PLAIN: Encoding = (1.0, 0.0)

# Window radius in grid cells (windows are 2r+1 cells wide: wide enough to see across a model's soft edge),
# fewer where the grid is coarser than the prediction, so that a radius spans about RADIUS prediction pixels at
# most (grid_radius). 5, not 3, since issue 16: on real photos with soft hand-made mattes (measured from outside,
# IS-Net) the band gradient error against rembg's went 0.91x -> 0.87x at the same MSE; on bench/quality.py's
# composites (IS-Net end to end, 5 scenes) radius 3 / 5 / 7 cells gave 0.76 / 0.72 / 0.69x rembg's band gradient
# error and 0.87 / 0.84 / 0.82x its MSE; refinement at 24 MP 0.15 / 0.18 s at radius 3 / 5. Against binary masks
# (ECSSD, bench/quality.py --real) a wider window costs MAE (the soft detail it brings back counts as error
# there): U2-Netp, grid ~ its 320 px prediction, 3 -> 5 cells: MAE 0.0254 -> 0.0264, boundary F 0.852 -> 0.853;
# IS-Net on those 300-400 px photos goes from radius 3 to 2 cells: MAE 0.0253 -> 0.0247, 0.0422 -> 0.0416 (two
# sets of 100), boundary F within 0.001. Regularisation in squared guide units (contrast well below
# sqrt(EPS) = 0.3 % is ignored).
RADIUS = 5
EPS = 1e-5
STRIP_PIXELS = 1 << 19  # output pixels per strip: few enough that per-call overheads stay small; a map is 2 MB, about a core's L2
TILE = 256  # grid cells a side of the tiles the slopes are fitted on, shared out among the cores (see _fit)
SPAN_GAP = 8  # grid cells: sloped runs of a strip closer than this are upscaled as one (fewer, longer calls)
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


class Taps(NamedTuple):
    """Where each output sample of a bilinear upscale reads: input samples `lo` and lo + 1 (or lo again at
    the clamped far edge, where the weight is 0), the second with weight `f`."""

    lo: np.ndarray
    f: np.ndarray

    @staticmethod
    def bilinear(n_out: int, n_in: int, scale: float) -> "Taps":
        """Output samples 0..n_out of an upscale of n_in samples by `scale`: centres aligned, edges clamped."""
        src = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) / scale - 0.5, 0.0, n_in - 1)
        lo = np.floor(src).astype(np.intp)
        return Taps(lo, (src - lo).astype(np.float32))

    def part(self, start: int, stop: int) -> "Taps":
        return Taps(self.lo[start:stop], self.f[start:stop])

    def lerp(self, x: np.ndarray, axis: int, first: int = 0) -> np.ndarray:
        """The samples of x (whose index 0 along `axis` is input sample `first`) at these taps, as
        lo + (hi - lo) * f: equal neighbours interpolate to exactly themselves."""
        step = np.diff(x, axis=axis, append=np.take(x, [-1], axis=axis))  # 0 at the far edge
        f = self.f if axis == x.ndim - 1 else self.f[:, None]
        out = np.take(step, self.lo - first, axis=axis)
        out *= f
        out += np.take(x, self.lo - first, axis=axis)
        return out


def upscale(low: np.ndarray, rows: Taps, cols: Taps) -> np.ndarray:
    """The bilinear upscale of the 2-D map `low` at the given output rows and columns. Columns first, on
    only the few low rows and columns these read; each output row is then a multiply-add of two of them."""
    top, left = int(rows.lo[0]), int(cols.lo[0])
    wide = cols.lerp(low[top:int(rows.lo[-1]) + 2, left:int(cols.lo[-1]) + 2], axis=1, first=left)
    return rows.lerp(wide, axis=0, first=top)


class Blocks(NamedTuple):
    """An upscale by an integer factor k along one axis, with centres aligned and edges clamped, seen as
    blocks: the input padded by one repeated sample at each end, block m covers output samples
    m * k - lead .. (m + 1) * k - lead and reads padded samples m and m + 1 with the same k weights in every
    block. Upscaling whole blocks is then a broadcast multiply-add: no gathers, two passes over the output."""

    k: int
    lead: int  # output sample 0 is sample `lead` of block 0
    f: np.ndarray  # float32 (k,): the weights of sample m + 1 at the block's k positions

    @staticmethod
    def of(k: int) -> "Blocks":
        f = (np.arange(k, dtype=np.float64) + k // 2 + 0.5) / k - 0.5  # the fractional source positions
        return Blocks(k, k - k // 2, f.astype(np.float32))

    def covering(self, start: int, stop: int) -> tuple[int, int]:
        """The blocks [m0, m1) whose samples include output samples start..stop."""
        return (start + self.lead) // self.k, -(-(stop + self.lead) // self.k)

    def first(self, m: int) -> int:
        """The output sample where block m starts (negative for block 0)."""
        return m * self.k - self.lead


def pad_edges(low: np.ndarray) -> np.ndarray:
    """(..., h, w) with its first and last rows and columns repeated: what Blocks read."""
    return np.pad(low, [(0, 0)] * (low.ndim - 2) + [(1, 1), (1, 1)], mode="edge")


def upscale_blocks(padded: np.ndarray, rows: Blocks, cols: Blocks, m: tuple[int, int], n: tuple[int, int]) -> np.ndarray:
    """The bilinear upscale of maps (..., h + 2, w + 2) padded by pad_edges, over blocks m0..m1 of rows and
    n0..n1 of columns: (..., (m1 - m0) * ky, (n1 - n0) * kx), each sample lo + (hi - lo) * f, as Taps.lerp
    computes it (equal neighbours give exactly themselves). Columns first, on the few rows these read."""
    (m0, m1), (n0, n1) = m, n
    x = padded[..., m0:m1 + 1, n0:n1 + 1]
    lead = x.shape[:-2]
    # Column positions outermost while computing (numpy's inner loop then runs along a whole row, not
    # over k samples), interleaved into pixel order by the reshape's copy.
    wide = (x[..., 1:] - x[..., :-1])[..., None, :] * cols.f[:, None]
    wide += x[..., None, :-1]
    wide = wide.swapaxes(-1, -2).reshape(*lead, m1 - m0 + 1, (n1 - n0) * cols.k)
    out = (wide[..., 1:, :] - wide[..., :-1, :])[..., None, :] * rows.f[:, None]
    out += wide[..., :-1, None, :]
    return out.reshape(*lead, (m1 - m0) * rows.k, (n1 - n0) * cols.k)


class BlockUpscale:
    """The bilinear upscale of maps (..., h, w) by integer factors (ky, kx) onto an (H, W) image (the grid may
    overhang it by less than a block), computed for strips of whole row blocks: no sample is computed twice."""

    def __init__(self, low: np.ndarray, ky: int, kx: int, height: int, width: int) -> None:
        self.padded = pad_edges(low)
        self.rows, self.cols = Blocks.of(ky), Blocks.of(kx)
        self.height, self.width = height, width

    def strips(self, pixels: int) -> list[tuple[int, int]]:
        """Row blocks [m0, m1) of about `pixels` output samples each, covering the image."""
        m0, m1 = self.rows.covering(0, self.height)
        step = max(1, pixels // max(1, self.width * self.rows.k))
        return [(m, min(m1, m + step)) for m in range(m0, m1, step)]

    def pixel_rows(self, m: tuple[int, int]) -> tuple[int, int]:
        return max(0, self.rows.first(m[0])), min(self.height, self.rows.first(m[1]))

    def __call__(self, m: tuple[int, int], n: Optional[tuple[int, int]] = None, index: Any = ...) -> tuple[np.ndarray, int]:
        """Maps `index` over row blocks m and column blocks n (all columns by default), cropped to the image:
        (the samples, the image column of the first one)."""
        n = n or self.cols.covering(0, self.width)
        y0, y1 = self.pixel_rows(m)
        x0, x1 = max(0, self.cols.first(n[0])), min(self.width, self.cols.first(n[1]))
        top, left = y0 - self.rows.first(m[0]), x0 - self.cols.first(n[0])
        out = upscale_blocks(self.padded[index], self.rows, self.cols, m, n)
        return out[..., top:top + y1 - y0, left:left + max(0, x1 - x0)], x0


def _destination(height: int, width: int, sink: Optional[RowsSink]) -> tuple[RowsSink, Optional[np.ndarray]]:
    """Where finished strips go: the caller's sink, or a new float32 (height, width) mask."""
    if sink is not None:
        return sink, None
    out = np.empty((height, width), dtype=np.float32)

    def store(y0: int, y1: int, rows: np.ndarray) -> None:
        out[y0:y1] = rows

    return store, out


def _strips(height: int, width: int) -> list[tuple[int, int]]:
    step = max(1, STRIP_PIXELS // max(1, width))
    return [(y, min(height, y + step)) for y in range(0, height, step)]


def upsample(pred: np.ndarray, width: int, height: int, sink: Optional[RowsSink] = None,
             encoding: Encoding = PLAIN) -> Optional[np.ndarray]:
    """Plain bilinear resize of a float32 (h, w) prediction in [0, 1] to (height, width) float32: the
    `refine: false` path. Pixel centres are aligned and edges clamped, as in Pillow; shrinking (an image
    smaller than the model input) is area-weighted so nothing aliases. Returns the mask, or hands it to
    `sink` strip by strip (see `refine`) and returns None; either way encoded by `encoding`."""
    scale, offset = encoding
    pred = np.clip(np.asarray(pred, dtype=np.float32), 0.0, 1.0)
    h, w = pred.shape
    if h > height or w > width:  # shrink on the small side first, then only ever enlarge
        h, w = min(h, height), min(w, width)
        pred = _resize_f(pred, w, h)
    pred = pred * np.float32(scale) + np.float32(offset)
    rows, cols = Taps.bilinear(height, h, height / h), Taps.bilinear(width, w, width / w)
    put, out = _destination(height, width, sink)

    def strip(span: tuple[int, int]) -> None:
        y0, y1 = span
        q = upscale(pred, rows.part(y0, y1), cols)
        np.clip(q, np.float32(offset), np.float32(scale + offset), out=q)
        put(y0, y1, q)

    parallel.run(strip, _strips(height, width))
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
    axis %= x.ndim
    reach = min(r, n - 1)
    if axis == x.ndim - 1 and reach > 0:
        # Along rows the shifts run over all rows at once, as one flat array (numpy's inner loop would
        # otherwise be one short row): each row is followed by `reach` zeros, so no shift reads the next row.
        padded = np.zeros(x.shape[:-1] + (n + reach,), dtype=x.dtype)
        padded[..., :n] = x
        flat = padded.reshape(-1)
        total = flat.copy()
        for k in range(1, reach + 1):
            total[k:] += flat[:-k]
            total[:-k] += flat[k:]
        total = total.reshape(padded.shape)[..., :n]
    else:
        total = x.copy()
        for k in range(1, reach + 1):
            hi = [slice(None)] * x.ndim
            lo = [slice(None)] * x.ndim
            hi[axis], lo[axis] = slice(k, None), slice(None, n - k)
            total[tuple(hi)] += x[tuple(lo)]
            total[tuple(lo)] += x[tuple(hi)]
    idx = np.arange(n)
    count = (np.minimum(idx + r + 1, n) - np.maximum(idx - r, 0)).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = n
    return total / count.reshape(shape)  # a new contiguous array


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
    stack = np.empty((2 * C + len(pairs) + 2,) + p.shape, dtype=np.float32)  # I, p, I p, I_i I_j, p p
    stack[:C], stack[C] = I, p
    np.multiply(I, p, out=stack[C + 1:2 * C + 1])
    for n, (i, j) in enumerate(pairs):
        np.multiply(I[i], I[j], out=stack[2 * C + 1 + n])
    np.multiply(p, p, out=stack[-1])
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


def _near(flags: np.ndarray, reach: int) -> np.ndarray:
    """Cells with a True cell within `reach` cells (a square window), by ORs of shifted boolean slices, one
    axis at a time: a byte a cell per pass, so for the reaches refine uses (2 * radius) several times cheaper
    than running counts (IS-Net at 24 MP: 3 against 14 ms)."""
    out = flags
    for axis in (0, 1):
        n = out.shape[axis]
        grown = out.copy()
        src, dst = np.moveaxis(out, axis, 0), np.moveaxis(grown, axis, 0)
        for k in range(1, min(reach, n - 1) + 1):
            dst[k:] |= src[:-k]
            dst[:-k] |= src[k:]
        out = grown
    return out


def grid_radius(radius: int, pred_shape: tuple[int, int], grid_shape: tuple[int, int]) -> int:
    """The window radius in grid cells: `radius` cells, fewer where the grid is coarser than the prediction (an
    image smaller than the model's input, or up to 1.5x larger, where the grid's integer reduction rounds down:
    a 1600 px photo for IS-Net has an 800-cell grid and radius 4), so that a radius spans about `radius`
    prediction pixels at most (the two axes' scales averaged, then rounded); at least 1. Why: see RADIUS."""
    scale = min(1.0, float(np.sqrt(grid_shape[0] * grid_shape[1] / (pred_shape[0] * pred_shape[1]))))
    return max(1, int(round(radius * scale)))


def _fit(low: np.ndarray, p_low: np.ndarray, radius: int, eps: float,
         cancel: Optional[CancelFn]) -> np.ndarray:
    """The coefficients (a_1..a_C, b) on the grid.

    Only near cells whose prediction is strictly between CERTAIN and 1 - CERTAIN does the guide change
    anything, and on a photo those are the subject's outline, a small part of the grid. The coefficients of
    cells within two window radii of such a cell (what a window over the cell reaches) are those a fit of the
    whole grid gives; everywhere else a = 0 and b = the prediction, so the full-resolution pass only upscales
    b there. Farther out the whole grid's slopes only follow the prediction's sub-1/256 ripples in a certain
    region: keeping them two cells farther out, as before, changed 8-bit masks by at most 2 levels, at under
    0.03 % of the pixels (U2-Netp and IS-Net on bench/quality.py's scenes, whose scores did not move), for
    26 % more cells to fit and 21 % more pixels to slope (U2-Netp on bench/speed.py's 24 MP photo). The
    fit runs tile by tile, on the bounding box of the cells it needs in each tile, with a halo of two window
    radii (all a coefficient depends on). The tiles are fitted on all cores: tiles this large keep each numpy
    call long enough that the threads gain more than they lose handing the GIL to each other (IS-Net at 24 MP,
    radius 5, 2 cores: 62 ms, against 80 on one thread with tiles 96 cells a side, which two threads made
    slower still; one core alone takes 14 % longer with the larger tiles). The figures above (8-bit masks,
    26 % and 21 %) were measured at radius 3."""
    C = low.shape[0]
    hl, wl = p_low.shape
    coef = np.zeros((C + 1, hl, wl), dtype=np.float32)
    coef[C] = p_low
    near = _near((p_low > CERTAIN) & (p_low < 1.0 - CERTAIN), 2 * radius)
    halo = 2 * radius
    tiles = []  # (y0, y1, x0, x1): the bounding box of the near cells of each TILE x TILE tile
    for ty in range(0, hl, TILE):
        for tx in range(0, wl, TILE):
            cells = near[ty:ty + TILE, tx:tx + TILE]
            rows, cols = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
            if rows.size:
                tiles.append((ty + rows[0], ty + rows[-1] + 1, tx + cols[0], tx + cols[-1] + 1))

    def fit(tile: tuple[int, int, int, int]) -> None:
        _check(cancel)
        y0, y1, x0, x1 = tile
        ey0, ex0 = max(0, y0 - halo), max(0, x0 - halo)
        ey1, ex1 = min(hl, y1 + halo), min(wl, x1 + halo)
        c = _coefficients(low[:, ey0:ey1, ex0:ex1], p_low[ey0:ey1, ex0:ex1], radius, eps)
        coef[:, y0:y1, x0:x1] = c[:, y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]

    parallel.run(fit, tiles)  # on all cores: the tiles write disjoint cells
    coef[:C] *= near
    coef[C] = np.where(near, coef[C], p_low)
    return coef


def refine(pred: np.ndarray, guide: np.ndarray, *, cancel: Optional[CancelFn] = None,
           guide_small: Optional[np.ndarray] = None, radius: int = RADIUS, eps: float = EPS,
           sink: Optional[RowsSink] = None, encoding: Encoding = PLAIN) -> Optional[np.ndarray]:
    """Edge-aware upsampling of the model's prediction, guided by the full-resolution image.

    pred: float32 (h, w) in [0, 1] at model resolution, covering exactly the image area (any aspect).
    guide: float32 (H, W) or (H, W, 3), perceptual (sRGB-encoded) values in [0, 1] at full resolution;
    uint8 / uint16 arrays (any strides, e.g. a view of the RGB channels of the client's RGBA bytes) are
    taken as value / 255 or / 65535 without a full-size float copy. RGB guides work markedly better than
    luma (foreground and background often differ in hue more than in brightness).
    guide_small: optional, the same guide at the prediction's resolution ((h, w) or (h, w, 3)), ideally
    exactly what the model saw (its input before normalisation, reduced to luma for a luma guide); when
    absent it is area-averaged from `guide`. Returns float32 (H, W) in [0, 1] (with the default `encoding`).

    The result is q = a . I + b per pixel, a and b bilinear from a grid near the prediction's resolution:
    a is the least-squares slope of prediction against guide over windows of 2 * radius + 1 cells (fewer
    where the grid is coarser than the prediction: grid_radius; regularised by `eps`); b blends the guided
    filter's offset (which also sharpens the model's blurred edge onto the guide's edge) with P - a . I_low
    (the bilinear prediction plus the guide's detail finer than a model pixel), by how much of the
    prediction's variance the guide explains. Where the guide has no contrast the result is the plain
    bilinear prediction; more than two window radii (and a grid cell) from any soft value of an exact 0/1
    prediction it is exactly 0 or 1; everything is clipped to [0, 1]. Raises BgmaskError(cancelled) when
    `cancel()` turns true (checked between strips).

    With a `sink`, each finished strip of rows is handed to it (from worker threads) instead of being
    stored, and None is returned: the caller can encode the mask strip by strip while it is in cache.
    Either way the mask comes encoded by `encoding` (scale, offset): mask * scale + offset."""
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
        gs = np.asarray(guide_small, dtype=np.float32)
        gs = gs[:, :, None] if gs.ndim == 2 else gs  # no reshape: a transposed planar array stays a view
        if gs.shape[:2] != (h, w):
            raise ValueError(f"guide_small has shape {gs.shape}, the prediction {pred.shape}")
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

    *planes, p_low = parallel.run(to_grid, small + [pred])
    low = np.stack(planes)
    coef = _fit(low, p_low, grid_radius(radius, (h, w), (hl, wl)), eps, cancel)
    scale, offset = encoding
    coef[:C] *= np.float32(unit * scale)  # slopes per stored guide unit: integer guides are never converted whole
    coef[C] *= np.float32(scale)
    coef[C] += np.float32(offset)  # exact 0/1 stay exactly offset and scale + offset
    sloped = pad_edges(np.any(coef[:C] != 0, axis=0))  # elsewhere a . I is exactly 0: only b is upscaled
    up = BlockUpscale(coef, ky, kx, H, W)
    put, out = _destination(H, W, sink)

    def strip(m: tuple[int, int]) -> None:
        _check(cancel)
        y0, y1 = up.pixel_rows(m)
        q, _ = up(m, index=C)
        reads = sloped[m[0]:m[1] + 1].any(axis=0)
        for n in _spans(reads[:-1] | reads[1:], gap=SPAN_GAP):  # column blocks reading a sloped cell
            a, x0 = up(m, n, index=slice(0, C))
            x1 = x0 + a.shape[-1]
            a *= np.moveaxis(guide[y0:y1, x0:x1], 2, 0)
            part = q[:, x0:x1]
            for c in range(C):
                part += a[c]
        np.clip(q, np.float32(offset), np.float32(scale + offset), out=q)
        put(y0, y1, q)

    parallel.run(strip, up.strips(STRIP_PIXELS))
    return out
