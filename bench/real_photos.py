"""Real photos with hand-made binary masks (ECSSD, ../shared/data/ecssd next to the repository): bgmask and
rembg on the same photos with the same model file, scored the way salient-object papers score masks.

The set is read in place and never copied (its README: measurement only); $BGMASK_REAL_PHOTOS points
elsewhere. Metrics, per photo, of a soft mask p in [0, 1] against a binary mask g:
- MAE: mean |p - g|.
- max F-measure: F_beta (beta^2 = 0.3, precision weighted as in Achanta et al. 2009) of p >= t against g,
  precision and recall averaged over the photos at each of 256 thresholds, then the best threshold.
- IoU at 0.5: |p >= 0.5 and g| / |p >= 0.5 or g|.
- boundary F at 2 px: the outline of p >= 0.5 (its pixels with a 4-neighbour outside) against the outline of
  g: precision = share of p's outline within 2 px of g's, recall the other way round (Perazzi et al. 2016).
Lower MAE, higher everything else is better."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
BETA2 = 0.3
TOLERANCE = 2.0  # px, boundary F
LEVELS = 256


@dataclass(frozen=True)
class Photo:
    key: str
    image: Path
    mask: Path


def data_dir() -> Path:
    """$BGMASK_REAL_PHOTOS, else shared/data/ecssd beside the repository or beside a folder above it (a git
    worktree may sit deeper than the main checkout)."""
    if os.environ.get("BGMASK_REAL_PHOTOS"):
        return Path(os.environ["BGMASK_REAL_PHOTOS"])
    candidates = [folder / "shared" / "data" / "ecssd" for folder in ROOT.parents]
    return next((c for c in candidates if (c / "manifest.csv").is_file()), candidates[0])


def missing() -> Optional[str]:
    """Why the real-photo set cannot be used here, or None when it can."""
    manifest = data_dir() / "manifest.csv"
    if not manifest.is_file():
        return f"the real-photo set is not at {data_dir()} (no manifest.csv; set $BGMASK_REAL_PHOTOS)"
    return None


def photos(limit: int = 0, stride: int = 1, start: int = 0) -> list[Photo]:
    """Every `stride`-th photo of the manifest from `start`, at most `limit` of them (0: all): deterministic."""
    base = data_dir()
    with open(base / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = rows[start::max(1, stride)]
    if limit > 0:
        chosen = chosen[:limit]
    return [Photo(r["id"], base / r["image"], base / r["gt_mask"]) for r in chosen]


def read_gt(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) >= 128


# ---------------------------------------------------------------------------------------------- metrics

def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it (the image border does not count as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """F-measure of the outlines of two binary masks, a pixel matching when the other outline lies within
    `tolerance` px. Two empty outlines agree (1.0); one empty outline against another scores 0."""
    bp, bg = outline(pred), outline(gt)
    if not bp.any() or not bg.any():
        return 1.0 if not bp.any() and not bg.any() else 0.0
    near_gt = ndimage.distance_transform_edt(~bg) <= tolerance
    near_pred = ndimage.distance_transform_edt(~bp) <= tolerance
    precision = float(near_gt[bp].mean())
    recall = float(near_pred[bg].mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def pr_curve(levels: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of levels >= t against gt for t = 0..255 (levels: uint8 mask). Precision is 1 at
    thresholds where nothing is predicted; recall is 1 for an empty ground truth."""
    fg = np.bincount(levels[gt].ravel(), minlength=LEVELS)[::-1].cumsum()[::-1].astype(np.float64)
    bg = np.bincount(levels[~gt].ravel(), minlength=LEVELS)[::-1].cumsum()[::-1].astype(np.float64)
    predicted = fg + bg
    precision = np.divide(fg, predicted, out=np.ones(LEVELS), where=predicted > 0)
    total = np.count_nonzero(gt)
    recall = fg / total if total else np.ones(LEVELS)
    return precision, recall


def f_beta(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    den = BETA2 * precision + recall
    return np.divide((1 + BETA2) * precision * recall, den, out=np.zeros_like(den), where=den > 0)


def score(mask: np.ndarray, gt: np.ndarray) -> dict:
    """One photo's scores of a uint8 mask against its binary ground truth (same size)."""
    if mask.shape != gt.shape:
        raise ValueError(f"mask {mask.shape} and ground truth {gt.shape} differ in size")
    binary = mask >= 128  # p >= 0.5 for a mask rounded to 8 bits
    precision, recall = pr_curve(mask, gt)
    return {"MAE": float(np.abs(mask.astype(np.float32) / 255 - gt).mean()), "IoU": iou(binary, gt),
            "BF": boundary_f(binary, gt), "precision": precision, "recall": recall}


def summary(per_photo: dict[str, dict]) -> dict:
    """Means over the photos, the max F-measure of the mean curve, and quartiles of MAE and BF."""
    rows = list(per_photo.values())
    p = np.mean([r["precision"] for r in rows], axis=0)
    r_ = np.mean([r["recall"] for r in rows], axis=0)
    out = {"photos": len(rows), "maxF": float(f_beta(p, r_).max())}
    for key in ("MAE", "IoU", "BF"):
        values = np.array([r[key] for r in rows])
        out[key] = float(values.mean())
        out[f"{key} quartiles"] = [float(q) for q in np.percentile(values, (25, 50, 75))]
    return out


def paired(ours: dict[str, dict], theirs: dict[str, dict], key: str, lower_better: bool,
           tie: float = 1e-4) -> tuple[int, int, int]:
    """(wins, ties, losses) of `ours` against `theirs` photo by photo on one metric."""
    wins = ties = losses = 0
    for k, mine in ours.items():
        d = mine[key] - theirs[k][key]
        if abs(d) <= tie:
            ties += 1
        elif (d < 0) == lower_better:
            wins += 1
        else:
            losses += 1
    return wins, ties, losses


# ---------------------------------------------------------------------------------------------- runners

MaskFn = Callable[[np.ndarray], np.ndarray]


def bgmask_masker(model: str, quality: str, **options) -> tuple[MaskFn, str]:
    """A function 8-bit RGB (H, W, 3) -> uint8 mask through the daemon's own pipeline (compute_mask, the code a
    remove request runs, in this process), and the model file it uses."""
    sys.path.insert(0, str(ROOT / "server"))
    from bgmask.models import catalog, download, providers
    from bgmask.mask import pipeline
    from bgmask.protocol import ImageSpec, RemoveOptions
    from bgmask.models.sessions import MattingSession

    spec = catalog.Catalog.load().get(model)
    path = download.ensure_model(spec)
    session = _sessions.get(model) or CachedInference(MattingSession(spec, path, providers.choose("cpu")),
                                                       cache_dir("inference", path))
    _sessions[model] = session
    opts = RemoveOptions(quality=quality, **options)

    def run(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        img = ImageSpec(w, h, 3, "u8", w * 3, False)
        result = pipeline.compute_mask(session, rgb.tobytes(), img, opts, "u8", lambda *a: None, lambda: False)
        return np.frombuffer(result.mask, np.uint8).reshape(h, w)

    return run, str(path)


_sessions: dict = {}


def cache_dir(kind: str, model_file: Path) -> Path:
    """A folder of the bench cache for results of one model file (its name, size and time say which)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from quality_data import bench_cache

    st = model_file.stat()
    tag = hashlib.sha256(f"{model_file.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = bench_cache() / "real" / kind / f"{model_file.stem}-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class CachedInference:
    """A MattingSession whose raw outputs are kept on disk by the hash of the input tensor: a rerun (another
    refinement, another quality with the same input) skips inference and gets the very same output."""

    def __init__(self, session, folder: Path) -> None:
        self.session, self.folder = session, folder
        self.hits = 0  # outputs served from the cache: a photo's seconds then leave inference out

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        path = self.folder / (hashlib.sha256(np.ascontiguousarray(tensor).tobytes()).hexdigest()[:32] + ".npy")
        if path.is_file():
            self.hits += 1
            return np.load(path)
        out = self.session.infer(tensor)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, out)
        os.replace(tmp, path)
        return out


def run_bgmask(masker: MaskFn, chosen: list[Photo]) -> tuple[dict[str, dict], dict[str, float]]:
    scores, seconds = {}, {}
    for photo in chosen:
        rgb = np.ascontiguousarray(np.asarray(Image.open(photo.image).convert("RGB")))
        t = time.perf_counter()
        mask = masker(rgb)
        seconds[photo.key] = time.perf_counter() - t
        scores[photo.key] = score(mask, read_gt(photo.mask))
    return scores, seconds


def run_rembg(family: str, model_file: str, chosen: list[Photo]) -> tuple[dict[str, dict], dict[str, float], int]:
    """rembg's masks from its own venv (bench/rembg_env.py installs it once), scored here, and how many of them
    came from an earlier run: masks (and their seconds) are kept in the bench cache per model file and rembg
    version, and only photos not seen before run rembg again."""
    sys.path.insert(0, str(ROOT / "bench"))
    import rembg_env

    version = rembg_env.ensure(log=lambda m: print(m, file=sys.stderr)).get("rembg", "unknown")
    cache = cache_dir("rembg", Path(model_file)) / f"rembg-{version}"
    cache.mkdir(exist_ok=True)
    timings = cache / "seconds.json"
    seconds = json.loads(timings.read_text()) if timings.is_file() else {}
    todo = [p for p in chosen if p.key not in seconds or not (cache / f"{p.key}.png").is_file()]
    if todo:
        # rembg takes a custom model only from inside its home: a link there to the very file bgmask runs.
        name = "custom-" + Path(model_file).stem
        home = rembg_env.link_models({name: Path(model_file)})
        with tempfile.TemporaryDirectory(prefix="bgmask-rembg-masks-") as out:
            args = {"family": family, "model": str(home / f"{name}.onnx"), "out": out,
                    "images": {p.key: str(p.image) for p in todo}}
            done = subprocess.run([str(rembg_env.python()), str(ROOT / "bench" / "_rembg_masks.py"), json.dumps(args)],
                                  capture_output=True, text=True, env=rembg_env.env())
            if done.returncode != 0:
                raise RuntimeError(f"rembg failed: {done.stderr[-2000:]}")
            seconds |= json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
            for p in todo:
                shutil.move(str(Path(out) / f"{p.key}.png"), cache / f"{p.key}.png")
        timings.write_text(json.dumps(seconds))
    scores = {p.key: score(np.asarray(Image.open(cache / f"{p.key}.png").convert("L")), read_gt(p.mask))
              for p in chosen}
    return scores, {p.key: seconds[p.key] for p in chosen}, len(chosen) - len(todo)
