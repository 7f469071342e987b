"""What "Remove Background" does to a Krita document, without any widgets.

The work is split in three so the UI can keep Krita responsive: `prepare` reads everything it needs
from the document on the UI thread (fast), `Job.run` talks to the daemon (slow; any thread), and
`apply` changes the document on the UI thread, in one undoable step, only once a mask has arrived.
Any failure before `apply` leaves the document exactly as it was.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

from krita import Krita, Selection

from . import pixels
from .pixels import Rect

OUTPUT_MASK = "mask"
OUTPUT_SELECTION = "selection"
OUTPUT_LAYER = "layer"
OUTPUT_DECONTAMINATED = "decontaminated"
OUTPUTS = {
    OUTPUT_MASK: "Transparency mask",
    OUTPUT_SELECTION: "Selection",
    OUTPUT_LAYER: "New layer with mask",
    OUTPUT_DECONTAMINATED: "New layer with decontaminated colours",
}
# The request's `quality` option (docs/protocol.md); "" sends none, so the daemon's own default applies.
QUALITIES = {"": "Daemon default", "fast": "Fast", "balanced": "Balanced", "best": "Best"}
# What an animated layer's click covers (frames.py); "": one mask for the current frame, as on a still layer.
FRAME_SCOPES = {"": "Current frame only", "keyframes": "Every keyframe of the layer",
                "playback": "Every frame of the playback range"}
MASK_NAME = "Background Removal"
SETTINGS_GROUP = "bgmask"
DEFAULT_PADDING = 0.15

# The docker's number settings (docs/protocol.md, options) -> (lowest, highest); the defaults are Settings'.
# The ranges are the protocol's; areas stop at the largest value a QSpinBox holds.
MAX_AREA = 2 ** 31 - 1
NUMBER_RANGES = {
    "hardness": (0.0, 1.0),
    "shift_edge": (-100.0, 100.0),
    "feather": (0.0, 500.0),
    "fill_holes": (0, MAX_AREA),
    "remove_specks": (0, MAX_AREA),
    "padding": (0.0, 4.0),
}

# Colour spaces the daemon cannot take are converted, on a throw-away clone of the document, to
# sRGB RGBA of this depth (8-bit stays 8-bit, anything deeper becomes 16-bit).
_CONVERT_PROFILE = "sRGB-elle-V2-srgbtrc.icc"

_NODE_KINDS = {
    "grouplayer": "group layer",
    "vectorlayer": "vector layer",
    "filelayer": "file layer",
    "filllayer": "fill layer",
    "filterlayer": "filter layer",
    "clonelayer": "clone layer",
    "referenceimageslayer": "reference images layer",
}


class PluginError(Exception):
    """A problem to show to the user as it is; the document has not been changed."""


def client_module() -> Any:
    """bgmask_client.py is copied into this package by `bgmask install --krita`."""
    try:
        from . import bgmask_client
    except ImportError as exc:
        raise PluginError("bgmask_client.py is missing from the plugin folder; "
                          f"reinstall the plugin with `bgmask install --krita` ({exc}).") from exc
    return bgmask_client


class Settings(NamedTuple):
    """The user's choices in the docker (also used by the menu action)."""

    model: Optional[str] = None  # None: the daemon's default model
    output: str = OUTPUT_MASK
    refine: bool = True
    hardness: float = 0.0
    shift_edge: float = 0.0
    feather: float = 0.0
    fill_holes: int = 0
    remove_specks: int = 0
    padding: float = DEFAULT_PADDING  # context around a selection, a fraction of its longer side
    quality: str = ""  # a QUALITIES key; "": the daemon's default
    frames: str = ""  # on an animated layer: "" one mask for the current frame, else a FRAME_SCOPES key
    temporal: bool = True  # frames: steady edges across frames (the sequence's `temporal`)

    def options(self) -> Dict[str, Any]:
        """The request's options; a selection adds `region` and `padding`."""
        options = {"refine": self.refine, "hardness": self.hardness, "shift_edge": self.shift_edge,
                   "feather": self.feather, "fill_holes": self.fill_holes, "remove_specks": self.remove_specks,
                   "decontaminate": self.output == OUTPUT_DECONTAMINATED}
        if self.quality:
            options["quality"] = self.quality
        return options


def _number(text: Any, key: str) -> Any:
    """A remembered number, or the default when it does not parse or is out of range (kritarc is editable)."""
    default = Settings._field_defaults[key]
    low, high = NUMBER_RANGES[key]
    try:
        value = type(default)(text)
    except (TypeError, ValueError):
        return default
    return value if low <= value <= high else default


def load_settings() -> Settings:
    """The docker's last choices, from kritarc."""
    app = Krita.instance()
    output = app.readSetting(SETTINGS_GROUP, "output", OUTPUT_MASK)
    quality = app.readSetting(SETTINGS_GROUP, "quality", "")
    frames = app.readSetting(SETTINGS_GROUP, "frames", "")
    numbers = {key: _number(app.readSetting(SETTINGS_GROUP, key, str(Settings._field_defaults[key])), key)
               for key in NUMBER_RANGES}
    return Settings(model=app.readSetting(SETTINGS_GROUP, "model", "") or None,
                    output=output if output in OUTPUTS else OUTPUT_MASK,
                    refine=app.readSetting(SETTINGS_GROUP, "refine", "true") != "false",
                    quality=quality if quality in QUALITIES else "",
                    frames=frames if frames in FRAME_SCOPES else "",
                    temporal=app.readSetting(SETTINGS_GROUP, "temporal", "true") != "false", **numbers)


def save_settings(settings: Settings) -> None:
    """Remember the docker's choices in kritarc, for the menu action and the next session."""
    app = Krita.instance()
    app.writeSetting(SETTINGS_GROUP, "model", settings.model or "")
    app.writeSetting(SETTINGS_GROUP, "output", settings.output)
    app.writeSetting(SETTINGS_GROUP, "refine", "true" if settings.refine else "false")
    app.writeSetting(SETTINGS_GROUP, "quality", settings.quality)
    app.writeSetting(SETTINGS_GROUP, "frames", settings.frames)
    app.writeSetting(SETTINGS_GROUP, "temporal", "true" if settings.temporal else "false")
    for key in NUMBER_RANGES:
        app.writeSetting(SETTINGS_GROUP, key, repr(getattr(settings, key)))


class Reply(NamedTuple):
    """What Job.run brings back for `apply`."""

    mask: bytes
    model: Optional[str]     # the model that made the mask
    colours: Optional[bytes]  # decontaminated output: the region's new pixels, in the layer's own layout


class Job(NamedTuple):
    """Everything one request needs, read from the document before the request starts."""

    document: Any
    node_id: Any              # the layer's uniqueId(), to find it again when the mask arrives
    layer_name: str
    layer_rect: Rect          # the layer's bounds (image coordinates, offsets included)
    region: Rect              # the part of the layer sent to the daemon
    selected: Optional[Rect]  # the selection's bounds on the layer: the request's `region` (image coordinates)
    pixels: bytes             # region pixels as Krita stores them (reordered off the UI thread)
    layout: pixels.Layout
    linear: bool
    selection: Optional[bytes]  # the global selection over layer_rect, one byte per pixel
    settings: Settings
    converted_from: Optional[str]  # e.g. "CMYKA/U8" when the pixels were converted for the request

    def protocol_pixels(self) -> bytes:
        """The region in the protocol's channel order: a few slice copies, slow enough at 12 MP to keep
        off the UI thread."""
        return pixels.to_protocol_order(self.pixels, self.layout)

    def run(self, client: Any, on_progress: Optional[Callable[[str, Optional[float]], None]] = None,
            cancel: Optional[Callable[[], bool]] = None) -> Reply:
        """Ask the daemon for an 8-bit mask of `region` (transparency masks and selections are 8-bit), and
        for the decontaminated output its colours, put back into the layer's own layout."""
        x, y, w, h = self.region
        options = self.settings.options()
        if self.selected is not None:
            sx, sy, sw, sh = self.selected
            options.update(region=[sx - x, sy - y, sw, sh], padding=self.settings.padding)
        result = client.remove_full(self.protocol_pixels(), w, h, self.layout.channels, self.layout.sample_type,
                                    linear=self.linear, model=self.settings.model, options=options,
                                    out_sample_type="u8", on_progress=on_progress, cancel=cancel)
        colours = None
        if self.settings.output == OUTPUT_DECONTAMINATED:
            colours = client_module().decontaminated_pixels(
                self.pixels, result.extra[0] if result.extra else b"", self.layout.channels,
                self.layout.sample_type, self.layout.source_of)
        return Reply(result.mask, result.header.get("model"), colours)


def target_layer(doc: Any) -> Any:
    """The paint layer the user means: the active node, or the layer owning the active mask."""
    if doc is None:
        raise PluginError("Open an image first.")
    node = doc.activeNode()
    if node is None:
        raise PluginError("Select a paint layer first.")
    if node.type().endswith("mask"):
        parent = node.parentNode()
        if parent is not None and parent.type() == "paintlayer":
            return parent
    if node.type() != "paintlayer":
        kind = _NODE_KINDS.get(node.type(), node.type() or "node")
        raise PluginError(f'"{node.name()}" is a {kind}; background removal works on paint layers. '
                          "Convert it first (Layer > Convert > to Paint Layer).")
    return node


def _rect(qrect: Any) -> Rect:
    return (qrect.x(), qrect.y(), qrect.width(), qrect.height())


def prepare(doc: Any, node: Any, settings: Settings) -> Job:
    """Read the layer (and the selection) into a Job; changes nothing in the document."""
    layer_rect = _rect(node.bounds())
    if pixels.is_empty(layer_rect):
        raise PluginError(f'The layer "{node.name()}" is empty.')

    model, depth = node.colorModel(), node.colorDepth()
    layout = pixels.layout_for(model, depth)
    if layout is None and settings.output == OUTPUT_DECONTAMINATED:
        raise PluginError(f"Decontaminated colours need an RGBA or grayscale layer, and \"{node.name()}\" is "
                          f"{model}/{depth}. Convert it first (Image > Convert Image Color Space).")

    region, selected, selection = layer_rect, None, None
    sel = doc.selection()
    if sel is not None:
        sel_rect = (sel.x(), sel.y(), sel.width(), sel.height())
        selected = pixels.intersect(sel_rect, layer_rect)
        if pixels.is_empty(selected):
            raise PluginError(f'The selection does not touch the layer "{node.name()}".')
        # only what the daemon's model looks at for that region is read and sent
        region = client_module().context_box(selected, settings.padding, layer_rect)
        selection = bytes(sel.pixelData(*layer_rect))

    converted_from = None
    if layout is not None:
        data = bytes(node.pixelData(*region))
        linear = pixels.is_linear_profile(node.colorProfile())
    else:
        converted_from = f"{model}/{depth}"
        data, layout = _converted_pixels(doc, node, region, "U8" if depth == "U8" else "U16")
        linear = False
    return Job(doc, node.uniqueId(), node.name(), layer_rect, region, selected, data, layout, linear, selection,
               settings, converted_from)


def _converted_pixels(doc: Any, node: Any, region: Rect, depth: str):
    """Convert the layer to sRGB RGBA on a clone of the document, so the user's document is not touched."""
    clone = doc.clone()
    if clone is None:
        raise PluginError(f"Could not convert the {node.colorModel()} layer for background removal.")
    try:
        copy = clone.nodeByUniqueID(node.uniqueId())
        if copy is None or not copy.setColorSpace("RGBA", depth, _CONVERT_PROFILE) \
                or (copy.colorModel(), copy.colorDepth()) != ("RGBA", depth):
            raise PluginError(f"Krita could not convert the {node.colorModel()}/{node.colorDepth()} "
                              "layer to RGBA; convert the image to RGB (Image > Convert Image Color Space).")
        return bytes(copy.pixelData(*region)), pixels.layout_for("RGBA", depth)
    finally:
        clone.close()


def mask_name(model: Optional[str]) -> str:
    """Name the new node so users can tell what made it, and with which model."""
    return f"{MASK_NAME} ({model})" if model else MASK_NAME


def apply(job: Job, mask: bytes, model: Optional[str], colours: Optional[bytes] = None) -> str:
    """Put the daemon's mask into the document as the chosen output, in one undoable step; `colours` (the
    decontaminated output) replace the region's pixels in the new layer.

    Returns a short sentence for the status line.
    """
    doc = job.document
    node = doc.nodeByUniqueID(job.node_id)
    if node is None or node.type() != "paintlayer":
        raise PluginError(f'The layer "{job.layer_name}" was removed while its background was being computed.')
    _, _, rw, rh = job.region
    if len(mask) != rw * rh:
        raise PluginError(f"The daemon sent a {len(mask)}-byte mask for a {rw}x{rh} region.")
    full = pixels.embed(mask, job.region, job.layer_rect)
    if job.selection is not None:
        full = pixels.multiply(full, job.selection)
    name = mask_name(model or job.settings.model)
    output = job.settings.output

    if output == OUTPUT_SELECTION:
        selection = Selection()
        selection.setPixelData(full, *job.layer_rect)
        doc.setSelection(selection)
        done = f'Selected the foreground of "{node.name()}".'
    else:
        # The mask gets its pixels before it joins the layer tree: adding the finished node is then
        # the only undoable command, so one undo removes it entirely.
        tmask = doc.createTransparencyMask(name)
        tmask.setPixelData(full, *job.layer_rect)
        if output == OUTPUT_MASK:
            node.addChildNode(tmask, None)
            done = f'Added "{name}" to "{node.name()}".'
        else:
            copy = node.duplicate()  # not in the tree yet: neither its pixels nor its children are an undo step
            if output == OUTPUT_DECONTAMINATED:
                copy.setPixelData(colours, *job.region)
                copy.setName(f"{node.name()} (decontaminated)")
            else:
                copy.setName(f"{node.name()} (background removed)")
            copy.setChildNodes(list(copy.childNodes()) + [tmask])
            node.parentNode().addChildNode(copy, node)
            done = f'Added "{copy.name()}" with "{name}" above "{node.name()}".'
    if job.converted_from:
        done += f" ({job.converted_from} was converted to RGBA for the request.)"
    return done


def describe_status(status: Optional[Dict[str, Any]], model: Optional[str], error: str = "") -> str:
    """One status line: is the daemon there, on which device, and is the chosen model ready."""
    if status is None:
        return f"Daemon not connected: {error}" if error else "Daemon not connected."
    model = model or status.get("default_model")
    state = next((m.get("state") for m in status.get("models") or [] if m.get("name") == model), None)
    state_text = {"not_downloaded": "not downloaded yet (downloads on first use)",
                  "downloaded": "downloaded, loads on first use",
                  "loading": "loading", "loaded": "loaded"}.get(state, state or "unknown")
    note = status.get("device_note")  # why a GPU is not used, when one was offered (daemons since issue 20)
    return (f"Connected to bgmask {status.get('version', '?')} on {status.get('device', '?')} "
            f"({status.get('provider', '?')}); {model}: {state_text}." + (f" GPU not used: {note}" if note else ""))
