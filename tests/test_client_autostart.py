"""Discovery and auto-start in the shared client: per-user dirs computed like platformdirs, stale runtime
files, starting exactly one detached daemon when several clients ask at once, and what a dead, frozen or
size-limited daemon looks like to a caller. Every daemon here is real and stopped in teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import platformdirs.macos
import platformdirs.unix
import platformdirs.windows
import pytest

import client_suite
from conftest import RunningDaemon, base_env, start_daemon, wait_until

bc = client_suite.load_client()
TRANSPORTS = ["builtin", "pyzmq"]
# Starts the daemon through a launcher that records its pid first (os.execv keeps the pid), so the test
# can count how many daemons the clients started.
LAUNCHER = ("import os, sys\n"
            "with open(sys.argv[1], 'a') as f: f.write('%d\\n' % os.getpid())\n"
            "os.execv(sys.executable, [sys.executable, '-m', 'bgmask', 'serve', '--default-model', 'u2netp'])\n")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of this process counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True



# ------------------------------------------------------------------------------------ per-user dirs

@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No bgmask or XDG overrides and a private HOME; platformdirs' fallback warnings are expected here."""
    for name in ("BGMASK_RUNTIME_DIR", "BGMASK_CONFIG_DIR", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
                 "WIN_PD_OVERRIDE_LOCAL_APPDATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield tmp_path


def private_dir(path: Path, mode: int = 0o700) -> str:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return str(path)


def xdg_runtime_value(case: str, tmp: Path) -> Any:
    """An XDG_RUNTIME_DIR value for each situation platformdirs judges differently."""
    if case == "unset":
        return None
    if case == "private dir":
        return private_dir(tmp / "xdg")
    if case == "missing, below a private dir":
        return os.path.join(private_dir(tmp / "xdg"), "not-yet")
    if case == "mode 0755":
        return private_dir(tmp / "xdg", 0o755)
    if case == "symlink":
        os.symlink(private_dir(tmp / "real"), tmp / "link")
        return str(tmp / "link")
    if case == "a file":
        (tmp / "file").write_text("x")
        return str(tmp / "file")
    if case == "relative":
        return "relative/run"
    assert case == "below a world-writable dir without sticky bit"
    return os.path.join(private_dir(tmp / "open", 0o777), "run")


XDG_RUNTIME_CASES = ["unset", "private dir", "missing, below a private dir", "mode 0755", "symlink", "a file",
                     "relative", "below a world-writable dir without sticky bit"]


@pytest.mark.parametrize("case", XDG_RUNTIME_CASES)
def test_runtime_dir_matches_platformdirs_on_linux(case: str, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = xdg_runtime_value(case, clean_env)
    if value is not None:
        monkeypatch.setenv("XDG_RUNTIME_DIR", value)
    expected = platformdirs.unix.Unix("bgmask", appauthor=False).user_runtime_dir
    if expected.startswith(os.path.join(tempfile.gettempdir(), "runtime-")):  # shared temp: ours is private
        expected = str(clean_env / "home" / ".cache" / "bgmask" / "run")
    assert bc.runtime_dir() == expected


@pytest.mark.parametrize("xdg", [None, "/abs/config", "relative/config"])
def test_config_dir_matches_platformdirs_on_linux(xdg: Any, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if xdg is not None:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    assert bc.config_dir() == platformdirs.unix.Unix("bgmask", appauthor=False).user_config_dir


def test_a_relative_home_is_not_trusted_like_platformdirs(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "relative-home")
    assert bc.config_dir() == platformdirs.unix.Unix("bgmask", appauthor=False).user_config_dir
    assert os.path.isabs(bc.config_dir())


@pytest.mark.parametrize("xdg", [False, True])
def test_dirs_match_platformdirs_on_macos(xdg: bool, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = platformdirs.macos.MacOS("bgmask", appauthor=False)
    if xdg:
        monkeypatch.setenv("XDG_RUNTIME_DIR", private_dir(clean_env / "xdg"))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(clean_env / "cfg"))
    want = (expected.user_runtime_dir, expected.user_config_dir)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert (bc.runtime_dir(), bc.config_dir()) == want


def test_dirs_match_platformdirs_on_windows(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WIN_PD_OVERRIDE_LOCAL_APPDATA", "C:\\Users\\ann\\AppData\\Local ")
    expected = platformdirs.windows.Windows("bgmask", appauthor=False)
    want = (expected.user_runtime_dir, expected.user_config_dir)
    monkeypatch.setattr(sys, "platform", "win32")
    assert (bc.runtime_dir(), bc.config_dir()) == want


def test_environment_overrides_the_platform_dirs(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGMASK_RUNTIME_DIR", str(clean_env / "r"))
    monkeypatch.setenv("BGMASK_CONFIG_DIR", str(clean_env / "c"))
    assert (bc.runtime_dir(), bc.config_dir()) == (str(clean_env / "r"), str(clean_env / "c"))


# ------------------------------------------------------------------------------------ discovery

@pytest.fixture
def no_daemon_env(isolated_dirs: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """This process pointed at empty per-user dirs, as a plugin on a fresh login would be."""
    for key, value in base_env(isolated_dirs).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BGMASK_ENDPOINT", raising=False)
    monkeypatch.delenv("BGMASK_TOKEN", raising=False)
    return isolated_dirs


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_runtime_file_of_a_dead_daemon_is_ignored(no_daemon_env: dict, daemon: RunningDaemon) -> None:
    # It names the live session daemon, so only the dead pid can stop the client from using it.
    record = {"endpoint": daemon.endpoint, "token": daemon.token, "pid": dead_pid(), "protocol": 2}
    Path(no_daemon_env["BGMASK_RUNTIME_DIR"], "daemon.json").write_text(json.dumps(record))
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client(autostart=False).hello()
    assert err.value.code == "not_running" and "bgmask serve" in err.value.message
    record["pid"] = daemon.pid
    Path(no_daemon_env["BGMASK_RUNTIME_DIR"], "daemon.json").write_text(json.dumps(record))
    assert bc.Client(autostart=False).status()["pid"] == daemon.pid


def test_no_daemon_and_no_recorded_command_says_what_to_run(no_daemon_env: dict) -> None:
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client().hello()
    assert err.value.code == "not_running"
    assert "bgmask install" in err.value.message and "bgmask serve" in err.value.message


def test_shutdown_never_starts_a_daemon(autostart_env: Path) -> None:
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client().shutdown()
    assert err.value.code == "not_running"
    assert not autostart_env.exists(), "a daemon was launched only to be stopped"


def test_a_daemon_that_dies_at_start_is_reported_with_its_log(no_daemon_env: dict) -> None:
    command = [sys.executable, "-c", "import sys; print('boom: the model cache is unreadable'); sys.exit(2)"]
    Path(no_daemon_env["BGMASK_CONFIG_DIR"], "config.json").write_text(json.dumps({"daemon_command": command}))
    started = time.monotonic()
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client(timeout=30).hello()
    assert err.value.code == "not_running"
    assert "status 2" in err.value.message and "boom: the model cache is unreadable" in err.value.message
    assert time.monotonic() - started < 20, "a dead daemon must not be waited for until the timeout"
    log = Path(no_daemon_env["BGMASK_RUNTIME_DIR"], "daemon.log")
    assert str(log) in err.value.message and "boom" in log.read_text()


# ------------------------------------------------------------------------------------ auto-start

@pytest.fixture
def autostart_env(no_daemon_env: dict, tmp_path: Path) -> Iterator[Path]:
    """config.json names the launcher; yields the file of launched pids and stops every daemon launched."""
    launches = tmp_path / "launches.txt"
    command = [sys.executable, "-c", LAUNCHER, str(launches)]
    Path(no_daemon_env["BGMASK_CONFIG_DIR"], "config.json").write_text(json.dumps({"daemon_command": command}))
    yield launches
    pids = [int(line) for line in launches.read_text().split()] if launches.exists() else []
    if any(pid_alive(pid) for pid in pids):
        try:
            bc.Client(autostart=False, timeout=10).shutdown()
        except bc.BgmaskError:
            pass
    for pid in pids:
        if not wait_until(lambda: not pid_alive(pid), 20):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_first_call_starts_a_detached_daemon_and_shutdown_stops_it(autostart_env: Path, transport: str) -> None:
    client = bc.Client(transport=transport, timeout=30)
    assert client.hello()["default_model"] == "u2netp"
    (pid,) = [int(line) for line in autostart_env.read_text().split()]
    runtime = Path(bc.runtime_dir())
    assert json.loads((runtime / "daemon.json").read_text())["pid"] == pid == client.status()["pid"]
    assert os.getsid(pid) == pid, "the daemon must run in its own session, not the editor's"
    assert (runtime / "daemon.log").exists()
    client.shutdown()
    assert wait_until(lambda: not pid_alive(pid))
    assert not (runtime / "daemon.json").exists()


def test_two_processes_asking_at_once_start_one_daemon(autostart_env: Path) -> None:
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('bgmask_client', sys.argv[1])\n"
            "bc = importlib.util.module_from_spec(spec); spec.loader.exec_module(bc)\n"
            "print(bc.Client(transport=sys.argv[2], timeout=60).status()['pid'])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(client_suite.CLIENT_FILE), transport],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for transport in TRANSPORTS]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    launched = [int(line) for line in autostart_env.read_text().split()]
    assert len(launched) == 1, "two daemons were started: %s" % launched
    assert [int(out) for out, _ in outputs] == launched * 2
    assert "already running" not in Path(bc.runtime_dir(), "daemon.log").read_text()


# ------------------------------------------------------------------------------------ dead, frozen, limited

@pytest.fixture
def own_daemon(isolated_dirs: dict, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[RunningDaemon]:
    args = getattr(request, "param", ())
    running = start_daemon(isolated_dirs, "--default-model", "u2netp", *args)
    for key, value in running.env.items():
        monkeypatch.setenv(key, value)
    yield running
    if running.proc.poll() is None:
        os.kill(running.pid, signal.SIGCONT)
    running.stop()


def photo_rgba(size: int = 512) -> tuple:
    arr, w, h = client_suite.photo((size, size))
    return arr.tobytes(), w, h


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_daemon_killed_mid_request_is_connection_lost(own_daemon: RunningDaemon, transport: str) -> None:
    data, w, h = photo_rgba()
    kill = lambda stage, fraction: os.kill(own_daemon.pid, signal.SIGKILL)  # noqa: E731
    started = time.monotonic()
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client(transport=transport, timeout=30).remove(data, w, h, 4, "u8", on_progress=kill)
    assert err.value.code == "connection_lost"
    assert time.monotonic() - started < 20, "a closed connection must be reported at once, not after the timeout"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_frozen_daemon_is_a_timeout(own_daemon: RunningDaemon, transport: str) -> None:
    data, w, h = photo_rgba()
    freeze = lambda stage, fraction: os.kill(own_daemon.pid, signal.SIGSTOP)  # noqa: E731
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client(transport=transport, timeout=2.0).remove(data, w, h, 4, "u8", on_progress=freeze)
    assert err.value.code == "timeout"
    os.kill(own_daemon.pid, signal.SIGCONT)
    assert bc.Client(transport=transport).hello()["protocol"] == 2, "the thawed daemon serves new clients"


@pytest.mark.parametrize("own_daemon", [("--max-message-bytes", "100000", "--max-pixels", "20000")], indirect=True)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_too_large_is_refused_before_sending(own_daemon: RunningDaemon, transport: str) -> None:
    client = bc.Client(transport=transport, timeout=10)
    data, w, h = photo_rgba(160)  # 25,600 pixels, 102,400 bytes: over both limits
    with pytest.raises(bc.BgmaskError) as local:
        client.remove(data, w, h, 4, "u8")
    assert local.value.code == "too_large" and "pixels" in local.value.message
    # The daemon says the same about the same request.
    image = {"width": w, "height": h, "channels": 4, "sample_type": "u8", "linear": False}
    with pytest.raises(bc.BgmaskError) as remote:
        client._call("remove", {"image": image}, [memoryview(data[:4])])
    assert (remote.value.code, remote.value.message) == (local.value.code, local.value.message)
    gray, w, h = client_suite.photo((110, 110), "L")  # 12,100 pixels and bytes: within both limits
    assert len(client.remove(gray.tobytes(), w, h, 1, "u8")) == w * h
    rgba, w, h = client_suite.photo((100, 100))
    wide = rgba.astype("<f4") / 255  # 10,000 pixels but 160,000 bytes
    with pytest.raises(bc.BgmaskError) as big:
        client.remove(wide.tobytes(), w, h, 4, "f32")
    assert big.value.code == "too_large" and "160,000 bytes" in big.value.message
    # Sent past the check, libzmq drops the connection without a word: that is why the client checks.
    with pytest.raises(bc.BgmaskError) as dropped:
        client._call("remove", {"image": dict(image, width=w, height=h, sample_type="f32")},
                     [memoryview(wide.tobytes())])
    assert dropped.value.code == "connection_lost"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_kept_client_follows_a_restarted_daemon(no_daemon_env: dict, transport: str) -> None:
    first = start_daemon(no_daemon_env, "--default-model", "u2netp")
    second = None
    try:
        client = bc.Client(transport=transport, timeout=30)
        assert client.status()["pid"] == first.pid
        first.stop()
        second = start_daemon(no_daemon_env, "--default-model", "u2netp")
        assert client.status()["pid"] == second.pid, "the kept connection led to the old daemon"
    finally:
        first.stop()
        if second is not None:
            second.stop()
