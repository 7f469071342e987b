"""How much of a remove call is the client's own cost, for a 24 MP RGBA8 layer, per transport.

Starts a real daemon (`python -m bgmask serve`) with runtime/config dirs in a temporary directory and the
model cache from $BGMASK_CACHE_DIR (else the user's normal cache), then times remove calls with the
built-in ZMTP transport and with pyzmq. Columns:

  wall        the whole call as the caller sees it
  daemon      the daemon's own timings["total"] (preprocess, inference, refinement, encoding)
  outside     wall - daemon: transfer both ways, framing, (de)serialising, queueing, on both sides
  client CPU  CPU time this process spent in the call (all threads, libzmq's I/O thread included): the
              client's own cost (encode, send, receive, decode); waiting costs nothing here
  upload      a call the daemon refuses right after reading it (unknown model): 96 MB up, nothing back

Target: client CPU under 5 % of wall for both transports.

    python bench/client_overhead.py [--width 6000 --height 4000 --model u2netp --repeat 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent


def load_client() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bgmask_client", REPO / "plugins" / "common" / "bgmask_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layer(width: int, height: int) -> bytes:
    """A real photo scaled to the layer size, RGBA8 (the benchmark needs real image content, not noise)."""
    from PIL import Image

    img = Image.open(REPO / "examples" / "astronaut.jpg").convert("RGBA")
    return img.resize((width, height), Image.Resampling.BILINEAR).tobytes()


def start_daemon(root: Path, model: str) -> tuple:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "server"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["BGMASK_RUNTIME_DIR"] = str(root / "run")
    env["BGMASK_CONFIG_DIR"] = str(root / "config")
    env.pop("BGMASK_ENDPOINT", None)
    env.pop("BGMASK_TOKEN", None)
    log = open(root / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bgmask", "serve", "--default-model", model], env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    runtime_file = root / "run" / "daemon.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the daemon exited: " + (root / "daemon.log").read_text(errors="replace"))
        try:
            record = json.loads(runtime_file.read_text())
            if record.get("pid") == proc.pid:
                return proc, record["endpoint"], record["token"]
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the daemon did not start within 120 s")


def measure(bc: ModuleType, transport: str, endpoint: str, token: str, pixels: bytes, width: int, height: int,
            model: str, repeat: int) -> Dict[str, float]:
    client = bc.Client(endpoint=endpoint, token=token, transport=transport, timeout=120)
    client.remove(pixels, width, height, 4, "u8", model=model)  # warm-up: model loaded, connection open
    rows: List[Dict[str, float]] = []
    for _ in range(repeat):
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = client.remove_full(pixels, width, height, 4, "u8", model=model)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert len(result.mask) == width * height
        rows.append({"wall": wall, "daemon": result.header["timings"]["total"], "cpu": cpu})
    uploads = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            client.remove(pixels, width, height, 4, "u8", model="no-such-model")
        except bc.BgmaskError as exc:
            assert exc.code == "unknown_model", exc
        uploads.append(time.perf_counter() - t0)
    client.close()
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    median["upload"] = statistics.median(uploads)
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--model", default="u2netp", help="the fastest model makes the client's share largest")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    bc = load_client()
    transports = ["builtin"] + (["pyzmq"] if bc.HAVE_PYZMQ else [])
    pixels = layer(args.width, args.height)
    print("%dx%d RGBA8 (%.1f MP, %d MB), model %s, median of %d calls"
          % (args.width, args.height, args.width * args.height / 1e6, len(pixels) // 10**6, args.model, args.repeat))
    with tempfile.TemporaryDirectory(prefix="bgmask-bench-") as tmp:
        proc, endpoint, token = start_daemon(Path(tmp), args.model)
        try:
            results = {t: measure(bc, t, endpoint, token, pixels, args.width, args.height, args.model, args.repeat)
                       for t in transports}
            bc.Client(endpoint=endpoint, token=token).shutdown()
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print("%-9s %8s %8s %16s %17s %8s" % ("transport", "wall s", "daemon s", "outside s (%)", "client CPU s (%)",
                                            "upload s"))
    for transport, r in results.items():
        outside = r["wall"] - r["daemon"]
        print("%-9s %8.3f %8.3f %8.3f (%4.1f%%) %9.3f (%4.1f%%) %8.3f"
              % (transport, r["wall"], r["daemon"], outside, 100 * outside / r["wall"], r["cpu"],
                 100 * r["cpu"] / r["wall"], r["upload"]))
    worst = max(100 * r["cpu"] / r["wall"] for r in results.values())
    print("client CPU share, worst transport: %.1f%% (target < 5%%)" % worst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
