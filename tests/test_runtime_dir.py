"""The runtime directory holds the token and names the daemon's endpoint: a directory another user planted
(or could change) is never trusted, by the clients or by the daemon, and no file in it is opened through a
symbolic link. The planted directory is simulated by chowning it to another uid, which needs root."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import client_suite
from conftest import base_env

bc = client_suite.load_client()
TRANSPORTS = ["builtin", "pyzmq"]
STRANGER = 65534  # nobody
LOGIN_DIR_PROBLEM = bc._runtime_dir_problem  # the real check, before fallback_env replaces it
needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")


@pytest.fixture
def fallback_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No XDG_RUNTIME_DIR (ssh, cron, containers) and no override: the client's own fallback is used."""
    for name in ("BGMASK_RUNTIME_DIR", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "BGMASK_ENDPOINT", "BGMASK_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BGMASK_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setattr(bc, "_runtime_dir_problem", lambda *args, **kwargs: True)  # as if no /run/user/<uid>
    return Path(bc.runtime_dir())


def no_login_runtime_dir() -> bool:
    """Whether a subprocess falls back too: this machine has no usable /run/user/<uid>."""
    return bool(LOGIN_DIR_PROBLEM("/run/user/%d" % os.getuid(), missing_ok=False))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """The stranger's endpoint: it counts on receiving the victim's pixels."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.5)
    yield sock
    sock.close()


def plant(runtime: Path, endpoint: str, owner: int = STRANGER, mode: int = 0o755) -> None:
    runtime.mkdir(parents=True)
    (runtime / "daemon.json").write_text(json.dumps({"endpoint": endpoint, "token": "x" * 43, "pid": os.getpid(),
                                                     "protocol": bc.PROTOCOL}))
    os.chown(runtime / "daemon.json", owner, owner)
    os.chown(runtime, owner, owner)
    runtime.chmod(mode)


def nobody_connected(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except socket.timeout:
        return True
    return False


def test_the_fallback_is_private_and_not_a_shared_temp_dir(fallback_env: Path) -> None:
    import tempfile

    assert not str(fallback_env).startswith(tempfile.gettempdir() + os.sep + "runtime-")
    created = Path(bc.private_runtime_dir())
    assert created == fallback_env and (created.stat().st_mode & 0o777) == 0o700


@needs_root
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_planted_runtime_dir_gets_no_pixel_and_no_success(fallback_env: Path, listener: socket.socket,
                                                            transport: str) -> None:
    plant(fallback_env, "tcp://127.0.0.1:%d" % listener.getsockname()[1])
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client(transport=transport, timeout=5).remove(bytes(4 * 4 * 3), 4, 4, 3, "u8")
    assert err.value.code == "unsafe_runtime_dir"
    assert str(fallback_env) in err.value.message and "belongs to user id 65534" in err.value.message
    assert nobody_connected(listener), "the client connected to the endpoint a stranger planted"


@needs_root
def test_the_daemon_refuses_a_planted_runtime_dir_and_says_so(fallback_env: Path, listener: socket.socket,
                                                              isolated_dirs: dict) -> None:
    if not no_login_runtime_dir():
        pytest.skip("this machine has a /run/user/<uid>, which the daemon would use instead of the fallback")
    plant(fallback_env, "tcp://127.0.0.1:%d" % listener.getsockname()[1])
    env = base_env(isolated_dirs)
    del env["BGMASK_RUNTIME_DIR"]
    env.pop("XDG_RUNTIME_DIR", None)
    env["HOME"] = os.environ["HOME"]
    done = subprocess.run([sys.executable, "-m", "bgmask", "serve", "--preload-delay", "-1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert str(fallback_env) in done.stderr and "not safe to use" in done.stderr
    assert "BGMASK_RUNTIME_DIR" in done.stderr


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_runtime_dir_others_can_write_is_refused(fallback_env: Path, listener: socket.socket, mode: int) -> None:
    plant(fallback_env, "tcp://127.0.0.1:%d" % listener.getsockname()[1], owner=os.getuid(), mode=mode)
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client(timeout=5).hello()
    assert err.value.code == "unsafe_runtime_dir" and "others can write" in err.value.message
    assert nobody_connected(listener)


def test_a_symlink_as_the_runtime_dir_is_refused(fallback_env: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    fallback_env.parent.mkdir(parents=True)
    fallback_env.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client(timeout=5).hello()
    assert err.value.code == "unsafe_runtime_dir" and "symbolic link" in err.value.message


@pytest.mark.parametrize("name", ["daemon.log", "spawn.lock"])
def test_no_file_of_the_user_is_written_through_a_planted_symlink(fallback_env: Path, tmp_path: Path,
                                                                   name: str) -> None:
    victim = tmp_path / "thesis.txt"
    victim.write_text("years of work\n")
    Path(bc.private_runtime_dir())
    (fallback_env / name).symlink_to(victim)
    command = [sys.executable, "-c", "import sys; print('daemon output'); sys.exit(1)"]
    Path(os.environ["BGMASK_CONFIG_DIR"]).mkdir()
    Path(os.environ["BGMASK_CONFIG_DIR"], "config.json").write_text(json.dumps({"daemon_command": command}))
    with pytest.raises(bc.BgmaskError) as err:
        bc.Client(timeout=5).hello()
    assert err.value.code == "not_running" and str(fallback_env / name) in err.value.message
    assert victim.read_text() == "years of work\n"


def test_the_daemon_side_ignores_a_symlinked_runtime_file(isolated_dirs: dict, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from bgmask.daemon import runtime

    monkeypatch.setenv("BGMASK_RUNTIME_DIR", isolated_dirs["BGMASK_RUNTIME_DIR"])
    real = tmp_path / "foreign.json"
    real.write_text(json.dumps({"endpoint": "tcp://127.0.0.1:1", "token": "t", "pid": os.getpid()}))
    link = Path(isolated_dirs["BGMASK_RUNTIME_DIR"], "daemon.json")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(real)
    assert runtime.read_runtime() is None


def test_the_daemon_log_is_size_capped_and_never_written_through_a_symlink(tmp_path: Path) -> None:
    import logging

    from bgmask.daemon import runtime

    path = tmp_path / "daemon.log"
    handler = runtime.RotatingLog(str(path))
    logger = logging.getLogger("bgmask.test-rotation")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for n in range(40_000):  # about 4 MiB of lines
            logger.warning("line %06d %s", n, "x" * 90)
    finally:
        logger.removeHandler(handler)
        handler.close()
    sizes = sorted(p.stat().st_size for p in tmp_path.iterdir())
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["daemon.log", "daemon.log.1"]
    assert sizes[-1] <= runtime.LOG_MAX_BYTES and sum(sizes) <= 2 * runtime.LOG_MAX_BYTES
    assert "line 039999" in path.read_text()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    path.unlink()
    path.symlink_to(victim)
    with pytest.raises(OSError):
        runtime.RotatingLog(str(path))
    assert victim.read_text() == "keep\n"


def test_an_own_config_dir_left_group_writable_by_a_umask_is_tightened_not_refused(tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from bgmask import paths
    from bgmask.daemon import runtime

    config = tmp_path / "config"
    config.mkdir()
    config.chmod(0o775)  # what a umask of 002 gives
    monkeypatch.setenv("BGMASK_CONFIG_DIR", str(config))
    monkeypatch.setenv("BGMASK_RUNTIME_DIR", str(tmp_path / "run"))
    runtime.write_private_json(paths.config_file(), {"daemon_command": ["x"]})
    assert (config.stat().st_mode & 0o777) == 0o700
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    runtime_dir.chmod(0o775)
    with pytest.raises(Exception) as err:
        runtime.write_private_json(paths.runtime_file(), {"pid": 1})
    assert getattr(err.value, "code", None) == "unsafe_runtime_dir" and str(runtime_dir) in str(err.value)


def test_a_sandbox_copy_that_cannot_be_written_is_skipped_and_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from bgmask import paths
    from bgmask.daemon import runtime

    monkeypatch.setenv("BGMASK_RUNTIME_DIR", str(tmp_path / "run"))
    copy_dir = tmp_path / "xdg" / "app" / "org.gimp.GIMP" / "bgmask"
    copy_dir.parent.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    copy_dir.symlink_to(tmp_path / "elsewhere")  # refused by private_dir with unsafe_runtime_dir
    monkeypatch.setattr(runtime, "sandbox_runtime_files", lambda: [copy_dir / "daemon.json"])
    runtime.publish_runtime({"pid": os.getpid(), "endpoint": "tcp://127.0.0.1:1", "token": "t"})
    assert json.loads(paths.runtime_file().read_text())["pid"] == os.getpid()
    assert not (copy_dir / "daemon.json").exists()
    assert str(copy_dir / "daemon.json") in caplog.text and "symbolic link" in caplog.text


def link_config_dir(dirs: dict, target: Path) -> Path:
    """Make the config dir a symlink to `target`, as a dotfile manager does."""
    link = Path(dirs["BGMASK_CONFIG_DIR"])
    link.rmdir()
    link.symlink_to(target)
    return link


def test_a_config_dir_linked_by_a_dotfile_manager_is_used(isolated_dirs: dict, tmp_path: Path) -> None:
    """GNU stow makes ~/.config/bgmask a symlink to the user's own dotfiles folder: the daemon starts and
    records its start command there; the runtime dir next to it stays strict."""
    from conftest import start_daemon

    target = tmp_path / "dotfiles" / "bgmask"
    target.mkdir(parents=True, mode=0o700)
    link = link_config_dir(isolated_dirs, target)
    d = start_daemon(dict(isolated_dirs), "--preload-delay", "-1")
    try:
        assert json.loads((target / "config.json").read_text())["daemon_command"][-1] == "serve"
        assert link.is_symlink() and (target.stat().st_mode & 0o777) == 0o700
    finally:
        assert d.stop() == 0


def test_a_config_link_to_something_unsafe_is_refused_naming_its_variable(isolated_dirs: dict, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    link = link_config_dir(isolated_dirs, tmp_path / "a-file")
    done = subprocess.run([sys.executable, "-m", "bgmask", "serve", "--preload-delay", "-1"],
                          env=base_env(isolated_dirs), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert str(link) in done.stderr and "not a directory" in done.stderr and "BGMASK_CONFIG_DIR" in done.stderr
    assert "BGMASK_RUNTIME_DIR" not in done.stderr


def test_serve_publishes_nothing_before_the_config_dir_check_that_stops_it(isolated_dirs: dict, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from bgmask.daemon import runtime
    from bgmask.daemon.server import Daemon, DaemonConfig
    from bgmask.errors import BgmaskError

    for key, value in isolated_dirs.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "a-file").write_text("")
    link_config_dir(isolated_dirs, tmp_path / "a-file")
    published: list = []
    monkeypatch.setattr(runtime, "publish_runtime", published.append)
    with pytest.raises(BgmaskError) as err:
        Daemon(DaemonConfig(preload_delay=-1)).serve()
    assert err.value.code == "unsafe_runtime_dir" and published == []


@pytest.mark.parametrize("mode, reason", [(0o700, None), (0o755, "not_0700"), (0o775, "others_write")])
def test_the_directory_check_gives_a_reason_code_that_tightening_reads(tmp_path: Path, mode: int, reason: str) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    folder.chmod(mode)
    assert bc._dir_problem(str(folder)) == reason
    assert bc.private_dir(str(folder), tighten=True) == str(folder) and (folder.stat().st_mode & 0o777) == 0o700
    (tmp_path / "link").symlink_to(folder)
    assert bc._dir_problem(str(tmp_path / "link")) == "symlink" and bc._dir_problem(str(tmp_path / "link"), True) is None
