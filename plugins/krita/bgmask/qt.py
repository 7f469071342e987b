"""The Qt bindings Krita itself uses: PyQt5 in Krita 5, PyQt6 in Krita 6 (which refuses PyQt5 imports).

Decided once, at import: `import krita` loads the PyQt its own bindings were built against, so that one is
taken. Importing the other would load a second Qt into Krita (or fail: Krita 6 answers `import PyQt5` with
"This version of Krita is not compatible with PyQt5!"). The rest of the plugin uses `QtCore`, `QtGui` and
`QtWidgets` from here and writes enums fully qualified (`Qt.AlignmentFlag.AlignTop`), which both bindings
accept; nothing else differs for the calls the plugin makes (signals, QThread, `open()` for dialogs).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import krita  # noqa: F401 - loads Krita's own PyQt before the choice below

BINDINGS = ("PyQt6", "PyQt5")


def _binding() -> str:
    """The PyQt package Krita has loaded; failing that (not inside Krita), the first one that imports."""
    for name in BINDINGS:
        if f"{name}.QtCore" in sys.modules:
            return name
    for name in BINDINGS[::-1]:  # PyQt5 first: a PyQt6 beside a Qt 5 Krita must not be picked
        try:
            importlib.import_module(f"{name}.QtCore")
        except ImportError:
            continue
        return name
    raise ImportError("bgmask needs PyQt5 (Krita 5) or PyQt6 (Krita 6); neither can be imported")


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{API}.{name}")


API = _binding()
QtCore = _module("QtCore")
QtGui = _module("QtGui")
QtWidgets = _module("QtWidgets")
