"""bench/matting_trial.py's closed-form matting solve (the trial of issue 16, not in the runtime) and the real-photo
benchmark's caches (bench/real_photos.py): what the numbers in models/README.md rest on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bgmask.models import download, providers
from bgmask.models.catalog import Catalog
from bgmask.models.sessions import MattingSession

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import matting_trial as MT  # noqa: E402


def disc_scene(shift: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(guide (3, h, w), true matte, a prediction: the disc blurred and moved `shift` px to the right)."""
    rng = np.random.default_rng(0)
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    true = ((xx - 80) ** 2 + (yy - 60) ** 2 < 40 ** 2).astype(np.float32)
    guide = np.stack([0.2 + 0.6 * true, 0.5 - 0.3 * true, 0.4 + 0.0 * true])
    guide += rng.normal(0.0, 0.01, guide.shape).astype(np.float32)
    moved = ((xx - 80 - shift) ** 2 + (yy - 60) ** 2 < 40 ** 2).astype(np.float64)
    k = np.array([1, 4, 6, 4, 1], np.float64) / 16  # a small binomial blur, twice per axis
    for _ in range(2):
        for axis in (0, 1):
            moved = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), axis, moved)
    return guide.astype(np.float32), true, np.clip(moved, 0.0, 1.0).astype(np.float32)


def test_the_matting_laplacian_is_symmetric_and_keeps_constants() -> None:
    guide, _, _ = disc_scene()
    L = MT.Laplacian(guide, radius=2, eps=1e-5)
    rng = np.random.default_rng(1)
    x, y = rng.random(guide.shape[1:]), rng.random(guide.shape[1:])
    assert np.sum(x * L(y)) == pytest.approx(np.sum(y * L(x)), rel=1e-9)
    assert np.sum(x * L(x)) >= 0.0
    assert np.abs(L(np.full(guide.shape[1:], 0.7))).max() < 1e-9  # a flat matte costs nothing


def test_the_solve_moves_the_edge_to_the_image_and_touches_only_the_band() -> None:
    guide, true, pred = disc_scene()
    out = MT.solve(guide, pred, prior=0.0)
    assert out.dtype == np.float32 and out.shape == pred.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - true).mean() < 0.5 * np.abs(pred - true).mean()
    unknown, _ = MT.trimap(pred)
    assert unknown.any() and not unknown.all()
    assert np.array_equal(out[~unknown], pred[~unknown])
    assert np.abs(MT.solve(guide, pred, prior=0.0) - out).max() < 1 / 255  # deterministic


def test_a_sure_prediction_has_no_band_and_comes_back_unchanged() -> None:
    guide, true, _ = disc_scene()
    assert np.array_equal(MT.solve(guide, true), true)


def test_matting_on_the_grid_gives_a_full_size_mask_in_range() -> None:
    guide, _, pred = disc_scene()
    rgb = np.round(np.moveaxis(guide, 0, 2).clip(0, 1) * 255).astype(np.uint8)
    small = np.moveaxis(guide, 0, 2).clip(0, 1)[::2, ::2].copy()
    for where in ("grid", "after"):
        out = MT.matted(pred[::2, ::2].copy(), rgb, small, where)
        assert out.shape == rgb.shape[:2] and out.min() >= 0.0 and out.max() <= 1.0


# -------------------------------------------------------------------------------- the benchmark's caches

def test_inference_is_cached_by_input_and_served_from_the_cache(model_cache: Path, tmp_path: Path) -> None:
    RP = pytest.importorskip("real_photos", reason="bench/real_photos.py needs scipy (a bench-only dependency)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BGMASK_CACHE_DIR", str(model_cache))
        spec = Catalog.load().get("u2netp")
        session = RP.CachedInference(MattingSession(spec, download.ensure_model(spec), providers.choose("cpu")),
                                     tmp_path)
    tensor = session.prepare(np.full((3,) + session.size, 0.5, np.float32))
    first = session.infer(tensor)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and first.shape == session.size
    assert np.array_equal(session.infer(tensor), first)
    np.save(files[0], np.zeros_like(first))  # what the cache holds is what a rerun gets
    assert not session.infer(tensor).any()
    session.infer(tensor + 1.0)
    assert len(list(tmp_path.glob("*.npy"))) == 2
