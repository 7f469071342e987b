"""bgmask flicker benchmark: frame sequences with and without temporal consistency, and their throughput.

    python bench/flicker.py                    # quality on pans and still sequences, then 1080p throughput (~10 min)
    python bench/flicker.py --parts quality --ecssd 4 --frames 6

Sequences (deterministic): a *pan* is a window of 80 % of a real photo moving a few whole pixels a frame
across it, so the motion is known exactly; a *still* is the same photo every frame with fresh Gaussian noise
(sigma 2/255), as a camera's sensor or a codec adds. Photos: examples/*.jpg, and the first --ecssd photos of
../shared/data/ecssd when it is there (measurement only; their hand-made masks, panned the same way, are the
ground truth).

Each sequence runs through a real daemon of this tree twice, as one sequence (Client.remove_frames, U2-Netp,
refinement on): temporal on, and temporal off, which gives exactly the masks of independent requests.

- flicker: mean absolute change of the mask (in [0, 1]) between consecutive frames, over the pixels both
  frames show, after undoing the known motion; the ratio is temporal / independent (target <= 0.7).
- IoU of each temporal mask (at 0.5) with the independent mask of the same frame (target >= 0.9), and with
  the ground truth against the independent masks' IoU (target: no worse).
- throughput: a 1080p pan of --frames frames as one sequence, against the sum over its frames of the model's
  floor (ONNX Runtime session.run alone on the shipped file, as bench/speed.py takes it). Each round runs
  --frames floor runs, then the sequence (temporal on, then off), then the frames as lone requests, so each
  round's ratio compares work done side by side; printed per round, and the minimum and median over
  --rounds rounds (target <= 1.15x). The machine is shared: compare ratios, not seconds, and repeat runs.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import speed  # noqa: E402
from speed import DAEMON_TODAY, FLOOR, REPO, Daemon, FloorRounds, model_files, ort_worker  # noqa: E402

# ../shared beside the checkout (a worktree of it sits one level deeper)
ECSSD = next((p for p in (REPO.parent / "shared" / "data" / "ecssd", REPO.parent.parent / "shared" / "data" / "ecssd")
              if p.is_dir()), REPO.parent / "shared" / "data" / "ecssd")
MODEL = "u2netp"
NOISE = 2.0  # sigma of the still sequences' noise, in 8-bit levels
THROUGHPUT_SIZE = (1920, 1080)
TARGETS = {"flicker_ratio": 0.7, "iou_vs_independent": 0.9, "throughput_x_floor": 1.15}


@dataclass
class Sequence:
    """Frames (RGB8 arrays), the content's motion from one frame to the next ((dy, dx) >= 0: frame k + 1
    at (y, x) shows what frame k shows at (y + dy, x + dx)), and the ground-truth masks if known."""

    name: str
    kind: str
    frames: list[np.ndarray]
    step: tuple[int, int]
    truth: Optional[list[np.ndarray]] = None


def photos(ecssd: int) -> Iterator[tuple[str, np.ndarray, Optional[np.ndarray]]]:
    for path in sorted((REPO / "examples").glob("*.jpg")):
        yield path.stem, np.asarray(Image.open(path).convert("RGB")), None
    if not ECSSD.is_dir():
        print(f"(no {ECSSD}: ground truth skipped)")
        return
    with open(ECSSD / "manifest.csv") as f:
        rows = list(csv.DictReader(f))[:ecssd]
    for row in rows:
        truth = np.asarray(Image.open(ECSSD / row["gt_mask"]).convert("L")) >= 128
        yield "ecssd-" + row["id"], np.asarray(Image.open(ECSSD / row["image"]).convert("RGB")), truth


def pan(name: str, photo: np.ndarray, truth: Optional[np.ndarray], n: int) -> Sequence:
    """A window of 80 % of the photo moving right and down by whole pixels (at most 6 a frame)."""
    h, w = photo.shape[:2]
    fh, fw = int(h * 0.8), int(w * 0.8)
    dx = max(1, min(6, (w - fw) // (n - 1)))
    dy = max(0, min(dx // 2, (h - fh) // (n - 1)))
    window = [(k * dy, k * dx) for k in range(n)]
    frames = [np.ascontiguousarray(photo[y:y + fh, x:x + fw]) for y, x in window]
    gt = None if truth is None else [truth[y:y + fh, x:x + fw] for y, x in window]
    return Sequence(name, "pan", frames, (dy, dx), gt)


def still(name: str, photo: np.ndarray, truth: Optional[np.ndarray], n: int, seed: int) -> Sequence:
    rng = np.random.default_rng(seed)
    frames = [np.clip(photo + rng.normal(0.0, NOISE, photo.shape), 0, 255).astype(np.uint8) for _ in range(n)]
    return Sequence(name, "still", frames, (0, 0), None if truth is None else [truth] * n)


def masks(client: Any, seq: Sequence, temporal: bool) -> list[np.ndarray]:
    h, w = seq.frames[0].shape[:2]
    results = client.remove_frames([f.tobytes() for f in seq.frames], w, h, 3, "u8", model=MODEL, temporal=temporal)
    return [np.frombuffer(r.mask, np.uint8).reshape(h, w).astype(np.float32) / 255.0 for r in results]


def flicker(ms: list[np.ndarray], step: tuple[int, int]) -> list[float]:
    """Mean absolute change between consecutive masks over the pixels both show, the motion undone."""
    dy, dx = step
    h, w = ms[0].shape
    return [float(np.abs(b[:h - dy, :w - dx] - a[dy:, dx:]).mean()) for a, b in zip(ms, ms[1:])]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def bench_quality(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for i, (name, photo, truth) in enumerate(photos(args.ecssd)):
        for seq in (pan(name, photo, truth, args.frames), still(name, photo, truth, args.frames, seed=i)):
            on, off = masks(client, seq, True), masks(client, seq, False)
            row = {"name": seq.name, "kind": seq.kind, "flicker_on": float(np.mean(flicker(on, seq.step))),
                   "flicker_off": float(np.mean(flicker(off, seq.step))),
                   "iou": [iou(a >= 0.5, b >= 0.5) for a, b in zip(on, off)]}
            if seq.truth is not None:
                row["gt_on"] = float(np.mean([iou(a >= 0.5, t) for a, t in zip(on, seq.truth)]))
                row["gt_off"] = float(np.mean([iou(a >= 0.5, t) for a, t in zip(off, seq.truth)]))
            rows.append(row)
            print(f"  {seq.kind:5} {seq.name:12} flicker {row['flicker_off'] * 1000:6.2f} -> {row['flicker_on'] * 1000:6.2f}"
                  f" e-3 ({row['flicker_on'] / max(row['flicker_off'], 1e-9):.2f}x)  IoU vs independent min"
                  f" {min(row['iou']):.3f}" + (f"  GT IoU {row['gt_off']:.3f} -> {row['gt_on']:.3f}" if "gt_on" in row else ""),
                  flush=True)
    return {"rows": rows}


def summarise(quality: dict[str, Any]) -> dict[str, float]:
    rows = quality["rows"]
    out: dict[str, float] = {}
    for kind in ("pan", "still", "all"):
        sel = [r for r in rows if kind in ("all", r["kind"])]
        out[f"flicker_ratio_{kind}"] = sum(r["flicker_on"] for r in sel) / sum(r["flicker_off"] for r in sel)
    out["flicker_ratio"] = out["flicker_ratio_all"]
    out["flicker_ratio_worst_sequence"] = max(r["flicker_on"] / max(r["flicker_off"], 1e-9) for r in rows)
    ious = [x for r in rows for x in r["iou"]]
    out["iou_vs_independent_mean"], out["iou_vs_independent"] = float(np.mean(ious)), float(min(ious))
    gt = [r for r in rows if "gt_on" in r]
    if gt:
        out["gt_iou_temporal"] = float(np.mean([r["gt_on"] for r in gt]))
        out["gt_iou_independent"] = float(np.mean([r["gt_off"] for r in gt]))
    return out


def bench_throughput(d: Daemon, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """A 1080p pan as one sequence (temporal on and off) and as lone requests, each round beside a floor sum."""
    width, height = THROUGHPUT_SIZE
    photo = Image.open(REPO / "examples" / "coffee.jpg").convert("RGB")
    photo = np.asarray(photo.resize((width + 8 * args.frames, height + 4 * args.frames), Image.Resampling.LANCZOS))
    frames = [np.ascontiguousarray(photo[4 * k:4 * k + height, 8 * k:8 * k + width]) for k in range(args.frames)]
    rgba = [np.dstack([f, np.full((height, width), 255, np.uint8)]).tobytes() for f in frames]
    Image.fromarray(frames[0]).save(tmp / "frame.png")
    files = model_files([MODEL])
    ort_worker(MODEL, {"shipped": str(files[MODEL])}, tmp / "frame.png", [FLOOR, DAEMON_TODAY], 1, {"save_tensor": str(tmp / "t.npy")})
    times: dict[str, list[float]] = {"floor": [], "sequence": [], "sequence_off": [], "lone": []}
    with FloorRounds(MODEL, files, tmp / "t.npy") as floor, d.client("pyzmq") as c:
        c.remove_frames(rgba[:2], width, height, 4, "u8", model=MODEL)  # warm-up
        for _ in range(args.rounds):
            times["floor"].append(sum(floor.once() for _ in frames))
            for key, temporal in (("sequence", True), ("sequence_off", False)):
                t = time.perf_counter()
                c.remove_frames(rgba, width, height, 4, "u8", model=MODEL, temporal=temporal)
                times[key].append(time.perf_counter() - t)
            t = time.perf_counter()
            for f in rgba:
                c.remove(f, width, height, 4, "u8", model=MODEL)
            times["lone"].append(time.perf_counter() - t)
            print(f"  round: floor sum {times['floor'][-1]:.3f} s, " + ", ".join(
                f"{k} {v[-1]:.3f} s ({v[-1] / times['floor'][-1]:.3f}x)" for k, v in times.items() if k != "floor"),
                flush=True)
    out: dict[str, Any] = {"times": times, "floor_sum": min(times["floor"])}
    for key in ("sequence", "sequence_off", "lone"):
        ratios = [t / f for t, f in zip(times[key], times["floor"])]
        out[f"{key}_x_floor"] = min(ratios)
        out[f"{key}_x_floor_median"] = float(np.median(ratios))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="quality,throughput", help="quality and/or throughput")
    ap.add_argument("--frames", type=int, default=8, help="frames per sequence (default 8)")
    ap.add_argument("--ecssd", type=int, default=8, help="ECSSD photos to use when present (default 8)")
    ap.add_argument("--rounds", type=int, default=5, help="throughput rounds (default 5)")
    ap.add_argument("--server", type=Path, default=speed.SERVER,
                    help="the bgmask source tree the daemon runs (default this checkout's server/): run the "
                         "benchmark against the code before a change, then after it")
    args = ap.parse_args(argv)
    speed.SERVER = args.server.resolve()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="bgmask-flicker-") as name:
        tmp = Path(name)
        d = Daemon(MODEL, tmp / "daemon")
        try:
            results: dict[str, Any] = {}
            if "quality" in parts:
                print(f"flicker, {MODEL}, {args.frames} frames a sequence (x 1e-3: independent -> temporal):")
                with d.client("pyzmq") as c:
                    results.update(summarise(bench_quality(c, args)))
            if "throughput" in parts:
                print(f"throughput, {MODEL}, {args.frames} frames of {THROUGHPUT_SIZE[0]}x{THROUGHPUT_SIZE[1]} RGBA8:")
                tp = bench_throughput(d, args, tmp)
                results.update({"throughput_x_floor": tp["sequence_x_floor"],
                                "throughput_x_floor_median": tp["sequence_x_floor_median"],
                                "throughput_off_x_floor": tp["sequence_off_x_floor"],
                                "lone_x_floor": tp["lone_x_floor"], "lone_x_floor_median": tp["lone_x_floor_median"],
                                "floor_sum_s": tp["floor_sum"]})
        finally:
            d.stop()
    print("\nresults:")
    for key, value in results.items():
        target = TARGETS.get(key)
        verdict = "" if target is None else (" (target <= %g: %s)" % (target, "met" if value <= target else "MISSED")
                                             if key != "iou_vs_independent" else
                                             " (target >= %g: %s)" % (target, "met" if value >= target else "MISSED"))
        print(f"  {key:30} {value:.4f}{verdict}")
    if "gt_iou_temporal" in results:
        ok = results["gt_iou_temporal"] >= results["gt_iou_independent"] - 1e-3
        print(f"  ground truth: temporal {'no worse' if ok else 'WORSE'} than independent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
