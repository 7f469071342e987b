"""ONNX Runtime alone, in its own process: the floor, and the session settings proposed for the daemon.

Run by bench/speed.py (`python bench/_ort_worker.py JSON`); prints one JSON line. Several configurations
run interleaved (one inference of each per round), because this machine is shared and a slow spell then
hits every configuration alike; the minimum over rounds is the figure, the median shows the noise. With
`serve` true it runs a round for each line "run" on its standard input instead, printing each round's wall
times as a JSON line: speed.py interleaves those rounds with the calls it times elsewhere.

A configuration is a map: `file` "shipped" (the cached model file as downloaded) or "prepared" (rewritten
by bgmask.models.modelprep); `daemon` true takes the daemon's own session from its SessionPool (on the provider of
$BGMASK_BENCH_DEVICE, default cpu, as is the floor) instead (whatever
file and options the daemon runs today); otherwise ORT options: `level` (disable/basic/extended/all), `threads` (0 = ORT default),
`spin` (bool), `daz` (denormals as zero), `arena`, `pattern` (bool), `shrink` (release the arena after each run), `trim` (glibc malloc_trim(0) after each run), `outputs`
("first" or "all", as rembg asks). The input tensor comes from the daemon's own MattingSession.prepare, so
one `daemon` configuration is needed unless a saved `tensor` is given."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnxruntime as ort
from PIL import Image

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # the bgmask tree under test comes from PYTHONPATH (set by speed.py)

from bgmask.mask import pixels  # noqa: E402
from bgmask.models import providers  # noqa: E402
from bgmask.models.catalog import Catalog  # noqa: E402
from bgmask.protocol import ImageSpec  # noqa: E402
from bgmask.models.pool import SessionPool  # noqa: E402
from bgmask.models.sessions import MattingSession  # noqa: E402

LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def session_options(cfg: dict[str, Any]) -> tuple[ort.SessionOptions, Optional[ort.RunOptions]]:
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[cfg.get("level", "all")]
    so.intra_op_num_threads = cfg.get("threads", 0)
    so.log_severity_level = 3
    if not cfg.get("spin", True):
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if cfg.get("daz"):
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    so.enable_cpu_mem_arena = cfg.get("arena", True)
    so.enable_mem_pattern = cfg.get("pattern", True)
    run = None
    if cfg.get("shrink"):
        run = ort.RunOptions()
        run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return so, run


LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
# speed.py --device: the daemon's choice of provider; the floor uses it with ONNX Runtime's default options.
CHOICE = providers.choose(os.environ.get("BGMASK_BENCH_DEVICE", "cpu"), 0)


class Runner:
    """One configuration: a session and how to call it."""

    def __init__(self, cfg: dict[str, Any], files: dict[str, str], spec: Any) -> None:
        self.cfg = cfg
        path = files[cfg.get("file", "shipped")]
        t = time.perf_counter()
        if cfg.get("daemon"):  # the very session a CPU daemon runs (its model file, its options)
            self.daemon: Optional[MattingSession] = SessionPool(CHOICE, 1 << 40, 0).get(spec.name)
            self.session = self.daemon.session
        else:
            self.daemon = None
            so, self.run_options = session_options(cfg)
            self.session = ort.InferenceSession(path, so, providers=list(CHOICE.providers))
        self.load_s = time.perf_counter() - t
        self.input = self.session.get_inputs()[0].name
        self.outputs = None if cfg.get("outputs") == "all" else [self.session.get_outputs()[0].name]

    def __call__(self, tensor: np.ndarray) -> np.ndarray:
        if self.daemon is not None:
            return self.daemon.infer(tensor)
        out = self.session.run(self.outputs, {self.input: tensor}, self.run_options)[0]
        if self.cfg.get("trim"):
            LIBC.malloc_trim(0)
        return np.asarray(out, dtype=np.float32).reshape(out.shape[-2], out.shape[-1])


def model_tensor(session: MattingSession, image: Path) -> np.ndarray:
    """The input exactly as the daemon builds it from an RGBA8 image: its resize, its normalisation."""
    img = Image.open(image).convert("RGBA")
    ispec = ImageSpec(img.width, img.height, 4, "u8", img.width * 4, False)
    return session.prepare(pixels.model_rgb(img.tobytes(), ispec, session.size))


def normalised(pred: np.ndarray) -> np.ndarray:
    """The daemon's min-max normalisation of a prediction: what the mask is made from."""
    lo, hi = float(pred.min()), float(pred.max())
    return (pred - lo) / max(hi - lo, 1e-12)


def one_round(runners: list[Runner], tensor: np.ndarray) -> list[tuple[float, float]]:
    """One inference of each configuration in turn: (wall, process CPU) seconds of each."""
    out = []
    for r in runners:
        c, t = time.process_time(), time.perf_counter()
        r(tensor)
        out.append((time.perf_counter() - t, time.process_time() - c))
    return out


def main() -> None:
    args = json.loads(sys.argv[1])
    spec = Catalog.load().get(args["model"])
    runners = [Runner(cfg, args["files"], spec) for cfg in args["configs"]]
    loaded = status("VmRSS:")
    if "tensor" in args:  # memory runs: one configuration per process, no daemon session to build it
        tensor = np.load(args["tensor"])
    else:
        tensor = model_tensor(next(r.daemon for r in runners if r.daemon is not None), Path(args["image"]))
        if "save_tensor" in args:
            np.save(args["save_tensor"], tensor)
    first = [r(tensor) for r in runners]  # warm-up, and the outputs to compare
    if "save_output" in args:
        np.save(args["save_output"], first[0])
    if args.get("serve"):
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() != "run":
                break
            print(json.dumps({"times": [w for w, _ in one_round(runners, tensor)]}), flush=True)
        return
    wall: list[list[float]] = [[] for _ in runners]
    cpu: list[list[float]] = [[] for _ in runners]
    for _ in range(args["rounds"]):
        for i, (w, c) in enumerate(one_round(runners, tensor)):
            wall[i].append(w)
            cpu[i].append(c)
    ref = normalised(first[0])
    results = []
    for r, w, c, out in zip(runners, wall, cpu, first):
        results.append({
            "config": r.cfg, "load_s": r.load_s, "min_s": min(w), "median_s": float(np.median(w)), "times": w,
            "cpu_min_s": min(c), "cpu_median_s": float(np.median(c)),
            "max_diff_255": float(np.abs(normalised(out) - ref).max() * 255.0),
        })
    print(json.dumps({"model": args["model"], "results": results, "loaded_rss": loaded, "rss_after": status("VmRSS:"),
                      "peak_rss": status("VmHWM:"), "ort": ort.__version__}))


if __name__ == "__main__":
    main()
