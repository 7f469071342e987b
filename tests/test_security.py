"""The daemon answers only its own user (issue 9): anything on the machine can reach a loopback port, so the
token, the size cap and the request parsing are all that stand between a stranger and the daemon's work,
files and memory."""

from __future__ import annotations

import ast
import base64
import inspect
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

import msgpack
import pytest
import zmq

from bgmask import protocol
from bgmask.daemon import server as daemon_module
from conftest import RunningDaemon, authenticate, base_env, start_daemon, vm_kib

SMALL = ["--default-model", "u2netp", "--preload-delay", "-1"]


class Conn:
    """One DEALER connection speaking the protocol by hand (tokens and frames exactly as the test says)."""

    def __init__(self, endpoint: str, routing_id: Optional[bytes] = None, timeout: float = 60.0,
                 token: Optional[str] = None) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if token is not None:  # the handshake's credentials; without them the daemon never reads a frame
            authenticate(self.sock, token)
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        self.sock.connect(endpoint)
        self.n = 0
        self.timeout = timeout
        self.received: list[bytes] = []  # every frame 0 that came back, to search for secrets

    def close(self) -> None:
        self.sock.close()

    def send(self, header: dict, *data: bytes) -> int:
        self.n += 1
        self.sock.send_multipart([msgpack.packb({"v": 2, "id": self.n, **header}, use_bin_type=True), *data])
        return self.n

    def final(self, rid: int) -> tuple[dict, list[bytes], int]:
        """The final answer to `rid`, its data frames and how many progress messages came before it."""
        progress = 0
        deadline = time.monotonic() + self.timeout
        while True:
            assert self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))), "no answer"
            frames = self.sock.recv_multipart()
            self.received.append(frames[0])
            header = msgpack.unpackb(frames[0], raw=False)
            if header.get("id") != rid:
                continue
            if header["type"] == "progress":
                progress += 1
                continue
            return header, frames[1:], progress

    def call(self, header: dict, *data: bytes) -> tuple[dict, list[bytes], int]:
        return self.final(self.send(header, *data))


@pytest.fixture
def own_daemon(isolated_dirs: dict, tmp_path: Path) -> Iterator[RunningDaemon]:
    """A verbose daemon with an empty model cache of its own, so that any download or load would show."""
    dirs = dict(isolated_dirs, BGMASK_CACHE_DIR=str(tmp_path / "empty-cache"))
    d = start_daemon(dirs, *SMALL, "-v")
    yield d
    d.stop()


def image(width: int = 4, height: int = 4, channels: int = 3) -> dict:
    return {"width": width, "height": height, "channels": channels, "sample_type": "u8"}


# ------------------------------------------------------------------------------------------------ token
def test_token_and_runtime_files_are_private(isolated_dirs: dict) -> None:
    runtime_dir = Path(isolated_dirs["BGMASK_RUNTIME_DIR"])
    runtime_dir.chmod(0o755)  # left readable by someone: the daemon must tighten it before writing the token
    d = start_daemon(isolated_dirs, *SMALL)
    try:
        assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(d.runtime_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((runtime_dir / "daemon.lock").stat().st_mode) & 0o077 == 0
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", d.token)  # secrets.token_urlsafe(32): 256 random bits
        for where in (f"/proc/{d.pid}/cmdline", f"/proc/{d.pid}/environ"):  # visible to other users via ps
            assert d.token.encode() not in Path(where).read_bytes()
        config = Path(isolated_dirs["BGMASK_CONFIG_DIR"]) / "config.json"
        assert d.token not in config.read_text()
        assert not [p for p in runtime_dir.iterdir() if p.name.endswith(".tmp")]  # no readable half-written copy
    finally:
        d.stop()


def test_the_token_is_compared_in_constant_time() -> None:
    """Code-level: the envelope check uses hmac.compare_digest, and nothing compares the token with == or in."""
    tree = ast.parse(inspect.getsource(protocol.check_envelope))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "compare_digest"]
    assert calls, "check_envelope does not call hmac.compare_digest"
    secret_param = list(inspect.signature(protocol.check_envelope).parameters)[1]
    for module in (protocol, daemon_module):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
                        {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                assert not names & {"token", secret_param}, ast.unparse(node)


def wrong_tokens(token: str) -> list[Any]:
    """More than 200 tokens that are not this daemon's: near misses first, then other kinds and types."""
    flip = {c: ("B" if c == "A" else "A") for c in token}
    near = [token[:i] + flip[token[i]] + token[i + 1:] for i in range(len(token))]  # one character off, at each position
    near += [token[:k] for k in range(0, len(token), 3)] + [token[1:], token + "A", token + "\0", "\0" + token,
                                                             " " + token, token + "\n", token.upper(), token.lower(),
                                                             token[::-1], token * 2, token[:-1] + "\u0430"]
    others = [secrets.token_urlsafe(32) for _ in range(120)] + ["", "null", "None", "*", "%", "token", "\ufeff", "x" * 5000]
    typed = [None, 0, 1, -1, 2**64 - 1, True, False, 1.5, token.encode(), [token], {"token": token}, [], {}]
    return [t for t in near if t != token] + others + typed


OPS = [
    ("remove", lambda: {"model": "u2netp", "image": image()}, [bytes(48)]),
    ("pull", lambda: {"model": "u2netp"}, []),
    ("shutdown", dict, []),
    ("status", dict, []),
    ("models", dict, []),
    ("hello", dict, []),
    ("cancel", lambda: {"target": 1}, []),
]


def test_no_request_without_the_token_is_served(own_daemon: RunningDaemon, tmp_path: Path) -> None:
    tokens = wrong_tokens(own_daemon.token)
    c = Conn(own_daemon.endpoint, token=own_daemon.token)  # a buggy client: right handshake, wrong headers
    served = refused = 0
    try:
        for n, wrong in enumerate(tokens + ["<missing>"]):
            op, fields, data = OPS[n % len(OPS)]
            header = {"op": op, **fields()}
            if wrong != "<missing>":
                header["token"] = wrong
            reply, frames, progress = c.call(header, *data)
            if reply["type"] == "error" and reply["error"]["code"] == "unauthorized" and not frames and not progress:
                refused += 1
            else:
                served += 1
        assert len(tokens) >= 200 and (served, refused) == (0, len(tokens) + 1)
        assert own_daemon.proc.poll() is None  # the unauthorised shutdowns did nothing
        log = own_daemon.log()
        assert "refused" not in log  # counted, not logged one by one: the summary comes once per interval
        assert not re.search(r"DEBUG bgmask\.daemon: request ", log)  # no request got past the envelope
        assert not re.search(r"bgmask\.daemon: (remove|pull) |bgmask\.download", log)  # no work, no download
        models = tmp_path / "empty-cache" / "models"
        assert not models.exists() or not any(models.iterdir())
        for wrong in tokens:  # not even a near miss is written down
            if isinstance(wrong, str) and len(wrong) >= 8:
                assert wrong not in log
        # the right token still works, and the log shows it: the checks above were not vacuous
        status, _, _ = c.call({"op": "status", "token": own_daemon.token})
        assert status["type"] == "reply" and status["queue"] == 0 and status["running"] == 0
        assert {m["name"]: m["state"] for m in status["models"]}["u2netp"] == "not_downloaded"
        assert len(re.findall(r"DEBUG bgmask\.daemon: request status", own_daemon.log())) == 1
    finally:
        c.close()
    own_daemon.stop()
    assert re.findall(r"refused in the last \d+ s: (\d+) requests without the token", own_daemon.log()) == [
        str(len(tokens) + 1)]


def test_a_stranger_cannot_crash_the_daemon_by_claiming_the_next_connection_id(isolated_dirs: dict) -> None:
    """libzmq numbers connections that bring no routing id with a counter started from rand(); if a peer claims
    the number the next client will get, libzmq aborts the whole process on the collision. No token is needed
    to do that, so the daemon must make those numbers unguessable (libzmq 4.3's unseeded first one is 0x6b8b4567)."""
    d = start_daemon(isolated_dirs, *SMALL)
    squatters = [Conn(d.endpoint, b"\0" + (0x6B8B4567 + k).to_bytes(4, "big"), timeout=10, token=d.token)
                 for k in range(64)]
    clients: list[Conn] = []
    try:
        for s in squatters:
            assert s.call({"op": "hello"})[0]["error"]["code"] == "unauthorized"  # connected (a buggy client)
        for _ in range(8):
            clients.append(Conn(d.endpoint, timeout=10, token=d.token))
            try:
                reply: Optional[dict] = clients[-1].call({"op": "hello", "token": d.token})[0]
            except AssertionError:
                reply = None
            assert d.proc.poll() is None, f"the daemon died with status {d.proc.returncode}:\n{d.log()[-1500:]}"
            assert reply is not None and reply["type"] == "reply"
    finally:
        for c in squatters + clients:
            c.close()
        status = d.stop()
    assert status == 0, d.log()[-2000:]


# ------------------------------------------------------------------------------------------------ network
def non_loopback_address() -> Optional[str]:
    """An address of this machine that other machines could reach, if it has one."""
    for target in ("192.0.2.1", "10.255.255.255", "8.8.8.8"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((target, 9))  # UDP: picks the outgoing interface, sends nothing
                address = s.getsockname()[0]
        except OSError:
            continue
        if not address.startswith("127."):
            return address
    return None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "machine-address", "example.com"])
def test_listening_beyond_loopback_needs_allow_remote(isolated_dirs: dict, host: str) -> None:
    if host == "machine-address":
        host = non_loopback_address() or pytest.skip("this machine has no non-loopback address")
    done = subprocess.run([sys.executable, "-m", "bgmask", "serve", "--host", host, *SMALL], env=base_env(isolated_dirs),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--allow-remote" in done.stderr, done.stderr
    assert not (Path(isolated_dirs["BGMASK_RUNTIME_DIR"]) / "daemon.json").exists()


def test_allow_remote_warns_and_still_wants_the_token(isolated_dirs: dict) -> None:
    address = non_loopback_address()
    d = start_daemon(isolated_dirs, "--host", "0.0.0.0", "--allow-remote", *SMALL)
    try:
        assert re.search(r"WARNING .*0\.0\.0\.0.*nothing is encrypted: .* can read the token and the images", d.log())
        port = d.endpoint.rsplit(":", 1)[1]
        c = Conn(f"tcp://{address or '127.0.0.1'}:{port}", token=d.token)
        try:
            assert c.call({"op": "hello"})[0]["error"]["code"] == "unauthorized"
            assert c.call({"op": "hello", "token": d.token})[0]["type"] == "reply"
        finally:
            c.close()
    finally:
        d.stop()


def test_the_default_daemon_is_not_reachable_from_other_machines(daemon: RunningDaemon) -> None:
    address = non_loopback_address() or pytest.skip("this machine has no non-loopback address")
    host, port = daemon.endpoint[len("tcp://"):].rsplit(":", 1)
    assert host == "127.0.0.1"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, int(port)), timeout=5).close()


# ------------------------------------------------------------------------------------------------ size
def test_oversized_frames_are_dropped_before_the_token_is_read_and_cost_no_memory(isolated_dirs: dict) -> None:
    d = start_daemon(isolated_dirs, *SMALL, "--max-message-bytes", str(8 << 20))
    try:
        ok = Conn(d.endpoint, token=d.token)
        try:
            assert ok.call({"op": "hello", "token": d.token})[0]["max_message_bytes"] == 8 << 20
            peak = vm_kib(d.pid, "VmHWM")
            for _ in range(3):  # a stranger (no token) sends 64 MiB frames
                stranger = Conn(d.endpoint, token=d.token)  # a token holder's oversized frame
                monitor = stranger.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                try:
                    stranger.send({"op": "remove", "image": image(4096, 4096, 4)}, bytes(64 << 20))
                    assert monitor.poll(60_000), "the connection was not dropped"
                    assert not stranger.sock.poll(100), "an oversized message was answered"
                finally:
                    stranger.sock.disable_monitor()
                    monitor.close(0)
                    stranger.close()
            assert vm_kib(d.pid, "VmHWM") - peak < 32 * 1024  # KiB: none of the 3 x 64 MiB was held
            assert ok.call({"op": "hello", "token": d.token})[0]["type"] == "reply"
        finally:
            ok.close()
    finally:
        d.stop()



# ------------------------------------------------------------------------------------------------ files
def path_like_names(marker: str, planted: Path) -> list[str]:
    return [
        str(planted), str(planted.with_suffix("")), str(planted.parent), f"../../../..{planted.with_suffix('')}",
        f"u2netp/../../{marker}", f"../{marker}", f"~/{marker}", f"file://{planted}", f"{marker}.onnx", marker,
        f"..\\..\\{marker}", f"C:\\{marker}\\u2netp.onnx", f"\\\\server\\{marker}", f"u2netp\0{marker}",
        f"%2e%2e%2f{marker}", f"./{marker}", f"/proc/self/cwd/{marker}", f"{marker}/" * 20,
    ]


def _strace(pid: int, out: Path) -> Optional[subprocess.Popen]:
    """strace attached to every thread of the daemon, tracing file-name syscalls; None if it cannot attach."""
    if shutil.which("strace") is None:
        return None
    tids = [a for t in sorted(os.listdir(f"/proc/{pid}/task")) for a in ("-p", t)]
    proc = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=%file", "-o", str(out), *tids],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    if proc.poll() is not None:  # no ptrace permission here (Yama, containers): do without it
        return None
    return proc


def _sync(c: Conn, token: str, trace: Path, config_dir: str, seen: int) -> int:
    """Make the daemon open a known file and wait until the trace shows it: everything before is in the trace."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert c.call({"op": "models", "token": token})[0]["type"] == "reply"
        count = trace.read_text(errors="replace").count(config_dir) if trace.exists() else 0
        if count > seen:
            return count
        time.sleep(0.2)
    raise AssertionError("strace does not see the daemon's file accesses")


def test_no_file_named_in_a_request_is_ever_touched(own_daemon: RunningDaemon, tmp_path: Path) -> None:
    marker = f"bgmask-marker-{uuid.uuid4().hex}"
    planted = tmp_path / marker / "u2netp.onnx"  # a real file where a path-following daemon would find one
    planted.parent.mkdir()
    planted.write_bytes(b"not a model")
    trace = tmp_path / "trace.txt"
    tracer = _strace(own_daemon.pid, trace)
    c = Conn(own_daemon.endpoint, token=own_daemon.token)
    try:
        config_dir = own_daemon.env["BGMASK_CONFIG_DIR"]
        seen = _sync(c, own_daemon.token, trace, config_dir, 0) if tracer else 0
        for name in path_like_names(marker, planted):
            for op, data in (("pull", []), ("remove", [bytes(48)])):
                reply, _, progress = c.call({"op": op, "token": own_daemon.token, "model": name, "image": image()}, *data)
                code = reply.get("error", {}).get("code")
                assert code == "unknown_model" or (code == "bad_request" and len(name) > 128), (name, reply)
                assert progress == 0
        if tracer:
            _sync(c, own_daemon.token, trace, config_dir, seen)
            tracer.send_signal(signal.SIGTERM)
            tracer.wait(30)
            touched = [line for line in trace.read_text(errors="replace").splitlines() if marker in line]
            assert touched == [], touched[:5]
    finally:
        c.close()
        if tracer and tracer.poll() is None:
            tracer.kill()
    assert planted.read_bytes() == b"not a model" and sorted(p.name for p in planted.parent.iterdir()) == ["u2netp.onnx"]
    for root in (own_daemon.env["BGMASK_RUNTIME_DIR"], own_daemon.env["BGMASK_CONFIG_DIR"], own_daemon.env["BGMASK_CACHE_DIR"]):
        assert not [p for p in Path(root).rglob("*") if marker in str(p)] if Path(root).exists() else True


def test_logs_hold_neither_the_token_nor_pixels(isolated_dirs: dict) -> None:
    pattern = b"PIXELMARK-7731!!"  # 16 bytes: four RGBA pixels
    d = start_daemon(isolated_dirs, *SMALL, "-v")
    token = d.token
    c = Conn(d.endpoint, token=d.token)
    try:
        assert c.call({"op": "hello", "token": token})[0]["type"] == "reply"
        for width, height in ((8, 8), (4, 3)):
            rgba = pattern * (width * height // 4)
            assert c.call({"op": "remove", "token": token, "model": "u2netp", "image": image(width, height, 4)}, rgba)[0]["type"] == "reply"
            c.call({"op": "remove", "token": token, "model": "nope", "image": image(width, height, 4)}, rgba)
            c.call({"op": "remove", "token": token, "model": "u2netp", "image": image(width + 1, height, 4)}, rgba)  # bad_image
            c.call({"op": "remove", "token": token[:-1] + "x", "model": "u2netp", "image": image(width, height, 4)}, rgba)
            c.call({"op": "remove", "token": token, "model": "u2netp", "image": image(width, height, 4), "options": {"bogus": pattern.decode()}}, rgba)
        for op in ("status", "models"):
            c.call({"op": op, "token": token})
        c.call({"v": 3, "op": "hello", "token": token})
        c.call({"op": "explode", "token": token})
    finally:
        c.close()
        d.stop()
    log = d.log()
    assert "request remove" in log and "2 requests without the token" in log  # verbose logging was on
    secrets_ = [token, *(token[i:i + 12] for i in range(0, len(token) - 11, 4))]
    pixels = [pattern.decode(), pattern.hex(), base64.b64encode(pattern * 3).decode()[:16], "PIXELMARK"]
    for s in secrets_ + pixels:
        assert s not in log, f"the log contains {s!r}"
    assert not [f for f in c.received if token.encode() in f], "a reply carried the token"
