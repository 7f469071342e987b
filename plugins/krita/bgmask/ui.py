"""The Krita side: a "Background Removal" docker, a Layer-menu action, and the thread that talks to the daemon.

One Controller per Krita process runs at most one request at a time; every docker (one per window)
and the menu action go through it. Requests (one layer: core.Job; an animated layer's frames:
frames.FramesJob) run in a QThread, results are applied on the UI thread (queued signals; a frames result
in steps that return to Krita's event loop), and errors are shown in the docker and
in a message box.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Generator, Iterator, List, Optional, Tuple

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

from . import core, frames
from .qt import QtCore, QtGui, QtWidgets

DOCKER_ID = "bgmask_docker"
ACTION_ID = "bgmask_remove_background"
STAGES = {"queued": "Waiting in the daemon's queue", "downloading": "Downloading the model",
          "loading": "Loading the model", "inferring": "Finding the subject", "refining": "Refining edges",
          "connecting": "Connecting to the daemon"}

# The number settings' spin boxes: (setting, label, tooltip, decimals, step, suffix); ranges from core.
NUMBER_FIELDS = (
    ("hardness", "Hardness:", "Steepen the soft edge without cutting it: 0 keeps the model's edge, 1 narrows "
     "an 8-15 px edge to 1-2 px", 2, 0.05, ""),
    ("shift_edge", "Shift edge:", "Grow (positive) or shrink (negative) the subject by this many pixels; "
     "soft detail keeps its shape", 1, 1.0, " px"),
    ("feather", "Feather:", "Soften the edge: a hard edge becomes a ramp about twice this wide", 1, 1.0, " px"),
    ("fill_holes", "Fill holes under:", "Make enclosed holes whose area is smaller than this opaque", 0, 10, " px²"),
    ("remove_specks", "Remove specks under:", "Remove separate islands whose area is smaller than this", 0, 10,
     " px²"),
    ("padding", "Selection context:", "With a selection: how much of the layer around it the model sees, as a "
     "fraction of the selection's longer side", 2, 0.05, ""),
)


def _make_client(autostart: bool) -> Any:
    """A client for the user's daemon: $BGMASK_ENDPOINT/$BGMASK_TOKEN (never auto-started) or the runtime file."""
    return core.client_module().Client(autostart=autostart)


def _read_all(steps: Generator[Tuple[int, int], None, Any]) -> Any:
    """frames.prepare run to its end in one go: returning to Krita's event loop between frames made Krita 5.2.9
    abort on a later node activation (kis_node_manager "shape"), so the frames are read as one layer is."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class _RemovalThread(QtCore.QThread):
    """Runs one Job.run off the UI thread; the outcome comes back as queued signals."""

    progressed = QtCore.pyqtSignal(str, float, int, int)  # stage, fraction (-1: unknown), frame, frames (-1: one)
    succeeded = QtCore.pyqtSignal(object)        # core.Reply or frames.FramesReply
    failed = QtCore.pyqtSignal(str, str)         # code, message

    def __init__(self, job: Any, client: Any, parent: QtCore.QObject) -> None:
        super().__init__(parent)
        self.job, self.client = job, client
        self.cancel_event = threading.Event()

    def _on_progress(self, stage: str, fraction: Optional[float], frame: Optional[Tuple[int, int]] = None) -> None:
        index, count = frame or (-1, -1)
        self.progressed.emit(stage, -1.0 if fraction is None else float(fraction), index, count)

    def run(self) -> None:
        errors = core.client_module()
        try:
            reply = self.job.run(self.client, on_progress=self._on_progress, cancel=self.cancel_event.is_set)
        except errors.BgmaskError as exc:
            self.failed.emit(exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug must reach the user, not kill the thread silently
            self.failed.emit("internal", f"{type(exc).__name__}: {exc}")
        else:
            self.succeeded.emit(reply)
        finally:
            self.client.close()


class _StatusThread(QtCore.QThread):
    """Asks the daemon (never starting one) for its status and model list."""

    done = QtCore.pyqtSignal(object, list, str)  # status dict or None, model names, why not connected

    def run(self) -> None:
        explicit = False
        try:
            with _make_client(autostart=False) as client:
                explicit = client.endpoint is not None  # $BGMASK_ENDPOINT: never auto-started
                status = client.status()
                names = [m["name"] for m in client.models()]
        except Exception as exc:  # noqa: BLE001 - any failure just means "not connected"
            if getattr(exc, "code", "") == "not_running" and not explicit:
                self.done.emit(None, [], "not running; it starts when you remove a background.")
            else:
                self.done.emit(None, [], getattr(exc, "message", None) or str(exc))
        else:
            self.done.emit(status, names, "")


class Controller(QtCore.QObject):
    """Runs requests one at a time and tells every docker what is going on."""

    busy_changed = QtCore.pyqtSignal(bool)
    progress = QtCore.pyqtSignal(str, int)        # text, percent (-1: unknown)
    status_changed = QtCore.pyqtSignal(str)
    models_changed = QtCore.pyqtSignal(list)      # model names
    outcome = QtCore.pyqtSignal(bool, str)        # ok, sentence

    def __init__(self, parent: QtCore.QObject) -> None:
        super().__init__(parent)
        self._thread: Optional[_RemovalThread] = None
        self._applying = False  # a frames result is being added to the document, in steps
        self._status_thread: Optional[_StatusThread] = None
        self._status: Optional[Dict[str, Any]] = None
        self._status_error = ""
        self.models: List[str] = []

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def status_text(self) -> str:
        return core.describe_status(self._status, core.load_settings().model, self._status_error)

    def refresh_status(self) -> None:
        if self._status_thread is not None:
            return
        self._status_thread = _StatusThread(self)
        self._status_thread.done.connect(self._on_status)
        self._status_thread.finished.connect(self._status_thread.deleteLater)
        self._status_thread.start()

    def _on_status(self, status: Optional[Dict[str, Any]], names: List[str], error: str) -> None:
        self._status_thread = None
        self._status, self._status_error = status, error
        if status is not None and names != self.models:
            self.models = names
            self.models_changed.emit(names)
        self.status_changed.emit(self.status_text())

    def start(self) -> None:
        """Remove the background of the active layer of the active document with the saved settings."""
        if self.busy:
            self._report(False, "A background removal is already running.")
            return
        settings = core.load_settings()
        try:
            doc = Krita.instance().activeDocument()
            node = core.target_layer(doc)
            if frames.wanted(node, settings):
                job = _read_all(frames.prepare(doc, node, settings))
            else:
                job = core.prepare(doc, node, settings)
        except core.PluginError as exc:
            self._report(False, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a Krita API failure: tell the user; nothing was changed
            self._report(False, f"Could not read the layer: {type(exc).__name__}: {exc}")
            return
        self._launch(job)

    def _launch(self, job: Any) -> None:
        """Send the job to the daemon from a thread; the docker is busy until its outcome is in."""
        try:
            client = _make_client(autostart=True)
        except Exception as exc:  # noqa: BLE001 - bgmask_client.py missing or broken: nothing was changed
            self._report(False, str(exc) if isinstance(exc, core.PluginError)
                         else f"Could not reach the daemon: {type(exc).__name__}: {exc}")
            self._done()
            return
        self._thread = _RemovalThread(job, client, self)
        self._thread.progressed.connect(self._on_progress)
        self._thread.succeeded.connect(self._on_success)
        self._thread.failed.connect(self._on_failure)
        self._thread.finished.connect(self._thread.deleteLater)
        self.busy_changed.emit(True)
        self.progress.emit(STAGES["connecting"], -1)
        self._thread.start()

    def cancel(self) -> None:
        if self._thread is not None and not self._applying:  # the masks are in: adding them is not stopped
            self._thread.cancel_event.set()  # polled by the client, which then sends the daemon a cancel
            self.progress.emit("Cancelling", -1)

    def _on_progress(self, stage: str, fraction: float, index: int, count: int) -> None:
        text = STAGES.get(stage, stage)
        if count <= 0:
            self.progress.emit(text, -1 if fraction < 0 else int(round(100 * fraction)))
            return
        done = index + max(0.0, fraction)  # frames finished, plus this one's stage
        self.progress.emit(f"Frame {index + 1} of {count}: {text}", int(100 * done / count))

    def _on_success(self, reply: Any) -> None:
        if isinstance(reply, frames.FramesReply):
            self._applying = True
            self.progress.emit("Adding the keyframed mask", -1)
            self._apply_steps(frames.apply(self._thread.job, reply))
            return
        try:
            self._report(True, core.apply(self._thread.job, reply.mask, reply.model, reply.colours))
        except core.PluginError as exc:
            self._report(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - a Krita API failure: tell the user rather than lose it
            self._report(False, f"Could not add the result to the image: {type(exc).__name__}: {exc}")
        finally:
            self._done()

    def _apply_steps(self, steps: Iterator[float]) -> None:
        """Run frames.apply up to its next pause, then come back after it from Krita's event loop."""
        try:
            delay = next(steps)
        except StopIteration as done:
            self._report(True, done.value)
        except core.PluginError as exc:
            self._report(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - a Krita API failure: tell the user rather than lose it
            self._report(False, f"Could not add the masks to the image: {type(exc).__name__}: {exc}")
        else:
            QtCore.QTimer.singleShot(int(1000 * delay), lambda: self._apply_steps(steps))
            return
        self._done()

    def _on_failure(self, code: str, message: str) -> None:
        if code == "cancelled":
            self.outcome.emit(True, "Cancelled; the image was not changed.")
        else:
            self._report(False, f"{message} [{code}]")
        self._done()

    def _done(self) -> None:
        """Idle again only once the outcome is in the document: applying it may spin Krita's event loop
        (Node.addChildNode waits for its stroke), and a second click must not slip in meanwhile."""
        self._thread = None
        self._applying = False
        self.busy_changed.emit(False)
        self.refresh_status()

    def _report(self, ok: bool, text: str) -> None:
        """Show the outcome in every docker; errors also in a (non-blocking) message box."""
        self.outcome.emit(ok, text)
        window = Krita.instance().activeWindow()
        if ok:
            view = window.activeView() if window is not None else None
            if view is not None:
                view.showFloatingMessage(text, QtGui.QIcon(), 4000, 1)
            return
        box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Warning, "Background Removal", text,
                                    QtWidgets.QMessageBox.StandardButton.Ok,
                                    window.qwindow() if window is not None else None)
        box.setObjectName("bgmask_error_box")
        box.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()


_controller: Optional[Controller] = None


def controller() -> Controller:
    global _controller
    if _controller is None:
        _controller = Controller(Krita.instance())
    return _controller


class BgmaskDocker(DockWidget):
    """Settings > Dockers > Background Removal."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName(DOCKER_ID)
        self.setWindowTitle("Background Removal")
        self.ctl = controller()
        settings = core.load_settings()
        root = QtWidgets.QWidget(self)
        layout = QtWidgets.QVBoxLayout(root)

        self.button = QtWidgets.QPushButton("Remove Background", root)
        self.button.setObjectName("bgmask_remove")
        self.button.setToolTip("Find the subject of the active paint layer and hide its background")
        layout.addWidget(self.button)

        form = QtWidgets.QFormLayout()
        self.model = QtWidgets.QComboBox(root)
        self.model.setObjectName("bgmask_model")
        self._fill_models(self.ctl.models, settings.model)
        form.addRow("Model:", self.model)
        self.output = QtWidgets.QComboBox(root)
        self.output.setObjectName("bgmask_output")
        for key, label in core.OUTPUTS.items():
            self.output.addItem(label, key)
        self.output.setCurrentIndex(self.output.findData(settings.output))
        form.addRow("Output:", self.output)
        self.quality = QtWidgets.QComboBox(root)
        self.quality.setObjectName("bgmask_quality")
        self.quality.setToolTip("Fast, balanced or best edges; Daemon default leaves it to the daemon")
        for key, label in core.QUALITIES.items():
            self.quality.addItem(label, key)
        self.quality.setCurrentIndex(self.quality.findData(settings.quality))
        form.addRow("Quality:", self.quality)
        self.frames = QtWidgets.QComboBox(root)
        self.frames.setObjectName("bgmask_frames")
        self.frames.setToolTip("On an animated layer: one mask for the current frame, or a transparency mask "
                               "keyed on every keyframe of the layer or every frame of the playback range")
        for key, label in core.FRAME_SCOPES.items():
            self.frames.addItem(label, key)
        self.frames.setCurrentIndex(self.frames.findData(settings.frames))
        form.addRow("Frames:", self.frames)
        self.temporal = QtWidgets.QCheckBox("Steady edges across frames", root)
        self.temporal.setObjectName("bgmask_temporal")
        self.temporal.setToolTip("Frames: keep the edges of a still or slowly moving subject from flickering")
        self.temporal.setChecked(settings.temporal)
        form.addRow(self.temporal)
        self.refine = QtWidgets.QCheckBox("Refine edges", root)
        self.refine.setObjectName("bgmask_refine")
        self.refine.setChecked(settings.refine)
        form.addRow(self.refine)
        self.numbers: Dict[str, QtWidgets.QAbstractSpinBox] = {}
        for key, label, tooltip, decimals, step, suffix in NUMBER_FIELDS:
            low, high = core.NUMBER_RANGES[key]
            spin = QtWidgets.QDoubleSpinBox(root) if decimals else QtWidgets.QSpinBox(root)
            if decimals:
                spin.setDecimals(decimals)
            spin.setObjectName(f"bgmask_{key}")
            spin.setRange(low, high)
            spin.setSingleStep(step)
            spin.setSuffix(suffix)
            spin.setToolTip(tooltip)
            spin.setValue(getattr(settings, key))
            form.addRow(label, spin)
            self.numbers[key] = spin
        layout.addLayout(form)

        row = QtWidgets.QHBoxLayout()
        self.progress = QtWidgets.QProgressBar(root)
        self.progress.setObjectName("bgmask_progress")
        self.cancel = QtWidgets.QPushButton("Cancel", root)
        self.cancel.setObjectName("bgmask_cancel")
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel)
        layout.addLayout(row)

        status_row = QtWidgets.QHBoxLayout()
        self.status = QtWidgets.QLabel(self.ctl.status_text(), root)
        self.status.setObjectName("bgmask_status")
        self.status.setWordWrap(True)
        self.refresh = QtWidgets.QToolButton(root)
        self.refresh.setObjectName("bgmask_refresh")
        self.refresh.setText("Refresh")
        self.refresh.setToolTip("Ask the daemon for its status again")
        status_row.addWidget(self.status, 1)
        status_row.addWidget(self.refresh, 0, QtCore.Qt.AlignmentFlag.AlignTop)
        layout.addLayout(status_row)

        self.message = QtWidgets.QLabel("", root)
        self.message.setObjectName("bgmask_message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self.setWidget(root)

        self.button.clicked.connect(self._on_remove)
        self.cancel.clicked.connect(self.ctl.cancel)
        self.refresh.clicked.connect(self.ctl.refresh_status)
        for signal in (self.model.currentIndexChanged, self.output.currentIndexChanged,
                       self.quality.currentIndexChanged, self.refine.toggled,
                       self.frames.currentIndexChanged, self.temporal.toggled,
                       *(spin.valueChanged for spin in self.numbers.values())):
            signal.connect(self._save)
        self.ctl.busy_changed.connect(self._on_busy)
        self.ctl.progress.connect(self._on_progress)
        self.ctl.status_changed.connect(self.status.setText)
        self.ctl.models_changed.connect(lambda names: self._fill_models(names, core.load_settings().model))
        self.ctl.outcome.connect(self._on_outcome)
        self._on_busy(self.ctl.busy)
        self.ctl.refresh_status()

    def _fill_models(self, names: List[str], chosen: Optional[str]) -> None:
        self.model.blockSignals(True)
        self.model.clear()
        self.model.addItem("Daemon default", "")
        for name in names:
            self.model.addItem(name, name)
        if chosen and self.model.findData(chosen) < 0:  # remembered, though the daemon is not there now
            self.model.addItem(chosen, chosen)
        self.model.setCurrentIndex(max(0, self.model.findData(chosen or "")))
        self.model.blockSignals(False)

    def settings(self) -> core.Settings:
        return core.Settings(model=self.model.currentData() or None, output=self.output.currentData(),
                             refine=self.refine.isChecked(), quality=self.quality.currentData(),
                             frames=self.frames.currentData(), temporal=self.temporal.isChecked(),
                             **{key: spin.value() for key, spin in self.numbers.items()})

    def _save(self, *_: Any) -> None:
        core.save_settings(self.settings())
        self.status.setText(self.ctl.status_text())

    def _on_remove(self) -> None:
        core.save_settings(self.settings())
        self.ctl.start()

    def _on_busy(self, busy: bool) -> None:
        self.button.setEnabled(not busy)
        self.cancel.setEnabled(busy)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("%p%" if busy else "Idle")
        if busy:
            self.message.setText("")

    def _on_progress(self, text: str, percent: int) -> None:
        if percent < 0:
            self.progress.setRange(0, 0)  # busy indicator
        else:
            self.progress.setRange(0, 100)
            self.progress.setValue(percent)
        self.progress.setFormat(f"{text} %p%" if percent >= 0 else text)

    def _on_outcome(self, ok: bool, text: str) -> None:
        self.message.setText(text if ok else f"Error: {text}")

    def canvasChanged(self, canvas: Any) -> None:
        """Required by DockWidget; the docker always works on the active document."""


class BgmaskExtension(Extension):
    """Adds Layer > Remove Background, so the action can get a keyboard shortcut."""

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:
        action = window.createAction(ACTION_ID, "Remove Background", "layer")
        action.setToolTip("Hide the background of the active paint layer with a transparency mask")
        action.triggered.connect(lambda: controller().start())


def register() -> None:
    app = Krita.instance()
    app.addExtension(BgmaskExtension(app))
    app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockPosition.DockRight,
                                                BgmaskDocker))
