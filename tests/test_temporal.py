"""The temporal filter (server/bgmask/mask/temporal.py) on predictions made to order: it cuts the edge wobble of
a still scene, and where the model changes its mind about a region the frame keeps its own mask."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgmask.mask.temporal import TemporalFilter, shift

SIZE = 64  # model resolution of these tests
FULL = 256  # full resolution of the masks


def disc(cx: float, cy: float, r: float, n: int) -> np.ndarray:
    """A soft disc (a 2-pixel ramp at its edge), as a model predicts a round subject."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    return np.clip((r - np.hypot(x - cx, y - cy)) / 2.0 + 0.5, 0.0, 1.0).astype(np.float32)


def run(preds: list[np.ndarray], fulls: list[np.ndarray]) -> list[np.ndarray]:
    """The filter's full-resolution masks for frames of one still image (noise-free: nothing moved)."""
    rng = np.random.default_rng(0)
    image = rng.random((3, SIZE, SIZE), dtype=np.float32)
    f, out = TemporalFilter(), []
    for pred, full in zip(preds, fulls):
        f.prediction(image, pred, key="u2netp")
        out.append(f.mask(full.copy()))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a >= 0.5, b >= 0.5).sum() / np.logical_or(a >= 0.5, b >= 0.5).sum())


def test_a_wobbling_edge_is_steadied() -> None:
    radii = [20.0 + d for d in np.random.default_rng(1).uniform(-0.6, 0.6, 8)]  # the edge wobbles, nothing moved
    preds = [disc(32, 32, r, SIZE) for r in radii]
    fulls = [disc(128, 128, 4 * r, FULL) for r in radii]
    out = run(preds, fulls)
    own = np.mean([np.abs(a - b).mean() for a, b in zip(fulls, fulls[1:])])
    steadied = np.mean([np.abs(a - b).mean() for a, b in zip(out, out[1:])])
    assert steadied < 0.6 * own
    assert min(iou(a, b) for a, b in zip(out, fulls)) > 0.95


def test_a_region_the_model_changes_its_mind_about_follows_the_model() -> None:
    # frames 0-3: the subject on the left; frame 4 on: the model also finds a second one on the right,
    # in a picture that did not change (so only the predictions disagree)
    left = [disc(20, 32, 12, SIZE), disc(80, 128, 48, FULL)]
    both = [np.maximum(left[0], disc(46, 32, 12, SIZE)), np.maximum(left[1], disc(184, 128, 48, FULL))]
    preds = [left[0]] * 4 + [both[0]] * 3
    fulls = [left[1]] * 4 + [both[1]] * 3
    out = run(preds, fulls)
    for a, b in zip(out, fulls):
        assert iou(a, b) >= 0.9  # each frame's mask is the model's for that frame, at 0.5
    assert out[4][128, 184] > 0.5 and out[4][128, 80] > 0.99


# ------------------------------------------- the full-resolution blend, computed only where it changes anything

def blended_everywhere(alpha: np.ndarray, prev: np.ndarray, weight: np.ndarray, motion: tuple[float, float]) -> np.ndarray:
    """The straightforward blend: the weights resized to the mask's size by Pillow, every pixel blended with
    the previous mask moved by the motion (rounded to whole pixels of the mask)."""
    H, W = alpha.shape
    h, w = weight.shape
    full = np.asarray(Image.fromarray(weight, mode="F").resize((W, H), Image.Resampling.BILINEAR))
    ry, rx = int(round(motion[0] * H / h)), int(round(motion[1] * W / w))
    out = alpha.copy()
    dst = (slice(max(ry, 0), H + min(ry, 0)), slice(max(rx, 0), W + min(rx, 0)))
    src = (slice(max(-ry, 0), H - max(ry, 0)), slice(max(-rx, 0), W - max(rx, 0)))
    out[dst] += full[dst] * (prev[src] - out[dst])
    return out


def scene(kind: str, full: tuple[int, int], n: int = 8) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(model inputs, predictions, full-resolution masks) of n frames: a textured picture with a round subject
    whose edge wobbles, on a pan (the picture moves 1 down and 2 left model pixels a frame) with a patch
    that changes on its own, or still."""
    rng = np.random.default_rng(7)
    texture = rng.random((3, SIZE + 4 * n, SIZE + 4 * n), dtype=np.float32)
    H, W = full
    images, preds, fulls = [], [], []
    for k in range(n):
        dy, dx = (k, 2 * k) if kind == "pan" else (0, 0)
        image = texture[:, 4 * n - dy:4 * n - dy + SIZE, 4 * n - dx:4 * n - dx + SIZE].copy()
        if kind == "pan":
            image[:, 40:52, 4 + 4 * k:16 + 4 * k] = (k % 2) * 0.9  # changes on its own: no history there
        r = 14.0 + rng.uniform(-0.6, 0.6)
        cy, cx = 30.0 + dy, 28.0 + dx
        images.append(image)
        preds.append(disc(cx, cy, r, SIZE))
        y, x = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
        sy, sx = H / SIZE, W / SIZE
        fulls.append(np.clip((r * sy - np.hypot((x / sx - cx) * sy, y - cy * sy)) / 2.0 + 0.5, 0, 1).astype(np.float32))
    return images, preds, fulls


@pytest.mark.parametrize("kind", ["pan", "still"])
@pytest.mark.parametrize("full", [(270, 480), (50, 200)], ids=["larger-than-model", "smaller-than-model"])
def test_the_masks_are_those_of_blending_every_pixel(kind: str, full: tuple[int, int]) -> None:
    images, preds, fulls = scene(kind, full)
    f, prev, changed = TemporalFilter(), None, 0.0
    for image, pred, alpha in zip(images, preds, fulls):
        f.prediction(image, pred, key="u2netp")
        want = alpha if prev is None or f.weight is None else blended_everywhere(alpha, prev, f.weight, f.motion)
        got = f.mask(alpha.copy())
        assert np.abs(got - want).max() <= 1 / 255  # the same 8-bit mask, give or take rounding
        changed = max(changed, float(np.abs(want - alpha).max()))
        prev = want
    assert changed > 0.1  # the history did change these masks
    if kind == "pan":
        assert f.motion != (0.0, 0.0)


@pytest.mark.parametrize("dy, dx", [(0.0, 0.0), (1.25, -3.5), (-0.4, 0.7), (7.0, -2.0), (80.0, -100.0)])
def test_a_shifted_image_is_the_bilinear_sample_of_the_moved_position(dy: float, dx: float) -> None:
    img = np.random.default_rng(3).random((2, 40, 60), dtype=np.float32)
    moved, valid = shift(img, dy, dx)
    ys = np.clip(np.arange(40) - dy, 0, 39)[:, None] * np.ones((1, 60))
    xs = np.clip(np.arange(60) - dx, 0, 59)[None, :] * np.ones((40, 1))
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, 39), np.minimum(x0 + 1, 59)
    fy, fx = ys - y0, xs - x0
    want = (img[:, y0, x0] * (1 - fy) * (1 - fx) + img[:, y0, x1] * (1 - fy) * fx
            + img[:, y1, x0] * fy * (1 - fx) + img[:, y1, x1] * fy * fx)
    assert np.abs(moved - want).max() < 1e-4
    assert valid.sum() == max(0, 40 - int(np.ceil(abs(dy)))) * max(0, 60 - int(np.ceil(abs(dx))))
