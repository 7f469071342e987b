"""Soak run (issue 9): two clients in parallel send 300 remove requests each to one daemon: mixed sizes (from
thumbnails to 3000-wide photos), mostly u2netp and some IS-Net, every input sample type, alpha, row padding,
regions, options, output types, and some requests cancelled part-way. Requires zero failures, every reply
matching its request, and daemon RSS growth under 10 % from the end of the warm-up to the end.

Each request's width is unique across the whole run and its height is drawn per request, so a mask of the
right size proves the reply belongs to its request; the reply's model and the mask's value range are checked
too. One client uses pyzmq, the other the stdlib transport the editors use.

    python bench/soak.py                       # 2 x 300 requests
    python bench/soak.py --requests 50 --isnet-share 0.05
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import conftest  # noqa: E402  (puts server/ on sys.path)
from bgmask.client.loader import load_client  # noqa: E402
from fuzz_long import model_cache  # noqa: E402

SAMPLE = {"u8": np.dtype(np.uint8), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}
PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg")
WIDTH_BANDS = ((96, 0.6), (900, 0.3), (2400, 0.1))  # (first width of the band, share): small, medium, large


@dataclass
class Request:
    uid: int
    width: int
    height: int
    model: str
    channels: int
    sample_type: str
    out: str
    stride_pad: int
    options: dict
    cancel_after: Optional[float]  # seconds after sending, or None


@dataclass
class Tally:
    ok: int = 0
    cancelled: int = 0
    failures: list = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: defaultdict(list))


def plan(client: int, clients: int, n: int, rng: random.Random, isnet_share: float, cancel_share: float) -> list[Request]:
    """n requests for one client; uid = i * clients + client keeps widths unique across all clients."""
    requests = []
    for i in range(n):
        uid = i * clients + client
        band = 2 if i == 0 else rng.choices(range(3), [w for _, w in WIDTH_BANDS])[0]  # warm-up starts large
        width = WIDTH_BANDS[band][0] + uid  # bands are 800+ apart and uid < 600: unique widths
        height = max(32, int(width * rng.uniform(0.5, 1.5)))
        isnet = (i == 1 and client == 0) or rng.random() < isnet_share
        options: dict[str, Any] = {"refine": rng.random() < 0.8}
        if rng.random() < 0.15:
            options["region"] = [width // 4, height // 4, width // 2, height // 2]
        if rng.random() < 0.1:
            options["decontaminate"] = True
        if rng.random() < 0.2:
            options.update(hardness=round(rng.uniform(0, 1), 2), feather=round(rng.uniform(0, 4), 1))
        requests.append(Request(
            uid, width, height, "isnet-general-use" if isnet else "u2netp", rng.choice([3, 3, 4, 1, 2]),
            rng.choice(["u8", "u8", "u16", "f32"]), rng.choice(["u8", "u8", "u16", "f32"]),
            rng.choice([0, 0, 0, 16]), options, rng.uniform(0.0, 1.0) if rng.random() < cancel_share else None,
        ))
    return requests


_photos: dict[str, Any] = {}


def pixels(req: Request) -> tuple[bytes, Optional[int]]:
    """The request's image: a photo resized to its unique size, in its layout and sample type."""
    from PIL import Image

    name = PHOTOS[req.uid % len(PHOTOS)]
    if name not in _photos:
        _photos[name] = Image.open(conftest.example(name)).convert("RGB")
    rgb = np.asarray(_photos[name].resize((req.width, req.height), Image.Resampling.BILINEAR), np.float32) / 255
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    colour = rgb if req.channels >= 3 else gray[..., None]
    if req.channels in (2, 4):
        alpha = np.ones_like(gray)
        alpha[: req.height // 10, : req.width // 10] = 0  # a transparent corner: its mask must be 0 there
        colour = np.concatenate([colour, alpha[..., None]], axis=2)
    if req.sample_type == "f32":
        data = colour.astype("<f4")
    else:
        scale = 255 if req.sample_type == "u8" else 65535
        data = np.round(colour * scale).astype(SAMPLE[req.sample_type])
    rows = data.reshape(req.height, -1).view(np.uint8)
    if not req.stride_pad:
        return rows.tobytes(), None
    padded = np.zeros((req.height, rows.shape[1] + req.stride_pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    return padded.tobytes(), padded.shape[1]


def check(req: Request, result: Any) -> Optional[str]:
    """Why this reply does not answer this request, or None."""
    header = result.header
    if header.get("mask") != {"width": req.width, "height": req.height, "sample_type": req.out}:
        return f"mask header {header.get('mask')} for a {req.width}x{req.height} {req.out} request"
    if header.get("model") != req.model:
        return f"model {header.get('model')} for a {req.model} request"
    mask = np.frombuffer(result.mask, SAMPLE[req.out])
    if mask.size != req.width * req.height:
        return f"{mask.size} mask samples for {req.width}x{req.height}"
    top = 1.0 if req.out == "f32" else np.iinfo(SAMPLE[req.out]).max
    if not (mask.min() >= 0 and mask.max() <= top):
        return f"mask values outside [0, {top}]"
    if req.channels in (2, 4):
        corner = mask.reshape(req.height, req.width)[: req.height // 10, : req.width // 10]
        if corner.size and corner.max() != 0:
            return "transparent pixels got a non-zero mask"
    if req.options.get("decontaminate"):
        if len(result.extra) != 1:
            return f"{len(result.extra)} colour frames with decontaminate"
    elif result.extra:
        return "an extra frame without decontaminate"
    return None


def run_client(bc: Any, d: conftest.RunningDaemon, transport: str, requests: list[Request], tally: Tally,
               warm: int, barrier: threading.Barrier) -> None:
    client = bc.Client(endpoint=d.endpoint, token=d.token, timeout=120.0, transport=transport)
    for i, req in enumerate(requests):
        if i == warm:
            barrier.wait()  # the main thread reads the warm RSS while everyone is idle
            barrier.wait()
        data, stride = pixels(req)
        sent = time.monotonic()
        deadline = sent + req.cancel_after if req.cancel_after is not None else None
        cancel = (lambda: time.monotonic() > deadline) if deadline is not None else None
        try:
            result = client.remove_full(data, req.width, req.height, req.channels, req.sample_type, model=req.model,
                                        options=req.options, out_sample_type=req.out, stride=stride, cancel=cancel)
        except bc.BgmaskError as exc:
            if exc.code == "cancelled" and cancel is not None:
                tally.cancelled += 1
            else:
                tally.failures.append(f"request {req.uid} ({req.width}x{req.height} {req.model}): {exc.code}: {exc.message}")
            continue
        except Exception as exc:  # anything else is a failure too, and must not stop this client
            tally.failures.append(f"request {req.uid}: {type(exc).__name__}: {exc}")
            continue
        why = check(req, result)
        if why:
            tally.failures.append(f"request {req.uid}: {why}")
        else:
            tally.ok += 1
            tally.seconds[req.model].append(time.monotonic() - sent)
    client.close()


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per client (default 300)")
    parser.add_argument("--isnet-share", type=float, default=0.1, help="share of IS-Net requests (default 0.1)")
    parser.add_argument("--cancel-share", type=float, default=0.1, help="share of requests cancelled part-way (default 0.1)")
    parser.add_argument("--warm-up", type=float, default=0.15, help="share of each client's requests before the first RSS reading")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    transports = ("pyzmq", "builtin")
    plans = [plan(k, len(transports), args.requests, rng, args.isnet_share, args.cancel_share) for k in range(len(transports))]
    warm = max(2, int(args.requests * args.warm_up))
    bc = load_client()
    with tempfile.TemporaryDirectory(prefix="bgmask-soak-") as tmp:
        dirs = {"BGMASK_RUNTIME_DIR": f"{tmp}/run", "BGMASK_CONFIG_DIR": f"{tmp}/config", "BGMASK_CACHE_DIR": str(model_cache())}
        d = conftest.start_daemon(dirs, "--default-model", "u2netp")
        tallies = [Tally() for _ in transports]
        barrier = threading.Barrier(len(transports) + 1)
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(1.0):
                samples.append(rss_mib(d.pid))

        threading.Thread(target=sample, daemon=True).start()
        started = time.monotonic()
        threads = [threading.Thread(target=run_client, args=(bc, d, t, p, tally, warm, barrier))
                   for t, p, tally in zip(transports, plans, tallies)]
        for t in threads:
            t.start()
        barrier.wait()
        warm_rss = rss_mib(d.pid)
        barrier.wait()
        for t in threads:
            t.join()
        done.set()
        seconds = time.monotonic() - started
        end_rss, peak = rss_mib(d.pid), rss_mib(d.pid, "VmHWM")
        status = d.stop()
        log = d.log()

    growth = end_rss / warm_rss - 1
    failures = [f for tally in tallies for f in tally.failures]
    print(f"soak (seed {seed}): {len(transports)} clients x {args.requests} requests in {seconds:.0f} s")
    for transport, tally, p in zip(transports, tallies, plans):
        asked = Counter(r.model for r in p)
        cancels = sum(r.cancel_after is not None for r in p)
        print(f"  {transport:8} ok {tally.ok}, cancelled {tally.cancelled} (of {cancels} with a cancel), "
              f"failed {len(tally.failures)}; models asked: {dict(asked)}")
    for model in sorted({m for t in tallies for m in t.seconds}):
        times = [s for t in tallies for s in t.seconds[model]]
        print(f"  {model:18} {len(times)} masks, median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    print(f"  daemon RSS after warm-up {warm_rss:.0f} MiB, at the end {end_rss:.0f} MiB ({100 * growth:+.1f} %), "
          f"peak {peak:.0f} MiB, sampled max {max(samples, default=0):.0f} MiB; exit status {status}")
    for f in failures[:30]:
        print(f"  FAILURE {f}")
    if failures:  # the daemon's side of the story: its tracebacks
        errors = [block for block in log.split("\n20") if " ERROR " in block.split("\n", 1)[0]]
        for block in errors[:3]:
            print("  daemon log: 20" + block.strip().replace("\n", "\n    "))
    ok = not failures and growth < 0.10 and status == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
