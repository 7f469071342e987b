"""Carrying a model-resolution prediction to the full-resolution mask: refine.upsample and refine.refine."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bgmask import errors as E
from bgmask.mask import parallel
from bgmask.mask import refine as R
from bgmask.errors import BgmaskError


def area_down(x: np.ndarray, w: int, h: int) -> np.ndarray:
    """What a model at (w, h) sees of a full-resolution matte: the area average."""
    return np.asarray(Image.fromarray(x.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BOX), dtype=np.float32)


def disk_scene(H: int = 900, W: int = 1200, radius: float = 250.0):
    """A hard-edged disk (1 px anti-aliased) of one colour over a textured background of another."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    dist = np.hypot(xx - W / 2, yy - H / 2)
    alpha = np.clip(radius - dist + 0.5, 0, 1).astype(np.float32)
    rng = np.random.default_rng(7)
    fg = np.array([0.8, 0.3, 0.2], np.float32)
    bg = np.array([0.2, 0.5, 0.7], np.float32) + rng.normal(0, 0.03, (H, W, 3)).astype(np.float32)
    image = np.clip(fg * alpha[..., None] + bg * (1 - alpha[..., None]), 0, 1).astype(np.float32)
    return alpha, image, dist


def crossing_width(profile: np.ndarray) -> float:
    """Distance in pixels over which a monotonic profile goes from 0.1 to 0.9."""
    xs = np.arange(profile.size)
    if profile[0] > profile[-1]:
        profile = profile[::-1]
    return float(np.interp(0.9, profile, xs) - np.interp(0.1, profile, xs))


def test_upsample_is_plain_bilinear_and_stays_in_range():
    rng = np.random.default_rng(0)
    pred = rng.random((320, 320)).astype(np.float32)
    out = R.upsample(pred, 1000, 700)
    ref = np.asarray(Image.fromarray(pred, mode="F").resize((1000, 700), Image.Resampling.BILINEAR))
    assert out.shape == (700, 1000) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-5
    assert out.min() >= 0 and out.max() <= 1


def test_upsample_shrinks_without_aliasing():
    stripes = np.tile(np.array([0.0, 1.0], np.float32), (320, 160))  # 1-px stripes: only their mean survives
    out = R.upsample(stripes, 100, 80)
    assert out.shape == (80, 100)
    assert np.abs(out - 0.5).max() < 0.05  # point sampling would give 0s and 1s


def test_perfect_prediction_keeps_flat_regions_exact():
    alpha, image, dist = disk_scene()
    pred = area_down(alpha, 320, 320)
    for guide in (image, image @ np.array([0.299, 0.587, 0.114], np.float32)):
        out = R.refine(pred, guide)
        assert out.shape == alpha.shape and out.dtype == np.float32
        # Beyond two (square) window radii, the soft edge's two cells and one more (cells of 3 x 4 px here,
        # so up to 4 * sqrt(2) px along a diagonal) from the edge the result is exactly 0 or 1.
        reach = (2 * R.RADIUS + 3) * 4 * np.sqrt(2)
        assert np.all(out[dist < 250 - reach] == 1.0)
        assert np.all(out[dist > 250 + reach] == 0.0)


def test_window_spans_about_radius_model_pixels_at_most():
    """An image smaller than the model's input (a 300 x 400 photo for a 1024-pixel model) is refined with
    windows of about RADIUS model pixels, about RADIUS / 3 image pixels, not RADIUS image pixels: the guide
    changes the mask only that close to the subject's edge, where a window of RADIUS image pixels would reach a
    textured background three times as far out (bench/quality.py --real: that raised the MAE on real photos).
    A grid as fine as the prediction or finer keeps RADIUS cells."""
    alpha, image, dist = disk_scene(H=300, W=400, radius=100.0)
    pred = np.asarray(Image.fromarray(alpha, mode="F").resize((1024, 1024), Image.Resampling.BILINEAR))
    out = R.refine(pred, image)
    cells = R.grid_radius(R.RADIUS, (1024, 1024), (300, 400))
    assert 1 <= cells < R.RADIUS
    changed = dist[np.abs(out - R.upsample(pred, 400, 300)) > 1e-6]
    assert changed.size and np.abs(changed - 100).max() <= (2 * cells + 2) * np.sqrt(2)
    assert R.grid_radius(R.RADIUS, (320, 320), (600, 800)) == R.RADIUS == R.grid_radius(R.RADIUS, (320, 320), (320, 320))
    assert R.grid_radius(1, (1024, 1024), (90, 90)) == 1


def test_blurred_edge_is_sharpened_toward_the_guides_edge():
    H, W = 400, 1600
    x = np.arange(W, dtype=np.float32) + 0.5
    edge = 803.3
    alpha = np.clip(edge - x + 0.5, 0, 1)[None].repeat(H, 0)  # foreground on the left
    image = np.stack([0.2 + 0.6 * alpha, 0.7 - 0.4 * alpha, 0.4 + 0.0 * alpha], axis=2).astype(np.float32)
    # The model's edge is softer than the truth: its prediction blurred over a few model pixels.
    kernel = np.array([1, 2, 3, 2, 1], np.float32) / 9
    soft = np.apply_along_axis(lambda r: np.convolve(np.pad(r, 2, mode="edge"), kernel, mode="valid"), 1,
                               area_down(alpha, 320, 80)).astype(np.float32)
    plain = R.upsample(soft, W, H)[H // 2]
    sharp = R.refine(soft, image)[H // 2]
    assert crossing_width(plain) > 12
    assert crossing_width(sharp) < crossing_width(plain) / 2
    assert abs(np.interp(0.5, sharp[::-1], np.arange(W)[::-1] + 0.5) - edge) < 1.0


def test_hair_finer_than_a_model_pixel_comes_back_from_the_image():
    """One-pixel strands that the 4x smaller prediction only shows as faint smears."""
    H, W = 480, 640
    rng = np.random.default_rng(3)
    alpha = np.zeros((H, W), np.float32)
    alpha[:, :200] = 1.0
    for x0 in rng.integers(205, 600, 40):
        alpha[60:420, x0] = np.maximum(alpha[60:420, x0], rng.uniform(0.6, 1.0))
    fg = np.array([0.85, 0.7, 0.4], np.float32)
    bg = np.array([0.15, 0.25, 0.45], np.float32)
    image = (fg * alpha[..., None] + bg * (1 - alpha[..., None])).astype(np.float32)
    pred = area_down(alpha, W // 4, H // 4)
    err_plain = np.mean((R.upsample(pred, W, H) - alpha) ** 2)
    err_refined = np.mean((R.refine(pred, image) - alpha) ** 2)
    assert err_refined < err_plain / 4


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 40), w=st.integers(1, 40), H=st.integers(1, 90), W=st.integers(1, 90),
    channels=st.sampled_from([1, 3]), seed=st.integers(0, 2**32 - 1),
    extremes=st.booleans(),
)
def test_refine_never_leaves_the_unit_interval(h, w, H, W, channels, seed, extremes):
    rng = np.random.default_rng(seed)
    pred = rng.random((h, w)).astype(np.float32)
    guide = rng.random((H, W, channels)).astype(np.float32)
    if extremes:  # saturated predictions and guides with hard jumps push the linear model hardest
        pred = np.round(pred)
        guide = np.round(guide)
    out = R.refine(pred, guide if channels == 3 else guide[..., 0])
    assert out.shape == (H, W) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("h, w, ky, kx, H, W", [
    (7, 9, 4, 6, 27, 51),      # the grid overhangs the image by less than a block on both sides
    (5, 5, 1, 1, 5, 5),        # no upscale at all
    (3, 8, 12, 19, 36, 152),   # U2-Netp's factors at 24 MP
    (1, 4, 3, 2, 2, 8),        # one grid row
    (6, 2, 5, 7, 30, 14),
])
def test_upscaling_by_blocks_is_the_bilinear_upscale(h, w, ky, kx, H, W):
    """Every strip and column span of BlockUpscale gives exactly what the general bilinear upscale (Taps)
    gives at those pixels, and equal neighbours stay exactly themselves."""
    rng = np.random.default_rng(ky * 100 + kx)
    low = rng.random((2, h, w)).astype(np.float32)
    low[:, :, 0] = 1.0
    want = np.stack([R.upscale(plane, R.Taps.bilinear(H, h, ky), R.Taps.bilinear(W, w, kx)) for plane in low])
    up = R.BlockUpscale(low, ky, kx, H, W)
    got = np.full((2, H, W), np.nan, np.float32)
    for m in up.strips(pixels=2 * W * ky):
        y0, y1 = up.pixel_rows(m)
        n_all = up.cols.covering(0, W)
        for n in [(n_all[0], (n_all[0] + n_all[1]) // 2), ((n_all[0] + n_all[1]) // 2, n_all[1])]:
            part, x0 = up(m, n)
            got[:, y0:y1, x0:x0 + part.shape[-1]] = part
    assert np.array_equal(got, want), np.nanmax(np.abs(got - want))
    assert (got[:, :, :max(1, kx // 2)] == 1.0).all(), "columns reading only the constant column stay exact"


@pytest.mark.parametrize("sample_type", ["u8", "u16"])
def test_strips_encoded_for_integers_are_the_rounded_mask(sample_type: str):
    """With the integer scale and rounding offset folded in, the strips a sink receives truncate to the
    plain mask rounded to the nearest level (within one level where a value sits on a half level), and exact
    0 and 1 stay exact."""
    alpha, image, _ = disk_scene(300, 400, 90)
    pred = area_down(alpha, 64, 48).copy()
    pred[:, :8] = 0.0
    top = 255.0 if sample_type == "u8" else 65535.0
    plain = R.refine(pred, image)
    got = np.zeros(plain.shape, np.float64)

    def sink(y0: int, y1: int, rows: np.ndarray) -> None:
        got[y0:y1] = np.floor(rows)

    assert R.refine(pred, image, sink=sink, encoding=(top, 0.5)) is None
    want = np.floor(plain.astype(np.float64) * top + 0.5)
    assert np.abs(got - want).max() <= 1
    assert (got[plain == 0.0] == 0).all() and (got[plain == 1.0] == top).all()
    reach = (2 * R.RADIUS + 2) * 6  # from the disk's edge at x = 110: two window radii and two cells of 6 px
    assert (got[:, :110 - reach] == 0).all(), "a flat 0 prediction stays exactly 0"


@pytest.mark.parametrize("shape", [(1, 1), (1, 700), (700, 1), (2, 3)])
def test_tiny_and_one_pixel_wide_images(shape):
    pred = np.full((320, 320), 0.25, np.float32)
    pred[:, 160:] = 1.0
    guide = np.random.default_rng(1).random(shape + (3,)).astype(np.float32)
    for out in (R.refine(pred, guide), R.upsample(pred, shape[1], shape[0])):
        assert out.shape == shape
        assert out.min() >= 0 and out.max() <= 1
    flat = R.refine(np.full((320, 320), 0.4, np.float32), guide)
    assert np.allclose(flat, 0.4, atol=1e-3)


def test_huge_image_in_strips():
    H, W = 6000, 8000
    guide = np.zeros((H, W), np.float32)
    guide[:, W // 2:] = 1.0
    pred = np.zeros((1024, 1024), np.float32)
    pred[:, 512:] = 1.0
    out = R.refine(pred, guide)
    assert out.shape == (H, W)
    reach = (2 * R.RADIUS + 2) * 8  # two window radii and two cells of 8 px
    assert out[:, : W // 2 - reach].max() == 0.0 and out[:, W // 2 + reach:].min() == 1.0
    assert float(out[:, W // 2 - 1].mean()) < 0.05 and float(out[:, W // 2].mean()) > 0.85  # a 1 px edge


def test_integer_guides_match_float_guides():
    rng = np.random.default_rng(2)
    img8 = (rng.random((300, 400, 4)) * 255).astype(np.uint8)  # RGBA: the RGB view is strided
    pred = R.upsample(rng.random((40, 40)).astype(np.float32), 320, 320)
    as_float = R.refine(pred, img8[..., :3].astype(np.float32) / 255)
    assert np.abs(R.refine(pred, img8[..., :3]) - as_float).max() < 2e-3
    assert np.abs(R.refine(pred, img8[..., :3].astype(np.uint16) * 257) - as_float).max() < 2e-3


def test_guide_small_is_used_as_what_the_model_saw():
    alpha, image, _ = disk_scene(300, 400, 100.0)
    pred = area_down(alpha, 320, 320)
    small = np.stack([area_down(image[..., c], 320, 320) for c in range(3)], axis=2)
    out = R.refine(pred, image, guide_small=small)
    assert np.mean((out - alpha) ** 2) < np.mean((R.upsample(pred, 400, 300) - alpha) ** 2)
    with pytest.raises(ValueError):
        R.refine(pred, image, guide_small=small[..., :1])


def test_cancel_stops_with_the_cancelled_code():
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(BgmaskError) as info:
        R.refine(np.zeros((320, 320), np.float32), np.zeros((2000, 3000), np.float32), cancel=cancel)
    assert info.value.code == E.CANCELLED


def test_a_cancel_while_the_slopes_are_fitted_stops_every_fitting_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiles are fitted on several threads: a cancel one of them notices ends the request with the cancelled
    code, the remaining tiles are not fitted, and no thread is left running."""
    alpha, image, _ = disk_scene(H=900, W=1200, radius=250.0)
    pred = area_down(alpha, 320, 320)
    monkeypatch.setattr(R, "TILE", 7)
    monkeypatch.setattr(parallel, "THREADS", 3)
    fitted: list[int] = []
    fit = R._coefficients
    monkeypatch.setattr(R, "_coefficients", lambda *args: fitted.append(1) or fit(*args))
    R.refine(pred, image)
    tiles, fitted[:] = len(fitted), []
    before = set(threading.enumerate())
    with pytest.raises(BgmaskError) as info:
        R.refine(pred, image, cancel=lambda: len(fitted) >= 5)
    assert info.value.code == E.CANCELLED
    assert len(fitted) < tiles / 2, f"{len(fitted)} of {tiles} tiles fitted after the cancel"
    assert not set(threading.enumerate()) - before, "a fitting thread outlived the request"


def test_a_gray_image_as_an_rgb_guide_stays_finite():
    """R = G = B makes every window's colour covariance singular but for the regularisation."""
    alpha, image, _ = disk_scene(300, 400, 100.0)
    gray = image.mean(axis=2)
    pred = area_down(alpha, 320, 320)
    out = R.refine(pred, np.repeat(gray[..., None], 3, axis=2))
    assert np.isfinite(out).all()
    assert np.abs(out - R.refine(pred, gray)).max() < 0.05


@pytest.mark.parametrize("tile", [7, 40, R.TILE])
def test_fitting_tile_by_tile_gives_the_whole_grids_fit(monkeypatch: pytest.MonkeyPatch, tile: int):
    """The slopes are only fitted on tiles near the subject's outline, each with a halo: the mask must be the
    one a fit of the whole grid gives (an outline crossing many tile borders, corners included)."""
    alpha, image, _ = disk_scene(H=900, W=1200, radius=250.0)
    pred = area_down(alpha, 320, 320)
    monkeypatch.setattr(R, "TILE", 10**6)  # one tile: the whole grid
    whole = R.refine(pred, image)
    monkeypatch.setattr(R, "TILE", tile)
    monkeypatch.setattr(parallel, "THREADS", 3)  # the tiles fitted on three threads, whatever this machine has
    tiled = R.refine(pred, image)
    assert np.abs(tiled - whole).max() <= 1e-6
    edge = (whole > 0.02) & (whole < 0.98)
    assert edge.sum() > 1000, "the outline was refined, not just upsampled"


def test_fitting_only_near_the_outline_matches_fitting_everywhere_within_a_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """The slopes are fitted only within two window radii of an uncertain prediction. Real predictions ripple
    below 1/256 with the background's texture, and a fit of the whole grid turns those ripples into small
    slopes everywhere: leaving them out must change an 8-bit mask by at most a level, and nothing on the
    outline itself. (A reach one cell shorter gives 3.5 levels a few cells out; two cells, 8 levels; three,
    a blurred outline.)"""
    alpha, image, dist = disk_scene(H=900, W=1200, radius=200.0)
    pred = area_down(alpha, 320, 320)
    luma = area_down(image.mean(axis=2), 320, 320)
    ripple = np.clip(0.05 * (luma - luma.mean()), -0.0015, 0.0015)  # follows the texture, stays certain
    pred = np.where(pred < 0.5, np.maximum(pred, 0.002) + ripple, np.minimum(pred, 0.998) - ripple).astype(np.float32)
    near = R.refine(pred, image)
    monkeypatch.setattr(R, "_near", lambda flags, reach: np.ones_like(flags))
    everywhere = R.refine(pred, image)
    levels = np.abs(near - everywhere) * 255
    assert levels.max() <= 1, levels.max()
    outline = np.abs(dist - 200.0) < 12.0  # three model pixels either side
    assert levels[outline].max() < 0.01, levels[outline].max()
    assert levels[np.abs(dist - 200.0) > 100].max() > 0.2, "the ripples give the whole grid's fit slopes far out"


@pytest.mark.parametrize("size", [(6000, 4000), (1225, 817), (2000, 3001), (300, 200)])
@pytest.mark.parametrize("model", [(320, 320), (1024, 1024)])
@pytest.mark.parametrize("resample", [Image.Resampling.BILINEAR, Image.Resampling.LANCZOS])
def test_model_input_resized_in_parallel_bands_is_pillows_resize(size, model, resample):
    """The model input is resized on all cores, band by band (a large shrink through Pillow's integer reduce
    of each band's rows): it must be the image one Pillow call gives, within one level (Pillow rounds a
    band's filter positions from its own box), with either filter (each band reads as far as its support); the
    rows are resized first, as Pillow does for some shapes only (the 8-bit result between passes differs with
    the order, for LANCZOS by several levels)."""
    from bgmask.mask import pixels
    from bgmask.protocol import ImageSpec

    w, h = size
    rng = np.random.default_rng(w)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 4), dtype=np.uint8)
    rgba = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))  # smooth and noisy
    rgba = np.ascontiguousarray(rgba | rng.integers(0, 8, rgba.shape, dtype=np.uint8))
    spec = ImageSpec(w, h, 4, "u8", w * 4, False)
    banded = pixels._resize_in_bands(pixels._U8Rows.of(rgba.tobytes(), spec), model, resample)
    whole = Image.fromarray(rgba[..., :3].copy(), "RGB")
    gap = pixels.REDUCING_GAP[resample]
    fx, fy = int(w / model[0] / gap) or 1, int(h / model[1] / gap) or 1
    if fx > 1 or fy > 1:
        whole = whole.reduce((fx, fy))
    rows = whole.resize((whole.width, model[1]), resample, box=(0, 0, whole.width, h / fy))  # rows first
    whole = rows.resize(model, resample, box=(0, 0, w / fx, model[1]))
    assert banded.size == model
    diff = np.abs(np.asarray(banded)[..., :3].astype(int) - np.asarray(whole))
    assert diff.max() <= 1, "alpha is ignored, as rembg does"


def test_the_guide_is_only_consulted_near_an_uncertain_prediction():
    """Where the prediction is certain (within 1/256 of 0 or 1, though not exactly 0 or 1, as real model
    outputs are) for a couple of windows around, the image's texture must not leak into the mask: two
    images that differ only there give the same mask, bit for bit, and the outline is still refined."""
    alpha, image, dist = disk_scene(H=900, W=1200, radius=200.0)
    pred = area_down(alpha, 320, 320)
    pred = np.where(pred < 0.5, np.maximum(pred, 0.002), np.minimum(pred, 0.998)).astype(np.float32)
    ripples = np.float32(0.001) * (np.arange(320) % 2)[None, :] * (np.abs(area_down(dist, 320, 320) - 200) > 60)
    pred = np.where(pred < 0.5, pred + ripples, pred - ripples).astype(np.float32)  # still within 1/256
    other = image.copy()
    far = np.abs(dist - 200.0) > 150.0  # ~40 model pixels from the outline: well beyond two windows
    other[far] = np.random.default_rng(9).random((int(far.sum()), 3)).astype(np.float32)
    a, b = R.refine(pred, image), R.refine(pred, other)
    assert np.array_equal(a, b)
    edge = np.abs(dist - 200.0) < 3.0
    assert np.abs(a - alpha)[edge].mean() < 0.5 * np.abs(R.upsample(pred, 1200, 900) - alpha)[edge].mean(), \
        "the outline itself is refined from the image"


@pytest.mark.parametrize("reach", [0, 1, 3, 10, 40])
def test_near_marks_the_cells_within_reach_of_a_flagged_cell(reach: int) -> None:
    """The cells the fit covers: those with a flagged cell within `reach` in a square window, like a
    brute-force dilation, at the borders and on grids smaller than the reach as well."""
    rng = np.random.default_rng(reach)
    for shape in [(37, 53), (5, 3), (1, 1)]:
        flags = rng.random(shape) < 0.03
        flags.flat[rng.integers(flags.size)] = True
        ys, xs = np.nonzero(flags)
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        want = np.zeros(shape, bool)
        for y, x in zip(ys, xs):
            want |= (np.abs(yy - y) <= reach) & (np.abs(xx - x) <= reach)
        assert np.array_equal(R._near(flags, reach), want)
