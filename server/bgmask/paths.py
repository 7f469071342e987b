"""Where bgmask keeps its per-user files; every location can be overridden by an environment variable
so tests, sandboxes and Flatpak setups can point the daemon and its clients at the same place."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from bgmask import errors as E
from bgmask.clientlib import load_client
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
