"""Shared fixtures: real daemons on loopback with isolated per-user dirs and a shared, persistent model cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "server"
EXAMPLES = REPO / "examples"
if str(SERVER) not in sys.path:
    sys.path.insert(0, str(SERVER))

import platformdirs  # noqa: E402


@dataclass
class RunningDaemon:
    """A daemon process started by a test, and the environment that points a client at it."""

    proc: subprocess.Popen
    endpoint: str
    token: str
    pid: int
    env: dict[str, str]
    runtime_file: Path
    log_path: Path

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the daemon must exit cleanly and remove its runtime file."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def base_env(dirs: dict[str, str]) -> dict[str, str]:
    """The environment of a subprocess that should use the source tree and the given bgmask dirs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SERVER), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("BGMASK_ENDPOINT", None)
    env.pop("BGMASK_TOKEN", None)
    env.update(dirs)
    return env


def start_daemon(dirs: dict[str, str], *args: str, timeout: float = 60.0,
                 preexec_fn: Optional[Callable[[], None]] = None, python: str = sys.executable) -> RunningDaemon:
    """Start `python -m bgmask serve` and wait for its runtime file to name a live endpoint (`preexec_fn` runs
    in the child before the daemon does: limits it starts under, say; `python`: another environment's
    interpreter, such as a side venv with a different ONNX Runtime)."""
    env = base_env(dirs)
    runtime_file = Path(dirs["BGMASK_RUNTIME_DIR"]) / "daemon.json"
    log_path = Path(dirs["BGMASK_RUNTIME_DIR"]).parent / f"daemon-{time.monotonic_ns()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([python, "-m", "bgmask", "serve", *args], env=env, preexec_fn=preexec_fn,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            record = json.loads(runtime_file.read_text())
            if record.get("pid") == proc.pid:
                client_env = dict(dirs, BGMASK_ENDPOINT=record["endpoint"], BGMASK_TOKEN=record["token"])
                return RunningDaemon(proc, record["endpoint"], record["token"], proc.pid, client_env, runtime_file, log_path)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"daemon did not start within {timeout} s:\n{log_path.read_text(errors='replace')}")


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Weights are real and large: keep them across test runs ($BGMASK_TEST_CACHE or the user's bgmask cache)."""
    path = Path(os.environ.get("BGMASK_TEST_CACHE") or platformdirs.user_cache_dir("bgmask", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _dirs(root: Path, cache: Path) -> dict[str, str]:
    runtime = root / "run"
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    (root / "config").mkdir(parents=True, exist_ok=True)
    return {"BGMASK_RUNTIME_DIR": str(runtime), "BGMASK_CONFIG_DIR": str(root / "config"), "BGMASK_CACHE_DIR": str(cache)}


@pytest.fixture
def isolated_dirs(tmp_path: Path, model_cache: Path) -> dict[str, str]:
    """Fresh runtime and config dirs (nothing running there), sharing the model cache."""
    return _dirs(tmp_path / "bgmask", model_cache)


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningDaemon]:
    """One real daemon for the session: u2netp preloaded (fast), IS-Net loaded when a test asks for it."""
    dirs = _dirs(tmp_path_factory.mktemp("daemon"), model_cache)
    running = start_daemon(dirs, "--default-model", "u2netp", "--queue-limit", "8")
    yield running
    running.stop()


@pytest.fixture
def client_env(daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this process's client at the session daemon."""
    for key, value in daemon.env.items():
        monkeypatch.setenv(key, value)
    return daemon.env


def example(name: str) -> Path:
    return EXAMPLES / name


def load_rgb(name: str, size: Optional[tuple[int, int]] = None) -> tuple[bytes, int, int]:
    """An example photo as packed RGB8 bytes (optionally resized)."""
    from PIL import Image

    img = Image.open(example(name)).convert("RGB")
    if size is not None:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return img.tobytes(), img.width, img.height


def vm_kib(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in KiB (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Which real GIMP and Krita versions the host-app tests ran in, and how long each launch took."""
    launches = sys.modules.get("hostapps_targets")
    if launches is None or not launches.LAUNCHES:
        return
    terminalreporter.section("real host applications")
    totals: dict[str, float] = {}
    for app, what, seconds in launches.LAUNCHES:
        terminalreporter.write_line(f"{app}: {what}: {seconds:.1f} s")
        totals[app] = totals.get(app, 0.0) + seconds
    for app, seconds in totals.items():
        terminalreporter.write_line(f"{app}: total {seconds:.1f} s")


def authenticate(sock: Any, token: str) -> Any:
    """Give a hand-made pyzmq socket the daemon's ZMTP PLAIN credentials (docs/protocol.md, "Handshake"):
    without them the daemon drops the connection in the handshake, before any frame is read."""
    import zmq

    sock.setsockopt(zmq.PLAIN_USERNAME, b"bgmask")
    sock.setsockopt(zmq.PLAIN_PASSWORD, token.encode())
    return sock
