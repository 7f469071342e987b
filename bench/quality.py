"""How well, and at what cost, bgmask carries a low-resolution soft prediction to a full-resolution mask.

    python bench/quality.py                # everything: recovery, end to end, cost, decontamination
    python bench/quality.py --quick        # two scenes (6 and 24 MP), no end-to-end
    python bench/quality.py --sweep        # refine's radius / eps / grid scale / guide on the recovery step
    python bench/quality.py --real         # real photos (ECSSD) against rembg, same model file, every quality
    python bench/quality.py --real --models u2netp --stride 10 --limit 50   # a few minutes

Real photos (--real, bench/real_photos.py): bgmask's own pipeline (each `quality`) and rembg (its own venv,
its custom-model session on the same file) on ../shared/data/ecssd, scored against hand-made binary masks:
MAE, max F-measure, IoU at 0.5, boundary F within 2 px, quartiles over the photos, paired wins against rembg.
Binary masks show whether the subject is found and where its outline lies, not soft edges: the synthetic
composites below remain the tool for those.

Ground truth (bench/quality_data.py): real photos composited over real photos through synthetic hair-like
mattes at 6-24 MP. Methods compared, all starting from the same 1024x1024 prediction:

- bilinear      `refine.upsample` (the daemon's `refine: false`)
- rembg-style   the prediction truncated to 8 bits, resized with Pillow's LANCZOS (what rembg does)
- ours-luma     `refine.refine` with a luma guide (8-bit input, Pillow's convert("L"))
- ours-rgb      `refine.refine` with the RGB image as the guide
  (both with guide_small = the guide as the model saw it: recovery, area-averaged like the prediction;
  end to end, the model's own input)
- ours-rgb, own reduction   the same without guide_small (refine area-averages the guide itself)

Steps: (1) recovery: the ground-truth matte area-averaged to 1024x1024 is the prediction; (2) end to end:
the real model's prediction on the 8-bit composite (u2netp, isnet-general-use) where the weights are in
the bgmask cache. Metrics (Rhemann et al. 2009 / Xu et al. 2017 "Deep Image Matting"), over the trimap
band (fractional ground-truth pixels dilated by 0.4 % of the diagonal): SAD (sum |p-g| / 1000), MSE
(mean, x1000), Grad (sum of squared differences of Gaussian (sigma 1.4) gradient magnitudes / 1000),
Conn (connectivity error, threshold step 0.1, theta 0.15, / 1000). Lower is better everywhere.

scipy is used here only (it is not a runtime dependency)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(ROOT / "bench"))

import quality_data as D  # noqa: E402
import real_photos as RP  # noqa: E402
from bgmask.mask import decontaminate as DC  # noqa: E402
from bgmask.mask import refine as R  # noqa: E402

METRICS = ("SAD", "MSE", "Grad", "Conn")
PRED_SIZE = (1024, 1024)


# ---------------------------------------------------------------------------------------------- methods

def rembg_style(pred: np.ndarray, width: int, height: int) -> np.ndarray:
    mask = Image.fromarray((pred * 255).astype(np.uint8), mode="L")
    return np.asarray(mask.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def methods(guide_luma: np.ndarray, guide_rgb: np.ndarray, small_rgb: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """small_rgb: the RGB guide as the model saw it (recovery: area-averaged like the prediction; end to
    end: the model's own input), for refine's guide_small."""
    H, W = guide_luma.shape
    small_luma = small_rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return {
        "bilinear": lambda p: R.upsample(p, W, H),
        "rembg-style": lambda p: rembg_style(p, W, H),
        "ours-luma": lambda p: R.refine(p, guide_luma, guide_small=small_luma),
        "ours-rgb": lambda p: R.refine(p, guide_rgb, guide_small=small_rgb),
        "ours-rgb, own reduction": lambda p: R.refine(p, guide_rgb),
    }


def area_small(rgb: np.ndarray) -> np.ndarray:
    return np.stack([area_down(np.ascontiguousarray(rgb[..., c]), PRED_SIZE) for c in range(3)], axis=2)


def area_down(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(alpha, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)


def as_8bit(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The composite as an 8-bit photo, and the two guides the daemon could derive from it."""
    img8 = np.round(image * 255).astype(np.uint8)
    luma = np.asarray(Image.fromarray(img8).convert("L"), dtype=np.float32) * np.float32(1 / 255)
    return img8, luma, img8.astype(np.float32) * np.float32(1 / 255)


# ---------------------------------------------------------------------------------------------- metrics

class Evaluator:
    """Metrics of predictions against one ground truth, computed on the crop that holds the object."""

    def __init__(self, gt: np.ndarray) -> None:
        H, W = gt.shape
        self.radius = max(2, round(0.004 * np.hypot(H, W)))
        visible = gt > 1e-3
        ys, xs = np.nonzero(visible.any(axis=1))[0], np.nonzero(visible.any(axis=0))[0]
        m = self.radius + 8
        self.box = (slice(max(0, ys[0] - m), min(H, ys[-1] + m + 1)), slice(max(0, xs[0] - m), min(W, xs[-1] + m + 1)))
        self.gt = gt[self.box]
        frac = (self.gt > 1e-3) & (self.gt < 1 - 1e-3)
        self.band = ndimage.maximum_filter(frac, size=2 * self.radius + 1)
        self.gt_grad = ndimage.gaussian_gradient_magnitude(self.gt, 1.4)

    def __call__(self, pred: np.ndarray, conn: bool = True) -> dict[str, float]:
        p = pred[self.box].astype(np.float32)
        d = (p - self.gt)[self.band]
        out = {
            "SAD": float(np.abs(d).sum() / 1000),
            "MSE": float((d.astype(np.float64) ** 2).mean() * 1000),
            "Grad": float(((ndimage.gaussian_gradient_magnitude(p, 1.4) - self.gt_grad)[self.band].astype(np.float64) ** 2).sum() / 1000),
        }
        if conn:
            out["Conn"] = connectivity(p, self.gt, self.band)
        return out


def connectivity(p: np.ndarray, g: np.ndarray, band: np.ndarray, step: float = 0.1, theta: float = 0.15) -> float:
    """Rhemann et al.'s connectivity error: a pixel's level is the highest threshold at which it still
    belongs to the largest 4-connected region where both mattes reach the threshold; pixels whose alpha
    exceeds that level by theta or more count as disconnected."""
    level = np.full(p.shape, -1.0, dtype=np.float32)
    for t in np.arange(1, round(1 / step) + 1) * step:
        labels, n = ndimage.label((p >= t) & (g >= t))
        if n:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            omega = labels == sizes.argmax()
        else:
            omega = np.zeros(p.shape, dtype=bool)
        newly = (level < 0) & ~omega
        level[newly] = t - step
    level[level < 0] = 1.0
    dp, dg = p - level, g - level
    phi_p = 1 - dp * (dp >= theta)
    phi_g = 1 - dg * (dg >= theta)
    return float(np.abs(phi_p - phi_g)[band].sum() / 1000)


# ---------------------------------------------------------------------------------------------- output

def table(title: str, rows: dict[str, dict[str, float]], cols: tuple[str, ...], ref: str | None = None) -> None:
    print(f"\n{title}\n")
    head = "| method | " + " | ".join(cols) + " |" + ("" if ref is None else " " + " | ".join(f"{c}/{ref}" for c in cols) + " |")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for name, vals in rows.items():
        cells = [f"{vals[c]:.4g}" if c in vals else "-" for c in cols]
        if ref is not None:
            cells += [f"{vals[c] / rows[ref][c]:.2f}" if c in vals and rows[ref].get(c) else "-" for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")


def mean_rows(per_scene: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Geometric means over scenes, so each scene weighs the same whatever its size."""
    out: dict[str, dict[str, float]] = {}
    for name in per_scene[0]:
        out[name] = {c: float(np.exp(np.mean([np.log(max(s[name][c], 1e-12)) for s in per_scene])))
                     for c in per_scene[0][name]}
    return out


def timed(fn: Callable[[], np.ndarray], repeat: int = 1) -> tuple[np.ndarray, float]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


# ---------------------------------------------------------------------------------------------- steps

def recovery(scenes, photos, results, conn: bool) -> None:
    per_scene = []
    for scene in scenes:
        comp, secs = timed(lambda: D.make_composite(scene, photos))
        _, luma, rgb = as_8bit(comp.image)
        pred = area_down(comp.alpha, PRED_SIZE)
        ev = Evaluator(comp.alpha)
        rows = {}
        for name, fn in methods(luma, rgb, area_small(rgb)).items():
            out, t = timed(lambda: fn(pred))
            rows[name] = ev(out, conn) | {"seconds": t}
        per_scene.append({k: {c: v[c] for c in METRICS if c in v} for k, v in rows.items()})
        results["recovery"][scene.name] = rows
        table(f"Recovery, {scene.name} ({scene.width}x{scene.height}, band radius {ev.radius} px, "
              f"composite made in {secs:.1f} s)", rows, METRICS + ("seconds",), ref="rembg-style")
    if len(per_scene) > 1:
        results["recovery"]["geomean"] = mean_rows(per_scene)
        table("Recovery, geometric mean over scenes", results["recovery"]["geomean"], METRICS, ref="rembg-style")


def model_predictions(names: list[str]):
    """name -> function(8-bit RGB composite) -> (prediction, inference seconds), for models in the cache."""
    try:
        from bgmask.models import catalog, download, providers
        from bgmask.mask import pixels
        from bgmask.protocol import ImageSpec
        from bgmask.models.sessions import MattingSession
    except ImportError as exc:
        print(f"(end to end skipped: bgmask's pipeline modules are not importable: {exc})")
        return {}
    cat = catalog.Catalog.load()
    choice = providers.choose("cpu")
    found = {}
    for name in names:
        spec = cat.get(name)
        path = download.model_path(spec)
        if not path.is_file():
            print(f"(end to end: {name} is not in the cache at {path}; `bgmask pull {name}` fetches it)")
            continue
        session = MattingSession(spec, path, choice)

        def predict(img8: np.ndarray, session=session) -> tuple[np.ndarray, float, np.ndarray]:
            h, w = img8.shape[:2]
            spec_ = ImageSpec(w, h, 3, "u8", w * 3, False)
            seen = pixels.model_rgb(img8.tobytes(), spec_, session.size)
            tensor = session.prepare(seen)
            t = time.perf_counter()
            raw = session.infer(tensor)
            secs = time.perf_counter() - t
            return session.postprocess(raw), secs, np.ascontiguousarray(seen.transpose(1, 2, 0))

        found[name] = predict
    return found


def end_to_end(scenes, photos, results, models, conn: bool) -> None:
    for model, predict in models.items():
        per_scene = []
        for scene in scenes:
            comp = D.make_composite(scene, photos)
            img8, luma, rgb = as_8bit(comp.image)
            pred, secs, seen = predict(img8)
            ev = Evaluator(comp.alpha)
            rows = {name: ev(fn(pred), conn) for name, fn in methods(luma, rgb, seen).items()}
            per_scene.append(rows)
            results["end_to_end"].setdefault(model, {})[scene.name] = rows | {"inference_seconds": secs}
            table(f"End to end, {model}, {scene.name} (inference {secs:.2f} s)", rows, METRICS, ref="rembg-style")
        if len(per_scene) > 1:
            results["end_to_end"][model]["geomean"] = mean_rows(per_scene)
            table(f"End to end, {model}, geometric mean over scenes", results["end_to_end"][model]["geomean"],
                  METRICS, ref="rembg-style")


def cost(photos, results, models) -> None:
    """Refinement time at 24 MP against the models' inference time on this machine."""
    scene = next(s for s in D.SCENES if s.width * s.height >= 24_000_000)
    comp = D.make_composite(scene, photos)
    img8, luma, rgb = as_8bit(comp.image)
    pred = area_down(comp.alpha, PRED_SIZE)
    rows = {}
    for name, fn in methods(luma, rgb, area_small(rgb)).items():
        _, t = timed(lambda: fn(pred), repeat=3)
        rows[name] = {"seconds": t}
    _, t = timed(lambda: R.refine(pred, img8), repeat=3)
    rows["ours-rgb, uint8 guide, own reduction"] = {"seconds": t}
    for model, predict in models.items():
        rows[f"inference {model}"] = {"seconds": statistics.median(predict(img8)[1] for _ in range(3))}
    results["cost"] = {"pixels": scene.width * scene.height, "rows": rows}
    print(f"\nCost at {scene.width}x{scene.height} ({scene.width * scene.height / 1e6:.0f} MP), best of 3 "
          f"(inference: median of 3)\n")
    print("| step | seconds |" + "".join(f" / {m} inference |" for m in models))
    print("| --- | --- |" + " --- |" * len(models))
    for name, vals in rows.items():
        ratios = "".join(f" {vals['seconds'] / rows[f'inference {m}']['seconds'] * 100:.1f} % |" for m in models)
        print(f"| {name} | {vals['seconds']:.3f} |{ratios}")


def decontamination(scenes, photos, results) -> None:
    """Foreground colour error at edge pixels, weighted by alpha (where F matters), against the true F."""
    rows = {}
    for scene in scenes:
        comp = D.make_composite(scene, photos)
        a = comp.alpha
        edge = (a > 0.02) & (a < 0.98)
        w = a[edge][:, None]

        def err(F: np.ndarray) -> dict[str, float]:
            f_mse = float((w * (F[edge] - comp.fg[edge]) ** 2).sum() / w.sum() / 3 * 1000)
            recon = F[edge] * w + comp.bg[edge] * (1 - w)
            return {"F MSE": f_mse, "recompose MSE": float(((recon - comp.image[edge]) ** 2).mean() * 1000)}

        fhat, secs = timed(lambda: DC.decontaminate(comp.image, a))
        rows[scene.name] = {"image as F": err(comp.image), "decontaminated": err(fhat) | {"seconds": secs}}
        table(f"Decontamination, {scene.name}, edge pixels 0.02 < alpha < 0.98 (x1000)", rows[scene.name],
              ("F MSE", "recompose MSE"), ref="image as F")
    results["decontaminate"] = rows


def sweep(scenes, photos, results) -> None:
    """Recovery-step SAD, MSE and Grad of refine's settings, as ratios to rembg-style (geometric mean)."""
    data = []
    for scene in scenes:
        comp = D.make_composite(scene, photos)
        _, luma, rgb = as_8bit(comp.image)
        pred = area_down(comp.alpha, PRED_SIZE)
        ev = Evaluator(comp.alpha)
        base = ev(rembg_style(pred, scene.width, scene.height), conn=False)
        small = area_small(rgb)
        data.append(((luma, small @ np.array([0.299, 0.587, 0.114], np.float32)), (rgb, small), pred, ev, base))
    rows = {}
    for guide in ("luma", "rgb"):
        for radius in (2, 3, 5, 7):
            for eps in (1e-5, 1e-4, 1e-3):
                ratios, secs = [], []
                for luma, rgb, pred, ev, base in data:
                    full, small = luma if guide == "luma" else rgb
                    out, t = timed(lambda: R.refine(pred, full, guide_small=small, radius=radius, eps=eps))
                    m = ev(out, conn=False)
                    ratios.append({c: m[c] / base[c] for c in ("SAD", "MSE", "Grad")})
                    secs.append(t)
                key = f"{guide} r={radius} eps={eps:g}"
                rows[key] = {c: float(np.exp(np.mean([np.log(r[c]) for r in ratios]))) for c in ("SAD", "MSE", "Grad")}
                rows[key]["seconds"] = float(np.mean(secs))
                print(f"{key:24s} " + "  ".join(f"{c} {v:.3f}" for c, v in rows[key].items()), flush=True)
    results["sweep"] = rows
    table("Sweep: ratios to rembg-style (geometric mean over scenes)", rows, ("SAD", "MSE", "Grad", "seconds"))


def real(models: list[str], qualities: list[str], chosen: list, with_rembg: bool, results: dict) -> None:
    """bgmask at each quality and rembg on the same photos with the same model file: one table per model."""
    from bgmask.models import catalog
    from bgmask.protocol import RemoveOptions

    cols = ("MAE", "maxF", "IoU", "BF")
    for model in models:
        runs: dict[str, tuple[dict, dict]] = {}
        model_file = None
        for quality in qualities:
            masker, model_file = RP.bgmask_masker(model, quality)
            runs[f"bgmask {quality}"] = RP.run_bgmask(masker, chosen)
            print(f"  {model} bgmask {quality}: done", file=sys.stderr, flush=True)
        rembg_cached = 0
        if with_rembg:
            family = catalog.Catalog.load().get(model).family
            scores, secs, rembg_cached = RP.run_rembg(family, str(model_file), chosen)
            runs["rembg"] = (scores, secs)
        rows = {name: RP.summary(scores) | {"s/photo": float(np.median(list(secs.values())))}
                for name, (scores, secs) in runs.items()}
        results.setdefault("real", {})[model] = rows
        print(f"\nReal photos, {model}, {len(chosen)} photos of {RP.data_dir()} (quartiles: 25/50/75 %)\n")
        if getattr(RP._sessions.get(model), "hits", 0):
            print(f"(bgmask's model outputs came from the bench cache {RP._sessions[model].hits} times: its s/photo "
                  "leaves those inferences out)")
        if rembg_cached:
            print(f"(rembg's masks of {rembg_cached} photos came from the bench cache: their seconds are those of "
                  "the earlier run that made them, not comparable with this run's)")
        print("| method | " + " | ".join(cols) + " | MAE quartiles | BF quartiles | s/photo (median) |")
        print("| --- |" + " --- |" * (len(cols) + 3))
        for name, r in rows.items():
            q = lambda k: " / ".join(f"{v:.3f}" for v in r[f"{k} quartiles"])  # noqa: E731
            print(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + f" | {q('MAE')} | {q('BF')} | {r['s/photo']:.3f} |")
        if "rembg" not in runs:
            continue
        print("\nPaired against rembg, photo by photo (wins / ties / losses)\n")
        print("| method | MAE | BF | IoU | MAE - rembg's | BF - rembg's |")
        print("| --- | --- | --- | --- | --- | --- |")
        theirs = runs["rembg"][0]
        verdict = None
        for name, (ours, _) in runs.items():
            if name == "rembg":
                continue
            wins = {k: RP.paired(ours, theirs, k, lower_better=(k == "MAE")) for k in ("MAE", "BF", "IoU")}
            rows[name]["paired"] = wins
            dm, db = rows[name]["MAE"] - rows["rembg"]["MAE"], rows[name]["BF"] - rows["rembg"]["BF"]
            print(f"| {name} | " + " | ".join("{} / {} / {}".format(*wins[k]) for k in ("MAE", "BF", "IoU"))
                  + f" | {dm:+.4f} | {db:+.4f} |")
            if name == f"bgmask {RemoveOptions().quality}":
                verdict = "ok" if dm <= 0 and db >= 0.01 else "MISSED"
        if verdict is not None:
            print(f"\ntarget (default quality): MAE <= rembg's and BF >= rembg's + 0.01: {verdict}")



def _plain(x):
    """JSON for numpy arrays (precision/recall curves)."""
    return x.tolist() if isinstance(x, np.ndarray) else str(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two scenes (6 and 24 MP), no end-to-end step")
    ap.add_argument("--sweep", action="store_true", help="only the parameter sweep of refine on the recovery step")
    ap.add_argument("--no-conn", action="store_true", help="skip the (slow) connectivity error")
    ap.add_argument("--models", default="u2netp,isnet-general-use", help="models for the end-to-end step and the cost")
    ap.add_argument("--real", action="store_true", help="real photos with hand-made masks, against rembg")
    ap.add_argument("--qualities", default="fast,balanced,best", help="--real: bgmask's quality values to run")
    ap.add_argument("--limit", type=int, default=0, help="--real: at most this many photos (0: all)")
    ap.add_argument("--stride", type=int, default=1, help="--real: every k-th photo of the manifest")
    ap.add_argument("--start", type=int, default=0, help="--real: the first photo taken (an index into the manifest)")
    ap.add_argument("--no-rembg", action="store_true", help="--real: bgmask only")
    ap.add_argument("--json", type=Path, default=None,
                    help="where to write the results (default: quality.json, or quality-real.json with --real, in the bench cache)")
    args = ap.parse_args()
    if args.real:
        why = RP.missing()
        if why:
            print(f"--real: {why}", file=sys.stderr)
            return 2
        chosen = RP.photos(args.limit, args.stride, args.start)
        results = {"photos": [p.key for p in chosen]}
        t = time.perf_counter()
        real([m for m in args.models.split(",") if m], [q for q in args.qualities.split(",") if q], chosen,
             not args.no_rembg, results)
        print(f"\n{time.perf_counter() - t:.0f} s")
        path = args.json or D.bench_cache() / "quality-real.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, default=_plain))
        print(f"results written to {path}")
        return 0
    photos = D.load_photos()
    scenes = [D.SCENES[0], D.SCENES[2]] if args.quick else list(D.SCENES)
    results: dict = {"scenes": [vars(s) for s in scenes], "recovery": {}, "end_to_end": {}}
    if args.sweep:
        sweep(scenes, photos, results)
    else:
        conn = not args.no_conn
        recovery(scenes, photos, results, conn)
        models = model_predictions([m for m in args.models.split(",") if m])
        if not args.quick:
            end_to_end(scenes, photos, results, models, conn)
        cost(photos, results, models)
        decontamination(scenes[:2], photos, results)
    path = args.json or D.bench_cache() / "quality.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
