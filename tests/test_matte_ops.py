"""The matte options: fill holes, remove specks, shift the edge, hardness, feather."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgmask import errors as E
from bgmask.errors import BgmaskError
from bgmask.mask.matte_ops import apply_options


def disk(H: int, W: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    return np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0, 1).astype(np.float32)


def vertical_edge(x_edge: float, width: float = 2.0, H: int = 64, W: int = 200) -> np.ndarray:
    """Foreground on the left, a linear ramp `width` px wide centred on x_edge."""
    x = np.arange(W, dtype=np.float32) + 0.5
    return np.clip((x_edge - x) / width + 0.5, 0, 1)[None].repeat(H, 0).astype(np.float32)


def contour_x(alpha: np.ndarray) -> float:
    """Where the middle row crosses 0.5 (foreground on the left)."""
    row = alpha[alpha.shape[0] // 2]
    xs = np.arange(row.size) + 0.5
    return float(np.interp(0.5, row[::-1], xs[::-1]))


def effective_radius(alpha: np.ndarray) -> float:
    return math.sqrt(float(alpha.sum(dtype=np.float64)) / math.pi)


@pytest.mark.parametrize("distance", [5.0, -5.0, 2.5, -1.3, 12.0])
def test_shift_moves_a_straight_edge_by_the_distance(distance):
    alpha = vertical_edge(100.2)
    moved = apply_options(alpha, shift_edge=distance)
    assert abs(contour_x(moved) - (100.2 + distance)) <= 0.5


@pytest.mark.parametrize("distance", [5.0, -5.0])
def test_shift_moves_a_round_contour_by_the_distance(distance):
    alpha = disk(200, 200, 100.3, 99.6, 40.0)
    moved = apply_options(alpha, shift_edge=distance)
    assert abs(effective_radius(moved) - (40.0 + distance)) <= 0.5


def test_shift_moves_a_diagonal_edge_along_its_normal():
    H = W = 200
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    signed = (xx + yy - 200.0) / math.sqrt(2)  # distance from the diagonal, foreground below-left
    alpha = np.clip(0.5 - signed, 0, 1).astype(np.float32)
    moved = apply_options(alpha, shift_edge=5.0)
    gained = float((moved - alpha)[50:150, 50:150].sum()) / (100 * math.sqrt(2))  # area per unit length
    assert abs(gained - 5.0) <= 0.5


def test_shift_keeps_soft_detail_and_the_image_border():
    alpha = np.zeros((100, 100), np.float32)
    alpha[:, :30] = 1.0
    alpha[50, 60] = 0.4  # a faint strand pixel
    grown = apply_options(alpha, shift_edge=3)
    assert grown[50, 60] == pytest.approx(0.4)  # soft values are moved, not made solid
    assert grown[:, 32].min() == 1.0 and grown[:, 33].max() == 0.0  # axial reach is exactly 3 px
    shrunk = apply_options(alpha, shift_edge=-3)
    assert shrunk[:, 0].min() == 1.0  # the border does not eat the foreground
    assert shrunk[:, 26].min() == 1.0 and shrunk[:, 27].max() == 0.0


def test_hardness_is_a_soft_monotonic_contrast_curve():
    ramp = np.linspace(0, 1, 1001, dtype=np.float32)[None]
    for h in (0.25, 0.5, 1.0):
        out = apply_options(ramp, hardness=h)[0]
        assert np.all(np.diff(out) >= 0)
        assert out[0] == 0.0 and out[-1] == 1.0 and out[500] == pytest.approx(0.5, abs=1e-6)
        assert ((out > 0.05) & (out < 0.95)).any()  # never a threshold
    soft = apply_options(ramp, hardness=0.0)[0]
    hard = apply_options(ramp, hardness=1.0)[0]
    assert (hard[501] - hard[499]) / (soft[501] - soft[499]) == pytest.approx(10, rel=0.02)  # 10x at 0.5

    def width(p: np.ndarray) -> float:
        return float(np.interp(0.9, p, np.arange(p.size)) - np.interp(0.1, p, np.arange(p.size)))

    assert width(hard) == pytest.approx(width(soft) / 7.3, rel=0.05)  # the 10-90 % ramp ~7x narrower


def test_hardness_turns_a_wide_model_edge_into_a_narrow_one():
    edge = vertical_edge(100.0, width=16.0)
    hard = apply_options(edge, hardness=1.0)
    row = hard[32]
    soft_px = int(((row > 0.05) & (row < 0.95)).sum())
    assert 1 <= soft_px <= 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=2, max_size=64), st.floats(0, 1))
def test_hardness_keeps_order_and_range(values, h):
    x = np.sort(np.array(values, np.float32))[None]
    out = apply_options(x, hardness=h)[0]
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1


def test_feather_softens_with_a_gaussian_like_ramp():
    alpha = vertical_edge(100.0, width=1.0, W=300)
    for feather in (4.0, 10.0, 30.0):
        out = apply_options(alpha, feather=feather)
        row = out[32]
        assert np.all(np.diff(row) <= 1e-6)  # still monotonic
        assert contour_x(out) == pytest.approx(100.0, abs=0.5)
        x = np.arange(row.size) + 0.5
        width = float(np.interp(0.1, row[::-1], x[::-1]) - np.interp(0.9, row[::-1], x[::-1]))
        assert width == pytest.approx(2.563 * feather / 2, rel=0.2)  # 10-90 % of a Gaussian is 2.56 sigma
        assert row[0] == 1.0 and row[-1] == 0.0  # far from the edge nothing changes


def test_feather_does_not_fade_at_the_image_border():
    ones = np.ones((50, 70), np.float32)
    assert np.all(apply_options(ones, feather=20) == 1.0)


def test_small_holes_are_filled_and_large_ones_kept():
    alpha = np.zeros((200, 300), np.float32)
    alpha[40:160, 40:260] = 1.0
    alpha -= disk(200, 300, 100.5, 100.5, 5.0)  # area ~78.5, with a soft rim
    alpha -= disk(200, 300, 200.5, 100.5, 15.0)  # area ~707
    alpha = np.clip(alpha, 0, 1)
    filled = apply_options(alpha, fill_holes=100)
    assert filled[90:112, 90:112].min() == 1.0  # the small hole, rim included, is solid
    assert filled[100, 200] == 0.0  # the large one is still there
    assert np.array_equal(apply_options(alpha, fill_holes=50), alpha)  # 78.5 px is not below 50


def test_a_notch_open_to_the_border_is_not_a_hole():
    alpha = np.ones((100, 100), np.float32)
    alpha[0:10, 45:50] = 0.0  # touches the top border
    assert np.array_equal(apply_options(alpha, fill_holes=1000), alpha)


def test_small_specks_are_removed_halo_and_all():
    alpha = disk(200, 300, 150.5, 100.5, 60.0)  # the subject, ~11300 px
    speck = disk(200, 300, 20.5, 20.5, 4.0)  # ~50 px with a soft rim
    faint = 0.3 * disk(200, 300, 270.5, 170.5, 6.0)  # a faint smudge worth ~34 px
    alpha = np.maximum(alpha, np.maximum(speck, faint))
    out = apply_options(alpha, remove_specks=100)
    assert out[10:32, 10:32].max() <= 0.02 and out[160:182, 260:282].max() <= 0.02
    assert np.array_equal(out[40:162, 90:212], alpha[40:162, 90:212])  # the subject is untouched
    kept = apply_options(alpha, remove_specks=20)
    assert kept[20, 20] == alpha[20, 20]


def test_defaults_change_nothing_and_inputs_are_not_modified():
    alpha = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    before = alpha.copy()
    assert np.array_equal(apply_options(alpha), before)
    apply_options(alpha, hardness=0.5, shift_edge=2, feather=3, fill_holes=10, remove_specks=10)
    assert np.array_equal(alpha, before)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1)])
def test_every_option_handles_tiny_images(shape):
    alpha = np.random.default_rng(1).random(shape).astype(np.float32)
    out = apply_options(alpha, hardness=0.7, shift_edge=-2.5, feather=6, fill_holes=5, remove_specks=5)
    assert out.shape == shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("kwargs", [dict(hardness=1.5), dict(hardness=-0.1), dict(feather=-1),
                                    dict(shift_edge=1000), dict(fill_holes=-5), dict(remove_specks=float("nan")),
                                    dict(feather="3"), dict(hardness=True)])
def test_out_of_range_values_are_rejected(kwargs):
    with pytest.raises(ValueError):
        apply_options(np.zeros((4, 4), np.float32), **kwargs)


def test_cancel_stops_long_operations():
    with pytest.raises(BgmaskError) as info:
        apply_options(np.zeros((3000, 3000), np.float32), shift_edge=20, cancel=lambda: True)
    assert info.value.code == E.CANCELLED
