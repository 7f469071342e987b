"""Ground truth for bench/quality.py: real photos composited over other real photos through synthetic,
hair-like alpha mattes at 6-24 MP, generated deterministically from a seed.

Photos come from the repository's examples/ and from scikit-image's bundled sample data. scikit-image is
not a bgmask dependency: the PNGs are read straight out of its wheel, which `pip download` fetches once
into the bench cache ($BGMASK_BENCH_CACHE, default ~/.cache/bgmask-bench); an installed scikit-image is
used when there is one."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
                  "grass.png", "gravel.png", "brick.png")


def bench_cache() -> Path:
    path = Path(os.environ.get("BGMASK_BENCH_CACHE", Path.home() / ".cache" / "bgmask-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _skimage_reader():
    """A function name -> bytes over scikit-image's sample data: installed package, cached wheel, or a fresh
    `pip download` of the wheel (the data files are plain PNG/JPEG members of it)."""
    try:
        import skimage  # noqa: F401  (bench-only, optional)
        data_dir = Path(skimage.__file__).parent / "data"
        return lambda name: (data_dir / name).read_bytes()
    except ImportError:
        pass
    cache = bench_cache()
    wheels = sorted(cache.glob("scikit_image-*.whl"))
    if not wheels:
        print(f"fetching the scikit-image wheel (sample photos only) into {cache} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "-d", str(cache), "scikit-image"], check=True)
        wheels = sorted(cache.glob("scikit_image-*.whl"))
    archive = zipfile.ZipFile(wheels[-1])
    return lambda name: archive.read(f"skimage/data/{name}")


def load_photos() -> dict[str, np.ndarray]:
    """Every photo as float32 RGB (h, w, 3) in [0, 1], sRGB-encoded; gray textures are tinted to RGB."""
    photos: dict[str, np.ndarray] = {}
    for path in sorted((ROOT / "examples").glob("*.jpg")):
        photos["ex-" + path.stem] = _to_rgb(Image.open(path))
    read = _skimage_reader()
    for name in SKIMAGE_PHOTOS:
        photos[name.rsplit(".", 1)[0]] = _to_rgb(Image.open(io.BytesIO(read(name))))
    return photos


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode == "L":  # a texture: give it a colour so foreground and background differ in hue too
        g = np.asarray(img, dtype=np.float32) / 255.0
        return np.clip(np.stack([g * 0.9 + 0.05, g * 0.8 + 0.1, g * 0.55 + 0.05], axis=2), 0, 1)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def tiled(photo: np.ndarray, width: int, height: int, scale: float) -> np.ndarray:
    """The photo upscaled by `scale` (Lanczos) and mirror-tiled to (height, width): real texture at every size."""
    h, w = photo.shape[:2]
    img = Image.fromarray(np.round(photo * 255).astype(np.uint8))
    big = np.asarray(img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS))
    reps_y, reps_x = -(-height // big.shape[0]), -(-width // big.shape[1])
    rows = [big if i % 2 == 0 else big[::-1] for i in range(reps_y)]
    col = np.concatenate(rows, axis=0)
    tiles = [col if j % 2 == 0 else col[:, ::-1] for j in range(reps_x)]
    return (np.concatenate(tiles, axis=1)[:height, :width].astype(np.float32) / 255.0)


def _bezier(p: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return ((1 - t) ** 3) * p[0] + 3 * ((1 - t) ** 2) * t * p[1] + 3 * (1 - t) * t * t * p[2] + (t ** 3) * p[3]


def _draw_strand(trans: np.ndarray, pts: np.ndarray, widths: np.ndarray, opacity: float) -> None:
    """Multiply transmittance by one anti-aliased strand (a polyline of tapering width); segments are
    max-combined first so the strand's own joints are not counted twice."""
    H, W = trans.shape
    pad = float(widths.max()) / 2 + 2
    x0 = max(0, int(math.floor(pts[:, 0].min() - pad)))
    x1 = min(W, int(math.ceil(pts[:, 0].max() + pad)) + 1)
    y0 = max(0, int(math.floor(pts[:, 1].min() - pad)))
    y1 = min(H, int(math.ceil(pts[:, 1].max() + pad)) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    cover = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    for (ax, ay), (bx, by), wd in zip(pts[:-1], pts[1:], widths[:-1]):
        sx0 = max(x0, int(math.floor(min(ax, bx) - wd / 2 - 2)))
        sx1 = min(x1, int(math.ceil(max(ax, bx) + wd / 2 + 2)) + 1)
        sy0 = max(y0, int(math.floor(min(ay, by) - wd / 2 - 2)))
        sy1 = min(y1, int(math.ceil(max(ay, by) + wd / 2 + 2)) + 1)
        if sx1 <= sx0 or sy1 <= sy0:
            continue
        px = np.arange(sx0, sx1, dtype=np.float32)[None, :] + 0.5
        py = np.arange(sy0, sy1, dtype=np.float32)[:, None] + 0.5
        dx, dy = bx - ax, by - ay
        t = np.clip(((px - ax) * dx + (py - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        dist = np.hypot(px - (ax + t * dx), py - (ay + t * dy))
        # Pixel coverage of a line of width wd: a 1 px ramp, peak min(wd, 1) (integrates to wd across).
        c = np.clip(wd / 2 + 0.5 - dist, 0.0, min(wd, 1.0))
        view = cover[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
        np.maximum(view, c, out=view)
    trans[y0:y1, x0:x1] *= 1.0 - np.float32(opacity) * cover


def synth_alpha(width: int, height: int, seed: int) -> np.ndarray:
    """A soft matte: a wavy body with a 1 px anti-aliased edge that defocuses to ~10 px in one sector,
    a head of hair (hundreds of thin, tapering, curved strands of 0.4-2.5 px) and sparse fuzz elsewhere."""
    rng = np.random.default_rng(seed)
    side = min(width, height)
    cx, cy = width * rng.uniform(0.42, 0.58), height * rng.uniform(0.5, 0.62)
    r0 = 0.27 * side
    ks = np.arange(2, 8)
    amps = rng.uniform(0.0, 0.07, ks.size) / np.sqrt(ks)
    phases = rng.uniform(0, 2 * np.pi, ks.size)
    blur_dir = rng.uniform(0, 2 * np.pi)
    hair_dir = -np.pi / 2 + rng.uniform(-0.4, 0.4)  # hair grows mostly upwards

    def radius(theta: np.ndarray) -> np.ndarray:
        return r0 * (1.0 + np.sum(amps[:, None] * np.cos(ks[:, None] * theta[None] + phases[:, None]), axis=0))

    alpha = np.zeros((height, width), dtype=np.float32)
    xs = np.arange(width, dtype=np.float32) + 0.5 - cx
    for y0 in range(0, height, 256):
        ys = np.arange(y0, min(height, y0 + 256), dtype=np.float32)[:, None] + 0.5 - cy
        rho = np.hypot(xs[None, :], ys)
        theta = np.arctan2(ys, xs[None, :])
        r = radius(theta.ravel()).reshape(theta.shape).astype(np.float32)
        edge = 1.0 + 9.0 * np.maximum(0.0, np.cos(theta - blur_dir)) ** 8
        alpha[y0:y0 + ys.shape[0]] = np.clip((r - rho) / edge + 0.5, 0.0, 1.0)

    trans = np.ones((height, width), dtype=np.float32)
    n_hair = int(0.5 * r0 * 2.4)
    n_fuzz = int(0.02 * r0 * 2 * np.pi)
    for i in range(n_hair + n_fuzz):
        if i < n_hair:
            th = hair_dir + rng.uniform(-1.2, 1.2)
            length = r0 * rng.uniform(0.05, 0.45) * (1.0 - 0.5 * abs(th - hair_dir) / 1.2)
        else:
            th = rng.uniform(0, 2 * np.pi)
            length = r0 * rng.uniform(0.02, 0.12)
        rr = float(radius(np.array([th]))[0]) - r0 * rng.uniform(0.0, 0.04)
        root = np.array([cx + rr * np.cos(th), cy + rr * np.sin(th)])
        ang = th + rng.normal(0, 0.35)
        d = np.array([np.cos(ang), np.sin(ang)])
        n = np.array([-d[1], d[0]])
        ctrl = np.stack([root,
                         root + d * length / 3 + n * rng.normal(0, length / 6),
                         root + d * 2 * length / 3 + n * rng.normal(0, length / 4),
                         root + d * length + n * rng.normal(0, length / 4)])
        segs = max(4, int(length / 5))
        pts = _bezier(ctrl, segs + 1)
        w0 = rng.uniform(0.4, 2.5)
        widths = w0 * (1.0 - 0.7 * np.linspace(0, 1, segs + 1))
        _draw_strand(trans, pts, widths, rng.uniform(0.5, 1.0))
    alpha = 1.0 - (1.0 - alpha) * trans
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


@dataclass
class Scene:
    name: str
    fg: str
    bg: str
    width: int
    height: int
    seed: int
    bg_blur: float  # background defocus, Gaussian radius as a fraction of the diagonal (0: sharp clutter)
    noise: float  # sensor noise, standard deviation in [0, 1] units


SCENES = (
    Scene("astronaut/motorcycle 6MP", "astronaut", "motorcycle_left", 3000, 2000, 1, 0.005, 0.004),
    Scene("chelsea/grass 12MP", "chelsea", "grass", 4000, 3000, 2, 0.0, 0.004),
    Scene("coffee/rocket 24MP", "coffee", "rocket", 6000, 4000, 3, 0.005, 0.008),
    Scene("motorcycle/chelsea 12MP", "motorcycle_left", "chelsea", 4240, 2832, 4, 0.005, 0.004),
    Scene("rocket/gravel 12MP portrait", "rocket", "gravel", 3000, 4000, 5, 0.0, 0.015),
)


@dataclass
class Composite:
    image: np.ndarray  # float32 (H, W, 3) sRGB-encoded, fg*a + bg*(1-a) + sensor noise
    alpha: np.ndarray  # float32 (H, W) ground truth
    fg: np.ndarray
    bg: np.ndarray


def make_composite(scene: Scene, photos: dict[str, np.ndarray]) -> Composite:
    """Foreground photo (upscaled 2.5-4x, mirror-tiled) over a background photo (1.5-2.5x, so its texture
    stays sharp, or defocused like a portrait's) through the scene's matte, plus Gaussian sensor noise."""
    rng = np.random.default_rng(1000 + scene.seed)
    alpha = synth_alpha(scene.width, scene.height, scene.seed)
    fg = tiled(photos[scene.fg], scene.width, scene.height, rng.uniform(2.5, 4.0))
    bg = tiled(photos[scene.bg], scene.width, scene.height, rng.uniform(1.5, 2.5))
    if scene.bg_blur > 0:
        radius = scene.bg_blur * math.hypot(scene.width, scene.height)
        bg8 = Image.fromarray(np.round(bg * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
        bg = np.asarray(bg8, dtype=np.float32) / 255.0
    image = bg.copy()
    image -= fg
    image *= (1.0 - alpha)[..., None]
    image += fg
    image += rng.normal(0.0, scene.noise, image.shape).astype(np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    return Composite(image, alpha, fg, bg)
