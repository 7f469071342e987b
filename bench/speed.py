"""bgmask speed benchmark: ONNX Runtime's floor, bgmask end to end, rembg, cold CLI starts and peak memory.

One command, from the repository root:

    python bench/speed.py                      # everything but the optimisation experiments (~15 min)
    python bench/speed.py --experiments        # also the ORT session experiments behind the proposals
    python bench/speed.py --models u2netp --sizes 1mp --parts floor,bgmask
    python bench/speed.py --device gpu --parts floor,bgmask   # on a GPU (bench/gpu_check.sh runs this)

It prints a table with the ratios the issue sets targets for and writes everything it measured to
bench/results/speed-<date>.json. rembg runs from its own virtual environment (bench/rembg_env.py) with our
cached model files and the same onnxruntime version. See bench/README.md for what each figure means.

Timings are the minimum of several runs after a warm-up: this machine is shared, and a slow spell only
ever adds time, so the minimum is the closest to what the code costs; medians are kept in the JSON."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SERVER = REPO / "server"
sys.path.insert(0, str(SERVER))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
from PIL import Image  # noqa: E402

import rembg_env  # noqa: E402
from _ort_worker import normalised  # noqa: E402
from bgmask import paths  # noqa: E402
from bgmask.models import download, modelprep  # noqa: E402
from bgmask.models.catalog import Catalog  # noqa: E402
from bgmask.client.loader import load_client  # noqa: E402

MODELS = ("u2netp", "isnet-general-use")
SIZES = {"1mp": (1224, 816), "12mp": (4242, 2828), "24mp": (6000, 4000)}  # the photo's 3:2, like a camera's
PHOTO = REPO / "examples" / "coffee.jpg"
PARTS = ("floor", "bgmask", "rembg", "cold", "experiments")
DEFAULT_REPEAT = 5
TRANSPORTS = ("builtin", "pyzmq")
OTHER_QUALITIES = ("fast", "best")  # the request option `quality`; the default (balanced) is "pyzmq/refine"
TARGETS = {  # from the issue: (figure, model) -> upper bound of the ratio
    ("e2e_24mp/floor", "isnet-general-use"): 1.10, ("e2e_24mp/floor", "u2netp"): 1.5,
    ("inference/floor", "isnet-general-use"): 0.85, ("inference/floor", "u2netp"): 0.85,
    ("warm_cli/rembg_cli", "u2netp"): 0.3, ("warm_cli/rembg_cli", "isnet-general-use"): 0.45,
    ("peak_rss_24mp/rembg", "isnet-general-use"): 0.6,
}
RESULTS = BENCH / "results"
RELEASE_AFTER_S = 5.0  # `bgmask serve --release-memory-after` default
DEVICE = "auto"  # `bgmask serve --device` of the daemons, and the provider of the floor (--device)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ set-up
def make_images(sizes: list[str]) -> dict[str, Path]:
    """The example photo upscaled (Lanczos) to each size as an RGBA8 PNG, made once under bench/results."""
    out = RESULTS / "images"
    out.mkdir(parents=True, exist_ok=True)
    photo = Image.open(PHOTO).convert("RGBA")
    paths = {}
    for label in sizes:
        w, h = SIZES[label]
        path = out / f"{PHOTO.stem}-{label}-{w}x{h}.png"
        if not path.exists():
            log(f"making {path.name}")
            photo.resize((w, h), Image.Resampling.LANCZOS).save(path, compress_level=1)
        paths[label] = path
    return paths


def model_files(models: list[str]) -> dict[str, Path]:
    """The model files as the daemon uses them, fetched by the project's model manager if missing."""
    catalog = Catalog.load()
    return {name: download.ensure_model(catalog.get(name)) for name in models}


def prepared_files(files: dict[str, Path]) -> dict[str, Path]:
    """The daemon's CPU rewrite of each model file (bgmask.models.modelprep), cached under bench/results."""
    out = RESULTS / "prepared"
    out.mkdir(parents=True, exist_ok=True)
    return {name: modelprep.prepare(path, out / f"{name}.cpu{modelprep.VERSION}.onnx", log=log)
            for name, path in files.items()}


QUIET_WAIT = 180.0
BUSY_LIMIT = 0.25  # fraction of all cores busy (with everything of ours idle) that still counts as quiet


def busy_fraction(seconds: float = 1.0) -> float:
    """How busy all cores were over the next `seconds` (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(what: str) -> float:
    """Let other people's work pass before a timed part (shared machine): returns the busy fraction seen last."""
    deadline = time.monotonic() + QUIET_WAIT
    quiet = 0
    while True:
        busy = busy_fraction()
        quiet = quiet + 1 if busy < BUSY_LIMIT else 0
        if quiet >= 3 or time.monotonic() > deadline:
            if quiet < 3:
                log(f"  the machine is still busy ({busy:.0%} of its cores) before {what}; measuring anyway")
            return busy


def run_json(cmd: list[str], env: Optional[dict[str, str]] = None, timeout: float = 1800) -> dict:
    """Run a worker process and parse the JSON line it prints last."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def proc_status(pid: int, key: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def server_env(dirs: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment of a daemon, CLI or worker process running the bgmask source tree under test."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SERVER), os.environ.get("PYTHONPATH")])),
               BGMASK_BENCH_DEVICE=DEVICE)
    for key in ("BGMASK_ENDPOINT", "BGMASK_TOKEN"):
        env.pop(key, None)
    env.update(dirs or {})
    return env


def fresh_dirs(root: Path) -> dict[str, str]:
    """Runtime and config dirs of our own (no daemon of the user's is touched); the model cache is shared."""
    run, config = root / "run", root / "config"
    run.mkdir(parents=True, mode=0o700)
    config.mkdir(parents=True)
    return {"BGMASK_RUNTIME_DIR": str(run), "BGMASK_CONFIG_DIR": str(config),
            "BGMASK_CACHE_DIR": str(paths.cache_dir())}


def wall_min(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def stats(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {"min_s": ordered[0], "median_s": ordered[len(ordered) // 2], "times": times}


# ------------------------------------------------------------------------------------------ the daemon
class RssSampler:
    """Samples a process's VmRSS every 20 ms: the peak of one phase, which VmHWM (peak since start) can't give."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proc_status(self.pid, "VmRSS:") or 0)

    def __enter__(self) -> "RssSampler":
        self.peak = proc_status(self.pid, "VmRSS:") or 0
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


class Daemon:
    """A real `bgmask serve` of this source tree, in its own runtime/config dirs, with `model` loaded."""

    def __init__(self, model: str, root: Path) -> None:
        self.model = model
        self.dirs = fresh_dirs(root)
        self.env = server_env(self.dirs)
        self.log = open(root / "daemon.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "bgmask", "serve", "--default-model", model,
                                      "--idle-unload", "0", "--preload-delay", "0", "--device", DEVICE],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        runtime_file = Path(self.dirs["BGMASK_RUNTIME_DIR"]) / "daemon.json"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the daemon did not start; log: {(root / 'daemon.log').read_text()[-2000:]}")
            try:
                record = json.loads(runtime_file.read_text())
                if record.get("pid") == self.proc.pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        self.endpoint, self.token = record["endpoint"], record["token"]
        with self.client("pyzmq") as c:
            while {m["name"]: m["state"] for m in c.status()["models"]}.get(model) != "loaded":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{model} did not load within 120 s")
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, transport: str) -> Any:
        return load_client().Client(self.endpoint, self.token, timeout=300, autostart=False, transport=transport)

    def rss(self) -> Optional[int]:
        return proc_status(self.pid, "VmRSS:")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                with self.client("pyzmq") as c:
                    c.shutdown()
                self.proc.wait(30)
            except Exception:
                self.proc.terminate()
                self.proc.wait(30)
        self.log.close()


def rgba(path: Path) -> tuple[bytes, int, int]:
    img = Image.open(path)
    img.load()
    return img.tobytes(), img.width, img.height


def bench_bgmask(model: str, label: str, image: Path, repeat: int, tmp: Path,
                 floor: Optional[FloorRounds] = None) -> dict[str, Any]:
    """bgmask end to end against a warm daemon, a fresh one per size so its peak RSS belongs to that size.
    The ways (transport x refinement, and the other `quality` values) run interleaved, one call of each per round, so that a slow spell
    of this shared machine hits them alike instead of spoiling one of them whole; with `floor`, each round
    also takes a floor run first (its minimum is this size's floor)."""
    data, w, h = rgba(image)
    daemon = Daemon(model, tmp / f"daemon-{model}-{label}")
    try:
        time.sleep(0.5)
        idle = daemon.rss()
        out: dict[str, Any] = {"width": w, "height": h, "idle_rss": idle, "runs": {}}
        ways: list[tuple[str, Any]] = [(transport, refine) for transport in TRANSPORTS for refine in (True, False)]
        ways += [("pyzmq", quality) for quality in OTHER_QUALITIES]  # what the non-default qualities cost
        key = {way: f"{way[0]}/{way[1] if isinstance(way[1], str) else 'refine' if way[1] else 'plain'}" for way in ways}
        with RssSampler(daemon.pid) as sampler, contextlib.ExitStack() as stack:
            clients = {transport: stack.enter_context(daemon.client(transport)) for transport in TRANSPORTS}

            def call(way: tuple[str, Any]) -> Any:
                options = {"quality": way[1]} if isinstance(way[1], str) else {"refine": way[1]}
                return clients[way[0]].remove_full(data, w, h, 4, "u8", model=model, options=options)

            for way in ways:
                assert len(call(way).mask) == w * h  # warm-up: first touch of buffers of this size
            busy = wait_quiet(f"bgmask {model} {label}")
            times: dict[tuple[str, Any], list[float]] = {way: [] for way in ways}
            best: dict[tuple[str, Any], Any] = {}
            floor_times: list[float] = []
            for _ in range(repeat):
                if floor is not None:
                    floor_times.append(floor.once())
                for way in ways:
                    t = time.perf_counter()
                    result = call(way)
                    times[way].append(time.perf_counter() - t)
                    if times[way][-1] == min(times[way]):
                        best[way] = result
            if floor_times:
                out["floor"] = stats(floor_times)
                log(f"  floor {model}, interleaved with {label}: {min(floor_times):.3f} s")
            for way in ways:
                out["runs"][key[way]] = dict(stats(times[way]), timings=best[way].header.get("timings"), busy_before=busy)
                log(f"  bgmask {model} {label} {key[way]}: {min(times[way]):.3f} s  {best[way].header.get('timings')}")
        out["peak_rss_requests"] = sampler.peak
        out["peak_rss"] = proc_status(daemon.pid, "VmHWM:")
        out["rss_right_after"] = daemon.rss()
        time.sleep(RELEASE_AFTER_S + 1.5)  # the daemon gives inference memory back once idle this long
        out["rss_after"] = daemon.rss()
    finally:
        daemon.stop()
    return out


# ------------------------------------------------------------------------------------------ the others
FLOOR = {"name": "floor", "file": "shipped"}  # ORT defaults on the shipped file, first output only
DAEMON_TODAY = {"name": "daemon session (its file and options)", "daemon": True}


def worker_command(args: dict[str, Any]) -> list[str]:
    return [sys.executable, str(BENCH / "_ort_worker.py"), json.dumps(args)]


def ort_worker(model: str, files: dict[str, str], image: Path, configs: list[dict], rounds: int,
               extra: Optional[dict] = None, env: Optional[dict[str, str]] = None) -> dict:
    args = dict({"model": model, "files": files, "image": str(image), "configs": configs, "rounds": rounds}, **(extra or {}))
    return run_json(worker_command(args), env=dict(server_env(), **(env or {})))


class FloorRounds:
    """The floor in a worker process of its own that runs one session.run per call of once(), so that
    bench_bgmask can take a floor run in every round: the floor and bgmask then see the same spells of this
    shared machine, and each size's ratio compares minima of as many tries made at the same times."""

    def __init__(self, model: str, files: dict[str, Path], tensor: Path) -> None:
        args = {"model": model, "files": {"shipped": str(files[model])}, "configs": [FLOOR], "tensor": str(tensor),
                "serve": True}
        self.proc = subprocess.Popen(worker_command(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=server_env())
        self._read()  # loaded and warmed up

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the floor worker exited ({self.proc.wait()})")
        return json.loads(line)

    def once(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        took = float(self._read()["times"][0])
        time.sleep(0.05)  # ORT's default pool threads spin a moment after a run: not into the next call
        return took

    def __enter__(self) -> "FloorRounds":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # end of input: the worker returns
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bench_floor(model: str, files: dict[str, Path], image: Path, rounds: int,
                earlier: Optional[dict[str, Any]] = None, tensor: Optional[Path] = None) -> dict[str, Any]:
    """session.run alone on the prepared input: the shipped file with ORT defaults, and the daemon's session,
    interleaved. Measured before and again after the model's other parts; `earlier` is the first sitting,
    whose runs are merged in, so one busy spell cannot make the floor."""
    wait_quiet(f"the floor of {model}")
    res = ort_worker(model, {"shipped": str(files[model])}, image, [FLOOR, DAEMON_TODAY], rounds,
                     {"save_tensor": str(tensor)} if tensor else None)
    out = {}
    for key, r in zip(("floor", "daemon_session"), res["results"]):
        if earlier:
            r["times"] = earlier[key]["times"] + r["times"]
            r["min_s"], r["median_s"] = min(r["times"]), sorted(r["times"])[len(r["times"]) // 2]
            r["cpu_min_s"] = min(r["cpu_min_s"], earlier[key]["cpu_min_s"])
        out[key] = r
    log(f"  floor {model}: {out['floor']['min_s']:.3f} s; daemon session today {out['daemon_session']['min_s']:.3f} s")
    return out


def bench_rembg(model: str, image: Path, repeat: int) -> dict[str, Any]:
    args = {"model": model, "image": str(image), "repeat": repeat}
    wait_quiet(f"rembg {model} {image.name}")
    res = run_json([str(rembg_env.python()), str(BENCH / "_rembg_worker.py"), json.dumps(args)], env=rembg_env.env())
    log(f"  rembg {model} {image.name}: {res['min_s']:.3f} s, peak {res['peak_rss'] / 2**20:.0f} MiB ({res['model_file']})")
    return res


def bench_cold(model: str, image: Path, repeat: int, tmp: Path) -> dict[str, Any]:
    """One file through each CLI: bgmask with no daemon (it auto-starts one), bgmask warm, `rembg i`."""
    root = tmp / f"cold-{model}"
    env = server_env(fresh_dirs(root))
    bgmask_cli = [sys.executable, "-m", "bgmask", "remove", str(image), "-o", str(root / "bgmask.png"), "--model", model,
                  "--overwrite"]  # each round writes the result again (an existing one is kept otherwise)

    def run(cmd: list[str], env: dict[str, str]) -> None:
        subprocess.run(cmd, env=env, check=True, capture_output=True)

    out: dict[str, Any] = {}
    wait_quiet(f"the command lines with {model}")
    try:
        times, _ = wall_min(lambda: run(bgmask_cli, env), 1)
        out["bgmask_no_daemon_s"] = times[0]
        times, _ = wall_min(lambda: run(bgmask_cli, env), repeat)
        out["bgmask_warm"] = stats(times)
    finally:
        subprocess.run([sys.executable, "-m", "bgmask", "stop"], env=env, capture_output=True)
    rembg_cli = [str(rembg_env.python().parent / "rembg"), "i", "-m", model, str(image), str(root / "rembg.png")]
    times, _ = wall_min(lambda: run(rembg_cli, rembg_env.env()), repeat)
    out["rembg_cli"] = stats(times)
    log(f"  cold {model}: bgmask no daemon {out['bgmask_no_daemon_s']:.2f} s, warm {out['bgmask_warm']['min_s']:.2f} s,"
        f" rembg i {out['rembg_cli']['min_s']:.2f} s")
    return out


# ------------------------------------------------------------------------------------------ experiments
HUGEPAGES = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
PROPOSED = {"file": "prepared", "pattern": False, "arena": False, "trim": True, "env": HUGEPAGES}


def experiment_configs() -> list[dict]:
    """One change at a time against the floor; `env` is the environment the process starts with."""
    return [
        FLOOR,
        DAEMON_TODAY,
        {"name": "floor, all outputs (as rembg runs it)", "file": "shipped", "outputs": "all"},
        {"name": "shipped, no spinning", "file": "shipped", "spin": False},
        {"name": "shipped, level extended (no NCHWc)", "file": "shipped", "level": "extended"},
        {"name": "shipped + glibc.malloc.hugetlb=1", "file": "shipped", "env": HUGEPAGES},
        {"name": "prepared (fp32, 1 output, resize mode)", "file": "prepared"},
        {"name": "prepared, 1 thread", "file": "prepared", "threads": 1},
        {"name": "A: prepared, no mem pattern", "file": "prepared", "pattern": False},
        {"name": "B: A, no arena, malloc_trim", "file": "prepared", "pattern": False, "arena": False, "trim": True},
        dict(PROPOSED, name="proposed: B + glibc.malloc.hugetlb=1"),
    ]


def bench_experiments(model: str, files: dict[str, Path], prepared: dict[str, Path], image: Path, rounds: int,
                      tmp: Path, sittings: int = 2) -> dict[str, Any]:
    """Session settings on raw ORT, each configuration in a process of its own (its peak, what it keeps
    afterwards and its timings are its alone), all of them in turn, `sittings` times over, so that a busy
    spell of the machine does not fall on one configuration only."""
    paths = {"shipped": str(files[model]), "prepared": str(prepared[model])}
    tensor = tmp / f"tensor-{model}.npy"
    ort_worker(model, paths, image, [DAEMON_TODAY], 1, {"save_tensor": str(tensor)})
    configs = experiment_configs()
    runs: list[list[dict]] = [[] for _ in configs]
    for sitting in range(sittings):
        wait_quiet(f"the experiments with {model} ({sitting + 1}/{sittings})")
        for n, cfg in enumerate(configs):
            output = tmp / f"output-{model}-{n}.npy"
            spec = {k: v for k, v in cfg.items() if k != "env"}
            res = ort_worker(model, paths, image, [spec], rounds, {"tensor": str(tensor), "save_output": str(output)},
                             env=cfg.get("env"))
            runs[n].append(dict(res["results"][0], loaded_rss=res["loaded_rss"], peak_rss=res["peak_rss"],
                                rss_after=res["rss_after"]))
    reference = normalised(np.load(tmp / f"output-{model}-0.npy"))
    results = []
    for n, (cfg, sits) in enumerate(zip(configs, runs)):
        times = [t for r in sits for t in r["times"]]
        out = normalised(np.load(tmp / f"output-{model}-{n}.npy"))
        results.append({
            "config": cfg, "times": times, "min_s": min(times), "median_s": sorted(times)[len(times) // 2],
            "cpu_min_s": min(r["cpu_min_s"] for r in sits), "load_s": min(r["load_s"] for r in sits),
            "loaded_rss": max(r["loaded_rss"] for r in sits), "peak_rss": max(r["peak_rss"] for r in sits),
            "rss_after": max(r["rss_after"] for r in sits),
            "max_diff_255": float(np.abs(out - reference).max() * 255.0),
        })
        r = results[-1]
        log(f"  {model} {cfg['name']:<44} min {r['min_s']:.3f} s  cpu {r['cpu_min_s']:.3f}  peak {mib(r['peak_rss'])}"
            f"  after {mib(r['rss_after'])}  loaded {mib(r['loaded_rss'])} MiB  diff {r['max_diff_255']:.3f}/255")
    return {"results": results, "rounds": rounds, "sittings": sittings}


# ------------------------------------------------------------------------------------------ report
def mib(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def verdict(key: str, model: str, value: Optional[float]) -> str:
    bound = TARGETS.get((key, model))
    if bound is None or value is None:
        return ""
    return f"  [target <= {bound:.2f}: {'ok' if value <= bound else 'MISSED'}]"


def report(res: dict[str, Any]) -> list[str]:
    """The table: every figure, then the ratios the issue sets targets for."""
    lines: list[str] = []
    add = lines.append
    for model in res["models"]:
        m = res["by_model"][model]
        floor = m.get("floor", {}).get("floor", {}).get("min_s")
        today = m.get("floor", {}).get("daemon_session", {}).get("min_s")
        add(f"== {model}  (floor: ORT session.run on the shipped file, defaults: {fmt(floor)} s;"
            f" the daemon's session today: {fmt(today)} s = {fmt(ratio(today, floor), 2)}x)")
        add(f"{'size':<6}{'transport/mode':<18}{'bgmask s':>9}{'infer s':>9}{'x floor':>9}{'rembg s':>9}{'x rembg':>9}")
        for label in res["sizes"]:
            b = m.get("bgmask", {}).get(label)
            r = m.get("rembg", {}).get(label)
            rembg_s = r["min_s"] if r else None
            here = size_floor(b, floor) if b else floor
            if b and "floor" in b:
                add(f"{label:<6}{'floor, interleaved':<18}{b['floor']['min_s']:>9.3f}")
            for key in (b["runs"] if b else []):
                run = b["runs"][key]
                infer = (run.get("timings") or {}).get("inference")
                add(f"{label:<6}{key:<18}{run['min_s']:>9.3f}{fmt(infer):>9}{fmt(ratio(run['min_s'], here), 2):>9}"
                    f"{fmt(rembg_s):>9}{fmt(ratio(run['min_s'], rembg_s), 2):>9}")
            if not b and r:
                add(f"{label:<6}{'(rembg only)':<18}{'-':>9}{'-':>9}{'-':>9}{rembg_s:>9.3f}{'-':>9}")
        add(f"{'size':<6}{'peak RSS MiB: bgmask (requests / since start)':<46}{'rembg':>8}{'ratio':>7}"
            f"  bgmask idle -> right after -> {RELEASE_AFTER_S + 1.5:g} s after")
        for label in res["sizes"]:
            b = m.get("bgmask", {}).get(label)
            r = m.get("rembg", {}).get(label)
            if b or r:
                peak = b["peak_rss_requests"] if b else None
                since = b["peak_rss"] if b else None
                add(f"{label:<6}{mib(peak) + ' / ' + mib(since):<46}{mib(r['peak_rss'] if r else None):>8}"
                    f"{fmt(ratio(since, r['peak_rss'] if r else None), 2):>7}  "
                    + (f"{mib(b['idle_rss'])} -> {mib(b.get('rss_right_after'))} -> {mib(b['rss_after'])}" if b else ""))
        c = m.get("cold")
        if c:
            add(f"cold, 1 file: bgmask no daemon {c['bgmask_no_daemon_s']:.2f} s, bgmask warm {c['bgmask_warm']['min_s']:.2f} s,"
                f" rembg i {c['rembg_cli']['min_s']:.2f} s")
        add("ratios:")
        for key, value in res["ratios"].get(model, {}).items():
            add(f"  {key:<24}{fmt(value, 2):>7}{verdict(key, model, value)}")
        e = m.get("experiments")
        if e:
            add(f"experiments (raw ORT, a process per configuration, {e['sittings']} sittings of {e['rounds']} runs):")
            add(f"  {'':<44}{'min s':>7}{'x floor':>8}{'CPU s':>7}{'peak':>7}{'after':>7}{'loaded':>7}  MiB, diff/255")
            floor_s = e["results"][0]["min_s"]
            for r in e["results"]:
                add(f"  {r['config']['name']:<44}{r['min_s']:>7.3f}{r['min_s'] / floor_s:>8.2f}{r['cpu_min_s']:>7.3f}"
                    f"{mib(r['peak_rss']):>7}{mib(r['rss_after']):>7}{mib(r['loaded_rss']):>7}  {r['max_diff_255']:.3f}")
        add("")
    return lines


def size_floor(b: dict[str, Any], floor: Optional[float]) -> Optional[float]:
    """The floor a size's figures are divided by: the floor runs interleaved with that size's rounds, else
    the floor's own sittings."""
    return b.get("floor", {}).get("min_s", floor)


def ratios(res: dict[str, Any]) -> dict[str, dict[str, Optional[float]]]:
    out: dict[str, dict[str, Optional[float]]] = {}
    for model in res["models"]:
        m = res["by_model"][model]
        floor = m.get("floor", {}).get("floor", {}).get("min_s")
        r: dict[str, Optional[float]] = {}
        for label in res["sizes"]:
            b = m.get("bgmask", {}).get(label)
            rb = m.get("rembg", {}).get(label)
            if not b:
                continue
            best = {k: v["min_s"] for k, v in b["runs"].items()}
            default = best.get("pyzmq/refine")
            here = size_floor(b, floor)
            r[f"e2e_{label}/floor"] = ratio(default, here)
            r[f"e2e_{label}/floor builtin"] = ratio(best.get("builtin/refine"), here)
            for quality in OTHER_QUALITIES:
                r[f"e2e_{label}/floor {quality}"] = ratio(best.get(f"pyzmq/{quality}"), here)
            r[f"e2e_{label}/rembg"] = ratio(default, rb["min_s"] if rb else None)
            if label == res["sizes"][0]:
                infer = min((v.get("timings") or {}).get("inference", float("inf")) for v in b["runs"].values())
                r["inference/floor"] = ratio(infer, here)
            r[f"peak_rss_{label}/rembg"] = ratio(b["peak_rss"], rb["peak_rss"] if rb else None)
        c = m.get("cold")
        if c:
            r["warm_cli/rembg_cli"] = ratio(c["bgmask_warm"]["min_s"], c["rembg_cli"]["min_s"])
            r["cold_cli/rembg_cli"] = ratio(c["bgmask_no_daemon_s"], c["rembg_cli"]["min_s"])
        out[model] = r
    return out


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated catalog names (default {','.join(MODELS)})")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated sizes (default {','.join(SIZES)})")
    p.add_argument("--parts", default=",".join(PARTS[:-1]), help=f"what to run (default all but experiments): {','.join(PARTS)}")
    p.add_argument("--experiments", action="store_true", help="also run the ORT session experiments")
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help=f"timed runs per figure (default {DEFAULT_REPEAT}); the floor runs at least 5"
                   " in each of its two sittings, and bgmask end to end twice that many rounds, each with a floor"
                   " run of its own")
    p.add_argument("--cold-size", default="1mp", help="image size of the one-file CLI comparison (default 1mp)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/speed-<date>.json)")
    p.add_argument("--server", type=Path, default=SERVER,
                   help="the bgmask source tree whose daemon and CLI are measured (default server/ of this checkout;"
                        " a patched copy, with plugins/ beside it, measures a proposed change)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="the daemons' --device, and the provider of the floor (ORT's defaults for it) (default auto)")
    p.add_argument("--quiet-wait", type=float, default=180.0,
                   help="before each timed part, wait up to this many seconds for the machine to be idle (default 180)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.parts = {s for s in args.parts.split(",") if s} | ({"experiments"} if args.experiments else set())
    unknown = (set(args.sizes) - set(SIZES)) | (args.parts - set(PARTS))
    if unknown:
        p.error(f"unknown size or part: {', '.join(sorted(unknown))}")
    return args


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform(), "load_avg": os.getloadavg()}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    global QUIET_WAIT, SERVER, DEVICE
    QUIET_WAIT, SERVER, DEVICE = args.quiet_wait, args.server.resolve(), args.device
    started = datetime.datetime.now()
    out_path = args.out or RESULTS / f"speed-{started.strftime('%Y-%m-%dT%H-%M-%S')}.json"
    res: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": machine(), "server": str(SERVER),
                           "device": DEVICE,
                           "models": args.models,
                           "sizes": args.sizes, "photo": PHOTO.name, "by_model": {m: {} for m in args.models}}
    images = make_images(sorted(set(args.sizes) | ({args.cold_size} if "cold" in args.parts else set()), key=list(SIZES).index))
    files = model_files(args.models)
    res["model_files"] = {m: str(p) for m, p in files.items()}
    if args.parts & {"rembg", "cold"}:
        res["rembg"] = rembg_env.ensure(log=log)
        rembg_env.link_models(files)
    prepared = prepared_files(files) if "experiments" in args.parts else {}
    with tempfile.TemporaryDirectory(prefix="bgmask-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for model in args.models:
            m = res["by_model"][model]
            repeat = args.repeat
            floor_rounds = max(repeat, 5)  # per sitting; the floor sits twice
            log(f"{model} ({files[model].name})")
            tensor = tmp / f"tensor-{model}.npy"
            if "floor" in args.parts:
                m["floor"] = bench_floor(model, files, images[args.sizes[0]], floor_rounds, tensor=tensor)
            if "bgmask" in args.parts:
                measured = "floor" in args.parts
                with FloorRounds(model, files, tensor) if measured else contextlib.nullcontext() as floor:
                    rounds = 2 * floor_rounds if measured else repeat
                    m["bgmask"] = {s: bench_bgmask(model, s, images[s], rounds, tmp, floor) for s in args.sizes}
            if "rembg" in args.parts:
                m["rembg"] = {s: bench_rembg(model, images[s], repeat) for s in args.sizes}
            if "cold" in args.parts:
                m["cold"] = bench_cold(model, images[args.cold_size], repeat, tmp)
            if "floor" in args.parts:
                m["floor"] = bench_floor(model, files, images[args.sizes[0]], floor_rounds, m["floor"])
            if "experiments" in args.parts:
                m["experiments"] = bench_experiments(model, files, prepared, images[args.sizes[0]], repeat, tmp)
    res["machine"]["load_avg_end"] = os.getloadavg()
    res["ratios"] = ratios(res)
    lines = report(res)
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1))
    print(f"written {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
