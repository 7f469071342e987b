"""Load the one stdlib-only client file that the plugins use, so the CLI speaks through the same code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def plugins_root() -> Path:
    """The shipped plug-in tree: `bgmask.plugins` in an installed package, `<checkout>/plugins` when bgmask
    runs from a source tree (where server/ is on sys.path and bgmask.plugins is not a package)."""
    try:
        import bgmask.plugins

        return Path(bgmask.plugins.__file__).parent
    except ImportError:
        checkout = Path(__file__).resolve().parents[3] / "plugins"
        if (checkout / "common" / "bgmask_client.py").is_file():
            return checkout
        raise


def client_source() -> Path:
    """Path of plugins/common/bgmask_client.py."""
    return plugins_root() / "common" / "bgmask_client.py"


def load_client() -> ModuleType:
    """Import bgmask_client (once) from the shipped file."""
    module = sys.modules.get("bgmask_client")
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location("bgmask_client", client_source())
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bgmask_client"] = module
    spec.loader.exec_module(module)
    return module
