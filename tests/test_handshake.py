"""Protocol 2's ZMTP PLAIN handshake: a peer without the token is dropped before libzmq reads a single frame of
its, costs neither memory nor a log line of its own, and a connection that never authenticates is closed
after the handshake timeout; a client that goes away takes its queued jobs (and their memory) with it. Real
daemons, real libzmq, the shared client's own handshake."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import time
from pathlib import Path
from typing import Iterator

import msgpack
import pytest
import zmq

import client_suite
from conftest import RunningDaemon, authenticate, start_daemon, vm_kib, wait_until

bc = client_suite.load_client()
SMALL = ["--default-model", "u2netp", "--preload-delay", "-1"]
MiB = 1024**2


@pytest.fixture
def own_daemon(isolated_dirs: dict) -> Iterator[RunningDaemon]:
    d = start_daemon(isolated_dirs, *SMALL)
    yield d
    d.stop()



def served(d: RunningDaemon) -> bool:
    """A real request from a token holder, answered with a mask of the right size."""
    client = bc.Client(endpoint=d.endpoint, token=d.token, timeout=60, autostart=False, transport="builtin")
    try:
        return len(client.remove(bytes(32 * 24 * 3), 32, 24, 3, "u8")) == 32 * 24
    finally:
        client.close()



def test_strangers_without_the_token_get_no_frame_read(own_daemon: RunningDaemon) -> None:
    d = own_daemon
    assert served(d)
    rss, peak = vm_kib(d.pid, "VmRSS"), vm_kib(d.pid, "VmHWM")
    ctx = zmq.Context()
    strangers = []
    try:
        for n in range(4):  # two protocol-1 style (NULL) and two with a guessed token, 3 x 64 MiB each
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if n % 2:
                authenticate(sock, d.token[:-1] + "x")
            sock.setsockopt(zmq.SNDTIMEO, 5000)  # a refused handshake may leave no pipe to queue on: never block
            sock.connect(d.endpoint)
            strangers.append(sock)
            try:
                sock.send_multipart([json.dumps({"v": 2, "op": "shutdown"}).encode(), bytes(64 * MiB), bytes(64 * MiB)],
                                    copy=False)
            except zmq.Again:
                pass  # nothing was queued, so nothing can reach the daemon either
        assert served(d), "a real request was not served while strangers were connected"
        time.sleep(1.0)
        assert d.proc.poll() is None
        assert not any(sock.poll(0) for sock in strangers), "a stranger got an answer"
        assert vm_kib(d.pid, "VmHWM") - peak < 32 * 1024, "the strangers' frames were received"
        assert vm_kib(d.pid, "VmRSS") - rss < 32 * 1024
    finally:
        for sock in strangers:
            sock.close(0)
        ctx.term()
    assert d.stop() == 0
    assert "refused" not in d.log().split("refused in the last", 1)[0]  # nothing logged attempt by attempt
    summary = re.findall(r"refused in the last \d+ s: (.*)", d.log())
    assert len(summary) == 1 and "handshakes without the token" in summary[0], d.log()[-2000:]
    assert "connections that failed the handshake" in summary[0]


def plain_hello(port: int, password: bytes) -> bytes:
    """One PLAIN handshake by hand, as far as the daemon lets it go: what it answered to HELLO (libzmq then
    keeps the connection until the handshake timeout unless the peer hangs up, as the client does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(bc._GREETING + bc._command(b"HELLO", b"\x06bgmask" + bytes([len(password)]) + password))
        data = b""
        while len(data) < 64 + 2 + 9:  # greeting, then a short command of 9 bytes: ERROR "400" or WELCOME
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        return data[64:]


def test_thousands_of_refused_handshakes_make_one_log_line(own_daemon: RunningDaemon) -> None:
    d = own_daemon
    port = int(d.endpoint.rsplit(":", 1)[1])
    answer = plain_hello(port, d.token[::-1].encode())
    assert answer[0] == 0x04 and b"RROR" in answer[2:7], "a wrong token must be refused with an ERROR command"
    for _ in range(999):
        plain_hello(port, b"guess")
    assert served(d)
    size = len(d.log().encode())
    time.sleep(1)
    assert d.stop() == 0
    log = d.log()
    counts = re.findall(r"refused in the last \d+ s: (\d+) handshakes without the token", log)
    assert len(counts) == 1 and 500 <= int(counts[0]) <= 1000, log[-2000:]  # counted as libzmq reports them
    assert len(log.encode()) - size < 1024 and log.count("\n") < 10


def test_a_connection_that_never_authenticates_is_closed(own_daemon: RunningDaemon) -> None:
    port = int(own_daemon.endpoint.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as idle:
        idle.sendall(bc._GREETING[:11])  # then nothing: holds a descriptor until the handshake timeout
        started = time.monotonic()
        try:
            while idle.recv(4096):
                pass
        except socket.timeout:
            pytest.fail("the daemon kept a connection that never authenticated for 20 s")
        except ConnectionResetError:
            pass
    assert time.monotonic() - started < 20  # libzmq's default would be 30 s; the daemon's is a few seconds
    assert served(own_daemon)


def test_an_aborted_upload_is_given_back_without_another_request(own_daemon: RunningDaemon) -> None:
    d = own_daemon
    assert served(d)
    time.sleep(6)  # past release_memory_after: the request's own memory is back
    rss = vm_kib(d.pid, "VmRSS")
    dealer = bc._ZmtpDealer(d.endpoint, 30.0, token=d.token)
    try:
        header = json.dumps({}).encode()
        dealer._send_all(memoryview(struct.pack(">BB", 0x01, len(header)) + header))
        dealer._send_all(memoryview(struct.pack(">BQ", 0x02, 300 * MiB)))
        chunk = memoryview(bytes(16 * MiB))
        for _ in range(12):  # 192 of the 300 MiB, then the client dies
            dealer._send_all(chunk)
        assert wait_until(lambda: vm_kib(d.pid, "VmRSS") - rss > 150 * 1024, 30, interval=0.2), "the upload did not arrive"
    finally:
        dealer.close()
    assert wait_until(lambda: vm_kib(d.pid, "VmRSS") - rss < 64 * 1024, 15, interval=0.2), (
        "the aborted upload's memory stayed with the idle daemon: %d KiB over" % (vm_kib(d.pid, "VmRSS") - rss))
    assert served(d)


def test_a_daemon_of_another_protocol_is_named_with_what_to_do(isolated_dirs: dict,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in isolated_dirs.items():
        monkeypatch.setenv(key, value)
    runtime = Path(isolated_dirs["BGMASK_RUNTIME_DIR"])
    runtime.mkdir(parents=True, mode=0o700, exist_ok=True)
    (runtime / "daemon.json").write_text(json.dumps({"endpoint": "tcp://127.0.0.1:9", "token": "t",
                                                     "pid": os.getpid(), "protocol": 1}))
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client(timeout=5).hello()
    assert err.value.code == "unsupported_version"
    assert "protocol 1" in err.value.message and "update bgmask" in err.value.message


def test_the_queued_jobs_of_a_client_that_disconnected_are_dropped(own_daemon: RunningDaemon) -> None:
    d = own_daemon
    assert served(d)
    ctx = zmq.Context()
    gone = authenticate(ctx.socket(zmq.DEALER), d.token)
    gone.setsockopt(zmq.LINGER, -1)
    gone.connect(d.endpoint)
    width, height = 4000, 3000
    image = {"width": width, "height": height, "channels": 3, "sample_type": "u8"}
    pixels = bytes(width * height * 3)
    for rid in range(1, 7):
        gone.send_multipart([msgpack.packb({"v": 2, "id": rid, "token": d.token, "op": "remove", "image": image}),
                             pixels], copy=False)
    queued = set()
    while len(queued) < 6:  # every request has arrived and is queued or running
        assert gone.poll(60_000)
        header = msgpack.unpackb(gone.recv_multipart()[0])
        assert header["type"] == "progress", header
        queued.add(header["id"])
    gone.close(0)  # the client dies with five requests waiting
    ctx.term()
    client = bc.Client(endpoint=d.endpoint, token=d.token, timeout=60, autostart=False)
    try:
        assert wait_until(lambda: client.status()["queue"] == 0, 8, interval=0.2), "the dead client's requests are still queued"
    finally:
        client.close()
    assert re.findall(r"dropped (\d) request\(s\) of a client that disconnected", d.log()) in (["5"], ["6"]), \
        d.log()[-1500:]
    assert served(d)


def test_an_idle_daemon_gives_memory_back_once_per_idle_period(isolated_dirs: dict,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Not at every 0.5 s tick: a fragmented heap stays 'free' after malloc_trim, and back-to-back requests
    would pay their page faults again. One trim release_memory_after_s after the last request (or closed
    connection), none before, and the next only after another request."""
    from bgmask.daemon import server as daemon
    from bgmask.models import sessions

    for key, value in isolated_dirs.items():
        monkeypatch.setenv(key, value)
    trims: list[float] = []
    monkeypatch.setattr(daemon, "free_heap_bytes", lambda: 200 * MiB, raising=False)  # what trimming cannot lower
    monkeypatch.setattr(sessions, "release_arena", lambda: None)
    d = daemon.Daemon(daemon.DaemonConfig(preload_delay=-1, release_memory_after_s=5.0))
    monkeypatch.setattr(daemon, "return_free_heap", lambda: trims.append(now))
    try:
        for request_done in (1000.0, 1100.0):
            d._last_done, d._holding_memory = request_done, True  # what _run records when a request finishes
            for tick in range(120):  # a minute of the loop's 0.5 s ticks
                now = request_done + tick * 0.5
                d._release_when_idle(now)
        assert trims == [1005.0, 1105.0]
    finally:
        d.ctx.term()
