"""Where bgmask keeps its per-user files; every location can be overridden by an environment variable
so tests, sandboxes and Flatpak setups can point the daemon and its clients at the same place."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import platformdirs

APP = "bgmask"


def _dir(env: str, default: str) -> Path:
    value = os.environ.get(env)
    return Path(value) if value else Path(default)


def runtime_dir() -> Path:
    """Holds daemon.json (endpoint + token) and daemon.lock; private to the user."""
    with warnings.catch_warnings():  # no XDG_RUNTIME_DIR (cron, ssh, containers): the fallback is fine
        warnings.simplefilter("ignore")
        default = platformdirs.user_runtime_dir(APP, appauthor=False)
    return _dir("BGMASK_RUNTIME_DIR", default)


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
    """Create a directory readable only by the user (the runtime dir holds the token)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    return path
