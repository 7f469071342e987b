"""The GPU device check: does the daemon really run on the GPU, which cuDNN algorithm search to default to, and
how far bgmask end to end is from the GPU floor (session.run on the prepared tensor) at 1/12/24 MP.

    python bench/gpu_check.py [--device gpu] [--repeat 5] [--out DIR]

1. The runtime: ONNX Runtime's build, the providers it offers, the installed runtime distributions, the card.
2. The daemon's provider choice (bgmask.models.providers.choose): on failure its one sentence, and exit 2.
3. The floor of each model (session.run alone) with ONNX Runtime's defaults for the provider and with the daemon's GPU options under
   each `--cudnn-conv-algo-search` (first run, which includes the search, and the minimum of the others).
4. `bench/speed.py --device DEVICE --parts floor,bgmask`: bgmask end to end against its interleaved floor, peak
   RSS; while it runs, nvidia-smi is sampled for the GPU memory of every process of ours.
5. The ratios: end to end / floor, and end to end / (floor + transfer), the transfer being the client's wall time
   less the daemon's own `timings.total` (the issue's target: IS-Net at 24 MP within 1.5x of the latter).

Everything goes to DIR/gpu-check-<time>.json as well (default bench/results). With --device cpu it runs the same
steps on the CPU, which is how it is tested without a GPU."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
SERVER = BENCH.parent / "server"
sys.path.insert(0, str(SERVER))

import numpy as np  # noqa: E402

from bgmask.models import providers  # noqa: E402
from bgmask.models.catalog import Catalog  # noqa: E402
from bgmask.errors import BgmaskError  # noqa: E402

MODELS = ("u2netp", "isnet-general-use")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def card() -> Optional[str]:
    """The GPU's name, driver and memory as nvidia-smi reports them (None without it)."""
    if not shutil.which("nvidia-smi"):
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=30)
    return r.stdout.strip() or r.stderr.strip()


class GpuMemory:
    """Peak GPU memory (MiB) of each process, sampled from nvidia-smi every half second while in use."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                r = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in r.stdout.splitlines():
                try:
                    pid, used = (int(x) for x in line.split(","))
                except ValueError:
                    continue
                self.peak[pid] = max(self.peak.get(pid, 0), used)

    def __enter__(self) -> "GpuMemory":
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def runtime_report() -> dict[str, Any]:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "cuda_build": providers.cuda_build_version(ort),
            "available": ort.get_available_providers(), "distributions": providers.installed_runtimes(), "card": card()}


def floors(model: str, choice: providers.ProviderChoice, repeat: int) -> dict[str, Any]:
    """session.run of the shipped file on a fixed random input of the model's shape (the time does not depend on
    the values; speed.py's floor uses the daemon's own tensor): ONNX Runtime's defaults for the provider, then
    the daemon's options under each cuDNN search (CUDA, ROCm)."""
    import onnxruntime as ort
    from bgmask.models import download

    spec = Catalog.load().get(model)
    path = download.ensure_model(spec)
    rng = np.random.default_rng(0)
    tensor = rng.random((1, 3, spec.input_size[1], spec.input_size[0]), dtype=np.float32)
    configs: dict[str, list] = {"ORT defaults": list(choice.providers)}
    if choice.provider in (providers.CUDA, providers.ROCM):
        for search in providers.CONV_ALGO_SEARCHES:
            gpu = providers.GpuSettings(choice.gpu.mem_limit, choice.gpu.arena_extend, search, choice.gpu.device_id)
            configs[f"daemon options, {search}"] = [(p, providers.provider_options(p, gpu)) for p in choice.providers]
    out = {}
    for name, provider_list in configs.items():
        so = ort.SessionOptions()
        so.log_severity_level = 3
        t = time.perf_counter()
        session = ort.InferenceSession(str(path), so, providers=provider_list)
        load = time.perf_counter() - t
        feed = {session.get_inputs()[0].name: tensor}
        first_out = [session.get_outputs()[0].name]
        t = time.perf_counter()
        session.run(first_out, feed)
        first = time.perf_counter() - t
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            session.run(first_out, feed)
            times.append(time.perf_counter() - t)
        out[name] = {"provider": session.get_providers()[0], "load_s": load, "first_s": first, "min_s": min(times),
                     "median_s": float(np.median(times))}
        log(f"  {model} {name} on {out[name]['provider']}: load {load:.2f} s, first {first:.3f} s, min {min(times):.4f} s")
        del session
    return out


def ratios(speed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model and size: end to end (pyzmq, refinement on), its floor, the transfer, and the two ratios."""
    out: dict[str, dict[str, Any]] = {}
    for model, m in speed["by_model"].items():
        for label, b in (m.get("bgmask") or {}).items():
            run = b["runs"].get("pyzmq/refine")
            floor = (b.get("floor") or {}).get("min_s") or m.get("floor", {}).get("floor", {}).get("min_s")
            if not run or not floor:
                continue
            e2e = run["min_s"]
            daemon_total = (run.get("timings") or {}).get("total")
            transfer = max(0.0, e2e - daemon_total) if daemon_total is not None else None
            out.setdefault(model, {})[label] = {
                "e2e_s": e2e, "floor_s": floor, "transfer_s": transfer, "e2e/floor": e2e / floor,
                "e2e/(floor+transfer)": e2e / (floor + transfer) if transfer is not None else None,
                "peak_rss": b.get("peak_rss"), "timings": run.get("timings"),
            }
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("gpu", "auto", "cpu"), default="gpu")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sizes", default="1mp,12mp,24mp")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per figure (default 5)")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="folder for the JSON (default bench/results)")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    started = datetime.datetime.now()
    res: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "device": args.device,
                           "runtime": runtime_report()}
    log(f"runtime: {res['runtime']}")
    try:
        choice = providers.choose(args.device, 0)
    except BgmaskError as exc:
        print(f"gpu_check: {exc.message}")
        return 2
    res["choice"] = {"provider": choice.provider, "device": choice.device, "note": choice.note}
    log(f"the daemon's choice: {choice.provider}" + (f" ({choice.note})" if choice.note else ""))
    res["floors"] = {m: floors(m, choice, args.repeat) for m in models}
    args.out.mkdir(parents=True, exist_ok=True)
    speed_json = args.out / f"speed-{args.device}-{started.strftime('%Y-%m-%dT%H-%M-%S')}.json"
    cmd = [sys.executable, str(BENCH / "speed.py"), "--device", args.device, "--parts", "floor,bgmask", "--models",
           ",".join(models), "--sizes", args.sizes, "--repeat", str(args.repeat), "--quiet-wait", "0", "--out", str(speed_json)]
    log(" ".join(cmd))
    with GpuMemory() as gpu_memory:
        done = subprocess.run(cmd, timeout=3600)
    if done.returncode != 0:
        print(f"gpu_check: bench/speed.py failed with status {done.returncode}")
        return 1
    speed = json.loads(speed_json.read_text())
    res["gpu_memory_peak_mib"] = gpu_memory.peak
    res["ratios"] = ratios(speed)
    res["speed_json"] = str(speed_json)
    print(f"\n{res['runtime']['card'] or 'no NVIDIA card'}; onnxruntime {res['runtime']['onnxruntime']}, provider {choice.provider}")
    for model, f in res["floors"].items():
        print(f"{model} floors: " + "; ".join(f"{k} {v['min_s'] * 1000:.1f} ms (first {v['first_s'] * 1000:.0f} ms)" for k, v in f.items()))
    print(f"{'model':<18} {'size':<5} {'e2e':>8} {'floor':>8} {'transfer':>9} {'e2e/floor':>9} {'e2e/(floor+transfer)':>21} {'peak RSS':>9}")
    for model, sizes in res["ratios"].items():
        for label, r in sizes.items():
            both = r["e2e/(floor+transfer)"]
            print(f"{model:<18} {label:<5} {r['e2e_s']:8.3f} {r['floor_s']:8.3f} {r['transfer_s'] or 0:9.3f} "
                  f"{r['e2e/floor']:9.2f} {both if both is not None else float('nan'):21.2f} {(r['peak_rss'] or 0) / 2**20:7.0f} MiB")
    if gpu_memory.peak:
        print("peak GPU memory by process (MiB): " + ", ".join(f"{pid}: {mib}" for pid, mib in sorted(gpu_memory.peak.items())))
    out = args.out / f"gpu-check-{started.strftime('%Y-%m-%dT%H-%M-%S')}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
