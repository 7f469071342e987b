"""Test harness for real Krita: runs the script named by $BGMASK_KRITA_TEST, then quits Krita.

Inert unless $BGMASK_KRITA_TEST is set. Half a second after the first main window appears the script
is executed with these globals: `Krita`, `result_path` ($HOSTAPPS_RESULT, where it writes its JSON) and
`data_dir` ($HOSTAPPS_DATA). If it defines `main` as a generator function, each `yield secs` returns to
Krita's top-level event loop for that long before the script resumes: Krita 5.2 delivers node
additions and active-node changes to the GUI only there, not in a nested processEvents(). An exception
is written to result_path as {"ok": false, "error": traceback}. At the end every document is marked
unmodified (no "save changes?" dialog) and File > Quit is triggered; os._exit(3) follows if Krita has
not quit 10 s later.
"""

import importlib
import json
import os
import sys
import traceback

from krita import Extension, Krita

# Krita's own bindings have loaded their PyQt (Krita 5: PyQt5, Krita 6: PyQt6); use that one.
QTimer = importlib.import_module("PyQt6.QtCore" if "PyQt6.QtCore" in sys.modules else "PyQt5.QtCore").QTimer

TEST = os.environ.get("BGMASK_KRITA_TEST")
RESULT = os.environ.get("HOSTAPPS_RESULT", "/tmp/bgmask-krita-result.json")


def _fail(text):
    with open(RESULT, "w") as f:
        json.dump({"ok": False, "error": text}, f, indent=1)


def _quit():
    app = Krita.instance()
    for doc in app.documents():
        doc.setModified(False)
    app.action("file_quit").trigger()
    QTimer.singleShot(10000, lambda: os._exit(3))


def _step(gen):
    """Advance the generator test by one `yield`, then come back after the delay it asked for."""
    try:
        delay = next(gen)
    except StopIteration:
        QTimer.singleShot(0, _quit)
        return
    except Exception:  # noqa: BLE001 - the outer test reads it from result_path
        _fail(traceback.format_exc())
        QTimer.singleShot(0, _quit)
        return
    QTimer.singleShot(int(1000 * float(delay or 0)), lambda: _step(gen))


def _run():
    scope = {"Krita": Krita, "result_path": RESULT, "data_dir": os.environ.get("HOSTAPPS_DATA", ""),
             "__name__": "__bgmask_test__", "__file__": TEST}
    try:
        with open(TEST) as f:
            exec(compile(f.read(), TEST, "exec"), scope)
        main = scope.get("main")
        if main is not None:
            result = main()
            if hasattr(result, "__next__"):
                _step(result)
                return
    except Exception:  # noqa: BLE001
        _fail(traceback.format_exc())
    QTimer.singleShot(0, _quit)


class TestRunner(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self._started = False

    def setup(self):
        if TEST:
            Krita.instance().notifier().windowCreated.connect(self._on_window)

    def _on_window(self):
        if not self._started:
            self._started = True
            QTimer.singleShot(500, _run)

    def createActions(self, window):
        pass


Krita.instance().addExtension(TestRunner(Krita.instance()))
