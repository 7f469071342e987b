"""The temporal filter (server/bgmask/mask/temporal.py) on predictions made to order: it cuts the edge wobble of
a still scene, and where the model changes its mind about a region the frame keeps its own mask."""

from __future__ import annotations

import numpy as np

from bgmask.mask.temporal import TemporalFilter

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
