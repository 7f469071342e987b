"""The shared client against the session daemon, twice: with pyzmq + msgpack in this process, and in an
isolated `python -I` subprocess where they cannot be imported (the built-in ZMTP / msgpack path that
GIMP's and Krita's Pythons get). The checks themselves live in tests/client_suite.py."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from types import ModuleType

import pytest

import client_suite as suite

NAMES = sorted(suite.CHECKS)


@pytest.fixture(scope="module")
def bc() -> ModuleType:
    return suite.load_client()


@pytest.fixture
def suite_env(client_env: dict, daemon, monkeypatch: pytest.MonkeyPatch) -> dict:
    """This process's environment pointed at the session daemon (client_env set the BGMASK_* variables)."""
    monkeypatch.setenv("BGMASK_TEST_DAEMON_PID", str(daemon.pid))
    return dict(os.environ)


def test_frame_progress_moves_forward_only(bc: ModuleType) -> None:
    """remove_frames keeps two frames in flight, so their progress interleaves; what a plug-in's bar is shown
    follows the frame being worked on and never goes back to an earlier frame or flips to the next one's queue."""
    shown: list = []
    forward = bc.ForwardFrameProgress(lambda *message: shown.append(message))
    for message in [(0, "queued", None), (0, "inferring", None), (1, "queued", None), (0, "refining", 0.5),
                    (1, "inferring", None), (0, "refining", 1.0), (2, "queued", None), (1, "refining", 0.5),
                    (2, "inferring", None), (1, "refining", 1.0), (2, "refining", 1.0)]:
        forward(*message)
    assert shown == [(0, "queued", None), (0, "inferring", None), (0, "refining", 0.5), (1, "inferring", None),
                     (1, "refining", 0.5), (2, "inferring", None), (2, "refining", 1.0)]


@pytest.mark.parametrize("name", NAMES)
def test_with_pyzmq(name: str, bc: ModuleType, suite_env: dict) -> None:
    assert bc.HAVE_PYZMQ and bc.Client().transport == "pyzmq"
    suite.CHECKS[name](bc)


@pytest.mark.parametrize("name", NAMES)
def test_builtin_without_pyzmq(name: str, suite_env: dict) -> None:
    proc = subprocess.run([sys.executable, "-I", str(suite.__file__), name], env=suite_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr



def test_pyzmq_clients_do_not_need_the_monitor_names_pyzmq_would_choose(bc: ModuleType, suite_env: dict) -> None:
    """pyzmq names a socket monitor after the socket's file descriptor, and a just-closed socket can still hold
    that name while the number is reused: a Client opened meanwhile (another thread's) failed with ZMQError
    "Address already in use". With every such name taken, Clients of two copies of the client file, all open at
    once, still remove."""
    import zmq

    ctx = zmq.Context.instance()
    squatter = ctx.socket(zmq.PAIR)  # one socket holding the default monitor name of every descriptor number
    names = [f"inproc://monitor.s-{fd}" for fd in range(4096)]
    try:
        for name in names:
            squatter.bind(name)
        probe = ctx.socket(zmq.DEALER)
        try:
            with pytest.raises(zmq.ZMQError, match="Address already in use"):
                probe.get_monitor_socket()  # what the Client got before it named its monitors itself
        finally:
            probe.close(0)
        arr, w, h = suite.photo((40, 30))
        # Open Clients of two separately loaded copies of the client file (each plug-in loads its own).
        clients = [copy.Client() for copy in (bc, suite.load_client()) for _ in range(2)]
        for client in clients:
            assert len(client.remove(arr.tobytes(), w, h, 4, "u8", model=suite.MODEL)) == w * h
        for client in clients:
            client.close()
    finally:
        for name in names:  # unbinding an inproc name frees it at once (closing would free it later)
            with contextlib.suppress(zmq.ZMQError):
                squatter.unbind(name)
        squatter.close(0)


def test_abandoned_pyzmq_clients_never_hang_the_process(suite_env: dict) -> None:
    """Plugins and the CLI drop Clients without close(); collecting them must not block on libzmq."""
    code = ("import gc, sys; sys.path.insert(0, sys.argv[1]); import client_suite as s; bc = s.load_client()\n"
            "for _ in range(20):\n"
            "    c = bc.Client(transport='pyzmq', timeout=10); c.hello(); del c; gc.collect()\n"
            "print('done')")
    proc = subprocess.run([sys.executable, "-c", code, os.path.dirname(suite.__file__)], env=suite_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr
