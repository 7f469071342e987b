"""Mask quality: the model input's filter for every sample type, the `quality` option (fast / balanced /
best), masks pinned to stored ones, and the real-photo benchmark's metrics (bench/real_photos.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgmask import errors as E
from bgmask.models import download, providers
from bgmask.mask import pipeline, pixels
from bgmask.models.catalog import Catalog
from bgmask.errors import BgmaskError
from bgmask.protocol import ImageSpec, RemoveOptions, parse_options
from bgmask.models.sessions import MattingSession
from conftest import example

ROOT = Path(__file__).resolve().parent.parent
STORED = Path(__file__).resolve().parent / "data" / "masks"
sys.path.insert(0, str(ROOT / "bench"))
RP = pytest.importorskip("real_photos", reason="bench/real_photos.py needs scipy (a bench-only dependency)")

FILTERS = [Image.Resampling.BILINEAR, Image.Resampling.LANCZOS]


@pytest.fixture(scope="module")
def u2netp(model_cache: Path) -> MattingSession:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BGMASK_CACHE_DIR", str(model_cache))
        spec = Catalog.load().get("u2netp")
        return MattingSession(spec, download.ensure_model(spec), providers.choose("cpu"))


def small_photo(name: str = "chelsea.jpg", size: tuple[int, int] = (240, 160)) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(Image.open(example(name)).convert("RGB").resize(size, Image.Resampling.LANCZOS)))


def mask_of(session: MattingSession, rgb: np.ndarray, quality: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    spec = ImageSpec(w, h, 3, "u8", w * 3, False)
    result = pipeline.compute_mask(session, rgb.tobytes(), spec, RemoveOptions(quality=quality), "u8",
                                   lambda *_: None, lambda: False)
    return np.frombuffer(result.mask, np.uint8).reshape(h, w)


# -------------------------------------------------------------------------------- the quality option

def test_quality_defaults_to_balanced_and_takes_the_three_names() -> None:
    spec = ImageSpec(4, 4, 3, "u8", 12, False)
    assert parse_options(None, spec).quality == "balanced" == parse_options({}, spec).quality
    assert [parse_options({"quality": q}, spec).quality for q in ("fast", "balanced", "best")] == ["fast", "balanced", "best"]


@pytest.mark.parametrize("value", ["ultra", "Best", "", 1, None, True])
def test_unknown_quality_is_a_bad_request_that_names_the_choices(value: object) -> None:
    with pytest.raises(BgmaskError) as info:
        parse_options({"quality": value}, ImageSpec(4, 4, 3, "u8", 12, False))
    assert info.value.code == E.BAD_REQUEST
    assert all(name in str(info.value) for name in ('"fast"', '"balanced"', '"best"'))


def test_each_quality_chooses_its_input_filter_and_mirror() -> None:
    """fast keeps BILINEAR; the others shrink a photo with LANCZOS and enlarge a small one with BILINEAR."""
    lanczos, bilinear = Image.Resampling.LANCZOS, Image.Resampling.BILINEAR
    for name, shrink, mirror in (("fast", bilinear, False), ("balanced", lanczos, False), ("best", lanczos, True)):
        q = pipeline.QUALITY[name]
        assert q.resample(6000, 4000, (1024, 1024)) == shrink and q.resample(1100, 1000, (1024, 1024)) == shrink
        assert q.resample(400, 267, (1024, 1024)) == bilinear and q.resample(320, 320, (320, 320)) == bilinear
        assert q.mirror == mirror


def test_certain_predictions_become_exactly_zero_or_one(u2netp: MattingSession) -> None:
    """The background the model is sure of gets alpha 0, not a haze of 1/255."""
    h, w = 160, 240
    rgb = small_photo()
    pred = pipeline.predict(u2netp, pipeline.model_inputs(u2netp, pixels.model_rgb(
        rgb.tobytes(), ImageSpec(w, h, 3, "u8", w * 3, False), u2netp.size), False))
    assert not ((pred > 0) & (pred < 1 / 256)).any() and not ((pred < 1) & (pred > 1 - 1 / 256)).any()
    assert (pred == 0).mean() > 0.2 and (pred == 1).mean() > 0.05


def test_best_gives_the_mirror_image_the_mirrored_mask(u2netp: MattingSession) -> None:
    """Averaging the prediction of the mirror image makes the mask mirror-symmetric in the model's input:
    a photo flipped left-right gets the flipped mask (the model alone does not: balanced differs)."""
    rgb = small_photo()
    flipped = np.ascontiguousarray(rgb[:, ::-1])
    best, best_flipped = mask_of(u2netp, rgb, "best"), mask_of(u2netp, flipped, "best")
    assert np.abs(best.astype(int) - best_flipped[:, ::-1]).max() <= 1
    plain, plain_flipped = mask_of(u2netp, rgb, "balanced"), mask_of(u2netp, flipped, "balanced")
    assert np.abs(plain.astype(int) - plain_flipped[:, ::-1]).max() > 8, "the model alone is not symmetric"


@pytest.mark.parametrize("name", ["chelsea.jpg", "astronaut.jpg"])
@pytest.mark.parametrize("quality", ["fast", "balanced", "best"])
def test_masks_match_the_stored_ones(u2netp: MattingSession, name: str, quality: str) -> None:
    """Masks are deterministic for an input and its options: U2-Netp's mask of a small example photo at each
    quality is the stored one within 1/255 (whatever the number of cores: the input's bands are resized rows
    first) (regenerate with BGMASK_STORE_MASKS=1 after a deliberate change)."""
    got = mask_of(u2netp, small_photo(name, (480, 320)), quality)  # larger than the model's input: shrunk
    path = STORED / f"u2netp-{Path(name).stem}-{quality}.png"
    if __import__("os").environ.get("BGMASK_STORE_MASKS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(got).save(path)
    want = np.asarray(Image.open(path))
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want).max() <= 1


# -------------------------------------------------------------------------------- the model input

@pytest.mark.parametrize("resample", FILTERS)
def test_every_sample_type_gives_the_model_the_same_input(resample: Image.Resampling) -> None:
    """A 16-bit, a float and a linear-light copy of an 8-bit photo go through the same filter: the model sees
    the 8-bit copy's input within a level (the 8-bit path rounds to levels inside Pillow)."""
    rgb = small_photo("coffee.jpg", (700, 460))
    h, w = rgb.shape[:2]
    size = (320, 320)
    want = pixels.model_rgb(rgb.tobytes(), ImageSpec(w, h, 3, "u8", w * 3, False), size, resample)
    u16 = (rgb.astype(np.uint16) * 257).astype("<u2")
    f32 = (rgb.astype(np.float32) / 255).astype("<f4")
    encoded = rgb.astype(np.float64) / 255
    linear = np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)
    lin16 = np.round(linear * 65535).astype("<u2")
    for arr, sample_type, is_linear in ((u16, "u16", False), (f32, "f32", False), (lin16, "u16", True)):
        spec = ImageSpec(w, h, 3, sample_type, w * 3 * arr.itemsize, is_linear)
        got = pixels.model_rgb(arr.tobytes(), spec, size, resample)
        assert np.abs(got - want).max() <= 1.5 / 255, (sample_type, is_linear)
        assert got.min() >= 0.0 and got.max() <= 1.0, "overshoot of the filter is clamped as in 8 bits"


# -------------------------------------------------------------------------------- real-photo metrics

def test_boundary_f_counts_outline_pixels_within_two_pixels() -> None:
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    assert RP.boundary_f(gt, gt) == 1.0
    shifted = np.roll(gt, 2, axis=1)  # every outline pixel within 2 px of the other outline
    assert RP.boundary_f(shifted, gt) == 1.0
    far = np.roll(gt, 4, axis=1)  # the vertical edges are 4 px off: only parts of the horizontal ones match
    assert 0.2 < RP.boundary_f(far, gt) < 0.8
    assert RP.boundary_f(np.zeros_like(gt), gt) == 0.0
    assert RP.boundary_f(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    full = np.ones_like(gt)
    assert not RP.outline(full).any(), "the image border is not an outline"


def test_iou_mae_and_the_f_measure_curve() -> None:
    gt = np.zeros((10, 10), bool)
    gt[:, :5] = True
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :4] = 255
    mask[:, 4] = 100  # below 0.5: not foreground at 0.5, foreground at thresholds <= 100
    s = RP.score(mask, gt)
    assert s["IoU"] == pytest.approx(40 / 50)
    assert s["MAE"] == pytest.approx((10 * (1 - 100 / 255)) / 100)
    assert s["precision"][100] == 1.0 and s["recall"][100] == 1.0 and s["recall"][101] == pytest.approx(0.8)
    assert s["precision"][0] == 0.5  # everything predicted at threshold 0
    summary = RP.summary({"a": s, "b": RP.score((gt * 255).astype(np.uint8), gt)})
    assert summary["maxF"] == pytest.approx(1.0) and summary["photos"] == 2
    assert RP.paired({"a": s}, {"a": RP.score((gt * 255).astype(np.uint8), gt)}, "MAE", lower_better=True) == (0, 0, 1)


def test_real_photo_set_scores_bgmask(u2netp: MattingSession) -> None:
    """On a few photos of the shared real-photo set, the default quality finds the subject."""
    why = RP.missing()
    if why:
        pytest.skip(why)
    for photo in RP.photos(limit=3, stride=100):
        rgb = np.ascontiguousarray(np.asarray(Image.open(photo.image).convert("RGB")))
        s = RP.score(mask_of(u2netp, rgb, "balanced"), RP.read_gt(photo.mask))
        assert s["IoU"] > 0.5 and s["MAE"] < 0.2, (photo.key, s["IoU"], s["MAE"])
