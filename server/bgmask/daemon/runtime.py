"""One daemon per user: the lock, the runtime file clients discover it by, and the recorded start command."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any, Optional

from bgmask import paths
from bgmask.client.loader import load_client
from bgmask.errors import BgmaskError

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a stale runtime file names a dead one); the client's check,
    so daemon and clients agree on staleness on every OS."""
    return bool(load_client().pid_alive(pid))


class DaemonLock:
    """An exclusive lock on daemon.lock held for the daemon's lifetime; the OS releases it if we die."""

    def __init__(self, path: Optional[Path] = None) -> None:
        self.path = path or paths.lock_file()
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        paths.ensure_private_dir(self.path.parent)
        fd = load_client().open_private(str(self.path), os.O_RDWR | os.O_CREAT)
        try:
            if sys.platform == "win32":
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace `path` with JSON readable only by the user (it may hold the token), in a private folder."""
    paths.ensure_private_dir(path.parent)
    paths.write_json_atomically(path, data)


def _read_json(path: Path) -> Any:
    """A JSON file of ours, read without following a symlink planted in its place."""
    with os.fdopen(load_client().open_private(str(path), os.O_RDONLY), encoding="utf-8") as f:
        return json.load(f)


def read_runtime(path: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """The live daemon's runtime record, or None when absent, unreadable or stale (dead pid)."""
    path = path or paths.runtime_file()
    try:
        data = _read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int) or not pid_alive(data["pid"]):
        return None
    return data


def remove_runtime(path: Optional[Path] = None, pid: Optional[int] = None) -> None:
    """Remove the runtime file, but only if it is ours (pid given) or stale."""
    path = path or paths.runtime_file()
    try:
        data = _read_json(path)
        if pid is not None and data.get("pid") != pid:
            return
    except (OSError, ValueError):
        pass
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# Flatpak shares $XDG_RUNTIME_DIR/app/<app id>/ between the host and the sandbox (a tmpfs: the token never
# reaches the disk), and both Flathub builds share the host network, so a copy there is all they need.
FLATPAK_APPS = ("org.gimp.GIMP", "org.kde.krita")


def sandbox_runtime_files() -> list[Path]:
    """Where copies of daemon.json go for sandboxed GIMP/Krita installed for this user (Linux only)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if not sys.platform.startswith("linux") or not xdg:
        return []
    return [Path(xdg) / "app" / app / "bgmask" / "daemon.json"
            for app in FLATPAK_APPS if (Path.home() / ".var" / "app" / app).is_dir()]


def publish_runtime(record: dict[str, Any]) -> None:
    """Write the copies of the runtime file for sandboxed editors (one that cannot be written is skipped), then
    the runtime file itself: whoever sees the daemon published finds the copies there too."""
    for copy in sandbox_runtime_files():
        try:
            copy.parent.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private_json(copy, record)
        except (OSError, BgmaskError) as exc:
            log.warning("no copy of the runtime file for the sandboxed editor at %s: %s", copy,
                        getattr(exc, "message", None) or exc)
    write_private_json(paths.runtime_file(), record)


def withdraw_runtime(pid: int) -> None:
    """Remove the runtime file and its sandbox copies, where they still name this daemon."""
    for path in [paths.runtime_file(), *sandbox_runtime_files()]:
        remove_runtime(path, pid=pid)


def daemon_command() -> list[str]:
    """How to start this daemon in the foreground from any process: this Python, this package."""
    return [sys.executable, "-m", "bgmask", "serve"]


def record_daemon_command() -> None:
    """Store daemon_command in config.json (keeping other keys) so clients can auto-start the daemon."""
    path = paths.config_file()
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            config = {}
    except (OSError, ValueError):
        config = {}
    if config.get("daemon_command") == daemon_command():
        return
    config["daemon_command"] = daemon_command()
    write_private_json(path, config)  # creates the config dir, or refuses an unsafe one (unsafe_runtime_dir)


LOG_MAX_BYTES = 1024**2  # the runtime dir is often a small RAM-backed tmpfs: at most 2 MiB of log there


class RotatingLog(logging.handlers.RotatingFileHandler):
    """The daemon's log file (BGMASK_LOG_FILE, set by a client that auto-starts it): size-capped with one old
    copy, opened without following a symlink planted in its place. When the daemon's own stdout/stderr are that
    file (the auto-start case), they follow each rotation, so a crash's traceback lands in the live log."""

    def __init__(self, path: str) -> None:
        self._stdio = _same_file(path, 2)
        super().__init__(path, maxBytes=LOG_MAX_BYTES, backupCount=1, encoding="utf-8")

    def _open(self):  # type: ignore[no-untyped-def]
        fd = load_client().open_private(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        stream = os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)
        if self._stdio:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
        return stream


def _same_file(path: str, fd: int) -> bool:
    try:
        return os.path.samestat(os.lstat(path), os.fstat(fd))
    except OSError:
        return False
