"""Where bgmask keeps its per-user files; every location can be overridden by an environment variable
so tests, sandboxes and Flatpak setups can point the daemon and its clients at the same place."""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import platformdirs

from bgmask import errors as E
from bgmask.client.loader import load_client
from bgmask.errors import BgmaskError

APP = "bgmask"


def _dir(env: str, default: str) -> Path:
    value = os.environ.get(env)
    return Path(value) if value else Path(default)


def runtime_dir() -> Path:
    """Holds daemon.json (endpoint + token), daemon.lock and an auto-started daemon's log; private to the user.
    The client's rule (plugins/common/bgmask_client.py), so daemon and clients always agree on it: never a
    shared temp dir, which another user could create first."""
    return Path(load_client().runtime_dir())


def config_dir() -> Path:
    """Holds config.json (how to start the daemon) and models.json (imported models)."""
    return _dir("BGMASK_CONFIG_DIR", platformdirs.user_config_dir(APP, appauthor=False))


def cache_dir() -> Path:
    """Holds downloaded model weights (models/) and optimised model files."""
    return _dir("BGMASK_CACHE_DIR", platformdirs.user_cache_dir(APP, appauthor=False))


def models_dir() -> Path:
    return cache_dir() / "models"


def runtime_file() -> Path:
    return runtime_dir() / "daemon.json"


def lock_file() -> Path:
    return runtime_dir() / "daemon.lock"


def config_file() -> Path:
    return config_dir() / "config.json"


def imported_models_file() -> Path:
    return config_dir() / "models.json"


def ensure_private_dir(path: Path) -> Path:
    """Create a directory readable only by the user (the runtime dir holds the token), or refuse one that is a
    symlink, someone else's or (the runtime dir) writable by others (E.UNSAFE_RUNTIME_DIR, naming it and the
    variable to set instead): the client's check. The config dir may be a symlink (GNU stow and other dotfile
    managers make one): its target is checked instead; our own group-writable config dir is made 0700."""
    client = load_client()
    runtime, config = path == runtime_dir(), path == config_dir()
    variable = "BGMASK_RUNTIME_DIR" if runtime else "BGMASK_CONFIG_DIR" if config else None
    try:
        return Path(client.private_dir(str(path), tighten=not runtime, follow_links=config, variable=variable))
    except client.BgmaskError as exc:
        raise BgmaskError(E.UNSAFE_RUNTIME_DIR, exc.message[:1].upper() + exc.message[1:]) from None


STALE_TEMP_S = 3600  # a JSON write takes milliseconds: a temporary file this old belongs to a killed writer


def write_json_atomically(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `path` (mkstemp: mode 0600) and rename it over, so readers never see
    half a file and a crash leaves the old one; temporary files a killed writer left beside it are removed. A
    missing folder is created (one that must be private is made so by the caller first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _remove_stale_temporaries(path)


def _remove_stale_temporaries(path: Path) -> None:
    cutoff = time.time() - STALE_TEMP_S
    for temp in path.parent.glob(glob.escape(path.name) + ".*.tmp"):
        try:
            if temp.lstat().st_mtime < cutoff:
                temp.unlink()
        except OSError:
            pass  # gone meanwhile, or not ours to remove
