"""The GIMP plug-in's logic, kept apart from its registration so that it can be tested without GIMP.

Everything here talks to GIMP only through the `Gimp` and `Gegl` modules handed in by the caller
(the plug-in passes the real ones, the unit tests a fake), and to the daemon only through a
`bgmask_client.Client`. The plug-in does no numeric work of its own (GIMP's Python may lack numpy):
pixels go out as the bytes GIMP gives, masks come back as bytes and are written as they are. Where a
mask must be limited, GIMP's channel operations do it: the result is written into a temporary channel,
and gimp-channel-combine-masks INTERSECT (the minimum of the two) limits it to the selection or to an
existing mask. For a feathered selection that is min(mask, selection) rather than a product; for the
usual hard selection the two are the same.

Nothing changes before every daemon request has succeeded; then all changes go through undoable
operations (add/remove mask, insert layer, combine masks into an attached channel) inside one undo
group. Writing straight into the buffer of a drawable that belongs to the image is avoided: GIMP does
not record such writes for undo. (The decontaminated copy gets its colours before it is inserted.)

Every GIMP call that can fail is checked here (`checked`): GIMP 3.2 no longer shows a failed PDB call of
a non-interactive run, so an unchecked failure would pass silently and leave a half-done result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import bgmask_client

OUTPUT_MASK = "mask"
OUTPUT_SELECTION = "selection"
OUTPUT_NEW_LAYER = "new-layer"
OUTPUT_DECONTAMINATED = "decontaminated"
# (nick, label, help) for the procedure's "output" choice argument; the first entry is the default.
OUTPUT_CHOICES = (
    (OUTPUT_MASK, "Layer mask", "Add a layer mask to the layer (white = keep); the pixels stay as they are"),
    (OUTPUT_SELECTION, "Selection", "Select the subject instead of masking the layer"),
    (OUTPUT_NEW_LAYER, "New layer with mask", "Add a masked copy above the layer; the layer stays as it was"),
    (OUTPUT_DECONTAMINATED, "New layer with decontaminated colours",
     "Add a masked copy above the layer whose edge colours have the old background's spill removed; the "
     "layer stays as it was"),
)

# The request's `quality` option (docs/protocol.md); QUALITY_DEFAULT sends none: the daemon's default.
QUALITY_DEFAULT = "default"
QUALITY_CHOICES = (
    (QUALITY_DEFAULT, "Daemon default", "Leave the speed/quality trade-off to the daemon"),
    ("fast", "Fast", "The quickest mask"),
    ("balanced", "Balanced", "A good mask at a moderate cost"),
    ("best", "Best", "The best edges, slower"),
)

EXISTING_REPLACE = "replace"
EXISTING_INTERSECT = "intersect"
EXISTING_CANCEL = "cancel"
EXISTING_CHOICES = (
    (EXISTING_REPLACE, "Replace it", "Discard the layer's mask and add the new one"),
    (EXISTING_INTERSECT, "Intersect with it", "Keep only what both the old and the new mask keep"),
    (EXISTING_CANCEL, "Cancel", "Change nothing and say so"),
)

# With a selection active the daemon gets the selection's bounds as `region` and looks at them plus
# `padding` (a fraction of their longer side) of context: small subjects get more of the model's
# resolution, and the subject's edges are not cut. Only that padded rectangle of the layer is read and
# sent (bgmask_client.context_box), not the whole layer.
DEFAULT_PADDING = 0.15

# The numeric arguments that shape the mask (docs/protocol.md, options): (argument name, type, dialog
# label, help, lowest, highest, default). The ranges are the protocol's; areas stop at GIMP's largest int.
# The labels' mnemonics avoid each other, the other arguments' (M, T, E, K, Q, A, Y) and the dialog buttons'
# (O, C, R, H, L, S).
MAX_AREA = 2 ** 31 - 1
NUMBER_ARGUMENTS = (
    ("hardness", float, "Har_dness", "Steepen the soft edge without cutting it: 0 keeps the model's edge, "
     "1 narrows an 8-15 px edge to 1-2 px", 0.0, 1.0, 0.0),
    ("shift-edge", float, "Shift ed_ge (px)", "Grow (positive) or shrink (negative) the subject by this many "
     "pixels; soft detail keeps its shape", -100.0, 100.0, 0.0),
    ("feather", float, "_Feather (px)", "Soften the edge: a hard edge becomes a ramp about twice this wide",
     0.0, 500.0, 0.0),
    ("fill-holes", int, "F_ill holes smaller than (px²)", "Make enclosed holes whose area is smaller than "
     "this opaque", 0, MAX_AREA, 0),
    ("remove-specks", int, "Remove s_pecks smaller than (px²)", "Remove separate islands whose area is "
     "smaller than this", 0, MAX_AREA, 0),
    ("padding", float, "Selection conte_xt", "With a selection: how much of the layer around it the model "
     "sees, as a fraction of the selection's longer side", 0.0, 4.0, DEFAULT_PADDING),
)

STAGE_TEXT = {
    "queued": "Waiting for the bgmask daemon",
    "downloading": "Downloading the model",
    "loading": "Loading the model",
    "inferring": "Finding the subject",
    "refining": "Refining the edges",
}


@dataclass(frozen=True)
class Settings:
    """The procedure's arguments, as the dialog or a PDB caller set them."""

    model: str = ""  # empty: the daemon's default model
    output: str = OUTPUT_MASK
    refine: bool = True
    existing_mask: str = EXISTING_REPLACE
    hardness: float = 0.0
    shift_edge: float = 0.0
    feather: float = 0.0
    fill_holes: float = 0.0
    remove_specks: float = 0.0
    padding: float = DEFAULT_PADDING
    quality: str = QUALITY_DEFAULT
    all_layers: bool = False  # every layer of the image, as the frames of an animation (frame_layers)
    temporal: bool = True  # with all_layers: masks kept consistent from frame to frame

    def options(self) -> Dict[str, Any]:
        """The request's options; a selection adds `region` and `padding` per layer."""
        options = {"refine": self.refine, "hardness": self.hardness, "shift_edge": self.shift_edge,
                   "feather": self.feather, "fill_holes": self.fill_holes, "remove_specks": self.remove_specks,
                   "decontaminate": self.output == OUTPUT_DECONTAMINATED}
        if self.quality != QUALITY_DEFAULT:
            options["quality"] = self.quality
        return options


# Layers GIMP draws from something other than pixels (GIMP 3.0: text; 3.2: vector too), by the name of
# the Gimp.Item test that finds them. Their pixels are the shape itself on transparency: there is no
# background, and a model's mask would only eat into the letters or the shape, so they are refused with
# a message, unless GIMP 3.2 shows them rasterized (Layer > Rasterize: then they are pixels like any
# layer). GIMP 3.2's link layers show an image file (usually a photo): they get a layer mask like any
# layer, and stay linked (a mask does not touch the linked pixels).
DRAWN_LAYERS = (("is_text_layer", "text", "text"), ("is_vector_layer", "vector", "path"))


class PluginError(Exception):
    """A failure meant for the user. Raised before the image is touched, so it is left as it was
    (except from `checked`, which says so).

    `cancelled` marks an outcome the user chose (existing mask + "cancel", a cancelled request), which
    the plug-in reports as a cancel rather than an error.
    """

    def __init__(self, message: str, cancelled: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.cancelled = cancelled


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    w: int
    h: int

    def intersect(self, other: "Rect") -> Optional["Rect"]:
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.x + self.w, other.x + other.w), min(self.y + self.h, other.y + other.h)
        return Rect(x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


@dataclass(frozen=True)
class SampleFormat:
    """A babl format name and what the protocol calls the same bytes."""

    babl: str  # e.g. "R'G'B'A u16", "Y float"
    channels: int
    sample_type: str  # protocol sample type: u8, u16, f16, f32
    linear: bool


# GIMP precision component -> (babl type, protocol type) for the layer's pixels and for the mask.
# The protocol has no 32-bit integer or double samples: u32 and double layers are read as "float"
# (f32), which holds every u32 value to 24 bits, more than any model or mask can use. Masks come back
# as u8, u16 or f32; babl turns f32 into a half, u32 or double mask when it is written.
_PIXEL_TYPES = {"u8": ("u8", "u8"), "u16": ("u16", "u16"), "u32": ("float", "f32"),
                "half": ("half", "f16"), "float": ("float", "f32"), "double": ("float", "f32")}
_MASK_TYPES = {"u8": ("u8", "u8"), "u16": ("u16", "u16"), "u32": ("float", "f32"),
               "half": ("float", "f32"), "float": ("float", "f32"), "double": ("float", "f32")}


def split_precision(nick: str) -> Tuple[str, bool]:
    """'u16-linear' -> ('u16', True); 'u8-non-linear' and 'half-perceptual' -> (..., False)."""
    component, _, trc = nick.partition("-")
    if component not in _PIXEL_TYPES or trc not in ("linear", "non-linear", "perceptual"):
        raise PluginError(f"Unsupported image precision '{nick}'.")
    return component, trc == "linear"


def pixel_format(base_type: str, has_alpha: bool, precision: str) -> SampleFormat:
    """How a layer's pixels are read: in the image's own precision and encoding, so the daemon sees
    exactly the samples the user sees. Indexed layers are read as 8-bit RGB(A) for the request only.

    `base_type` is the Gimp.ImageBaseType nick ('rgb', 'gray', 'indexed'), `precision` the
    Gimp.Precision nick. Perceptual and non-linear images use the primed (') babl formats with
    linear=False, linear images the plain ones with linear=True.
    """
    component, linear = split_precision(precision)
    if base_type == "indexed":
        component, linear = "u8", False
    elif base_type not in ("rgb", "gray"):
        raise PluginError(f"Unsupported image mode '{base_type}'.")
    names = "RGB" if base_type in ("rgb", "indexed") else "Y"
    prime = "" if linear else "'"
    babl_type, sample_type = _PIXEL_TYPES[component]
    model = "".join(c + prime for c in names) + ("A" if has_alpha else "")
    return SampleFormat(f"{model} {babl_type}", len(names) + has_alpha, sample_type, linear)


def mask_format(precision: str) -> SampleFormat:
    """How the mask is requested: linear "Y" in the mask's own precision, which is the layer mask's native
    format, so no precision is lost and nothing is re-encoded (see channel_format for the way in)."""
    component, _ = split_precision(precision)
    babl_type, sample_type = _MASK_TYPES[component]
    return SampleFormat(f"Y {babl_type}", 1, sample_type, True)


def channel_format(precision: str) -> str:
    """The babl format that puts the mask's samples into a channel made by Gimp.Channel.new unchanged,
    for copying into a layer mask. combine-masks copies samples as they are, and GIMP 3.0 keeps the
    channels of 8-bit non-linear images gamma-encoded ("Y' u8"; gimp_image_get_channel_format) while their
    layer masks are linear ("Y u8"): written as "Y u8", the mask would be encoded on its way into the
    channel and reach the layer mask brightened (a 10 became 56)."""
    return "Y' u8" if precision == "u8-non-linear" else mask_format(precision).babl


def context_crop(layer: Rect, selection: Optional[Rect], padding: float = DEFAULT_PADDING) -> Optional[Rect]:
    """The layer-local rectangle to send: the whole layer, or, with a selection, the part of the layer
    under the selection's bounds grown by `padding`, which is exactly what the daemon's model looks at
    for that region. None if the selection misses the layer.

    `layer` and `selection` are in image coordinates (the layer's offsets and size)."""
    if selection is None:
        return Rect(0, 0, layer.w, layer.h)
    under = layer.intersect(selection)
    if under is None:
        return None
    x, y, w, h = bgmask_client.context_box((under.x, under.y, under.w, under.h), padding,
                                           (layer.x, layer.y, layer.w, layer.h))
    return Rect(x - layer.x, y - layer.y, w, h)


def crop_region(layer: Rect, selection: Optional[Rect], crop: Rect) -> Optional[Rect]:
    """The request's `region`: the selection's bounds on the layer, relative to the crop sent."""
    if selection is None:
        return None
    under = layer.intersect(selection)
    assert under is not None
    return Rect(under.x - layer.x - crop.x, under.y - layer.y - crop.y, under.w, under.h)


def user_message(error: Exception, settings: Settings) -> str:
    """A sentence that says what went wrong and what to do about it."""
    code = getattr(error, "code", "")
    detail = getattr(error, "message", str(error))
    model = settings.model or "the default model"
    hints = {
        "unknown_model": f"There is no model called '{settings.model}'. Leave the model empty for the "
                         "default one, or run `bgmask models` to see the names.",
        "model_unavailable": f"The model {model} could not be downloaded or loaded ({detail}). Check the "
                             "internet connection, or fetch it once with `bgmask pull`, then try again.",
        "too_large": f"The layer is too large for the bgmask daemon ({detail}). Select a smaller area, "
                     "scale the image down, or raise the daemon's limits (`bgmask serve --help`).",
        "busy": "The bgmask daemon is busy with other images. Try again in a moment.",
        "device_unavailable": f"{detail} Start the daemon without `--device gpu` to use the CPU.",
        "shutting_down": "The bgmask daemon is shutting down. Try again once it has restarted.",
        "unauthorized": "The bgmask daemon refused the request (wrong token). Restart it with "
                        "`bgmask stop` and try again.",
        "not_running": f"The bgmask daemon is not running and could not be started ({detail}). Start it "
                       "with `bgmask serve` in a terminal, or run `bgmask install` again so that GIMP can "
                       "start it.",
        "timeout": f"The bgmask daemon stopped answering ({detail}). Nothing was changed.",
        "connection_lost": "The bgmask daemon went away during the request (it may have crashed). Run "
                           "`bgmask serve` in a terminal to see why, then try again.",
    }
    return hints.get(code, f"Removing the background failed: {detail} Nothing was changed.")


class ProgressFeed:
    """Feeds the daemon's progress messages into GIMP's progress bar. With several layers (or frames)
    the bar covers them all; the stage text says what the daemon is doing, so a long model download or
    a queue wait is not mistaken for a hang."""

    def __init__(self, gimp: Any, jobs: int, unit: str = "layer") -> None:
        self._gimp = gimp
        self._jobs = jobs
        self._unit = unit
        self._index = 0
        gimp.progress_init("Removing the background")

    def start(self, index: int) -> None:
        self._index = index
        self._gimp.progress_update(index / self._jobs)

    def __call__(self, stage: str, fraction: Optional[float]) -> None:
        """bgmask_client's on_progress callback."""
        text = STAGE_TEXT.get(stage, "Removing the background")
        if self._jobs > 1:
            text += f" ({self._unit} {self._index + 1} of {self._jobs})"
        self._gimp.progress_set_text(text)
        if fraction is None:
            self._gimp.progress_pulse()
        else:
            self._gimp.progress_update((self._index + fraction) / self._jobs)

    def frame(self, index: int, stage: str, fraction: Optional[float]) -> None:
        """remove_frames' on_progress callback, behind bgmask_client.ForwardFrameProgress (which keeps the
        bar from running backwards while two frames are in flight)."""
        self._index = index
        self(stage, fraction)


@dataclass
class Job:
    layer: Any
    crop: Rect  # layer-local
    region: Optional[Rect]  # the selection's bounds, relative to the crop
    fmt: SampleFormat  # how the layer's pixels are read
    mask: bytes = b""
    colours: bytes = b""  # decontaminated output: the crop's new pixels, in `fmt`


def checked(gimp: Any, result: Any, doing: str) -> Any:
    """`result` of a GIMP call, or PluginError with GIMP's reason when it failed (False or None).

    Used inside the undo group: the message says that one undo gives back the image as it was.
    """
    if result is False or result is None:
        reason = gimp.get_pdb().get_last_error() or "no reason given"
        raise PluginError(f"GIMP could not {doing} ({reason}). Edit > Undo gives back the image as it was.")
    return result


def selected_layers(drawables: Sequence[Any]) -> List[Any]:
    """The layers to work on; masks, channels, text and vector layers are refused (see DRAWN_LAYERS)."""
    if not drawables:
        raise PluginError("Select a layer first.")
    for drawable in drawables:
        if not drawable.is_layer():
            raise PluginError(f"'{drawable.get_name()}' is not a layer. Select the layer itself "
                              "(not its mask or a channel) and try again.")
        _refuse_drawn(drawable)
    return list(drawables)


def _refuse_drawn(layer: Any) -> None:
    """PluginError for a text or vector layer that is not rasterized (see DRAWN_LAYERS)."""
    for test, kind, source in DRAWN_LAYERS:  # getattr: GIMP 3.0 has no vector layers and no rasterizing
        if getattr(layer, test, bool)() and not getattr(layer, "is_rasterized", bool)():
            raise PluginError(f"'{layer.get_name()}' is a {kind} layer: GIMP draws it from its {source} "
                              "on transparency, so it has no background to remove. Select the layer "
                              "with the photo, or rasterize this one first (Layer > Rasterize; in GIMP 3.0 "
                              "Layer > Discard Text Information).")


def frame_layers(image: Any, settings: Settings) -> List[Any]:
    """The image's layers as the frames of an animation, first frame first. GIMP keeps an animation's
    frames as layers with the first frame at the bottom (GIF and WebP import, Filters > Animation > Playback
    and GIF export all read them bottom up). Frames go to the daemon as one sequence, so they must line up:
    the same size at the same offsets, each a plain layer."""
    if settings.output != OUTPUT_MASK:
        raise PluginError("'All layers as frames' gives every layer its own layer mask: set Output to "
                          "'Layer mask' (a copy or a selection per frame would break the animation).")
    layers = list(reversed(image.get_layers()))
    if not layers:
        raise PluginError("The image has no layers.")
    first = layers[0]
    for layer in layers:
        if layer.is_group():
            raise PluginError(f"'{layer.get_name()}' is a layer group; as frames, every layer must be a single "
                              "layer. Merge the group first (Layer > Merge Layer Group), or run on the "
                              "selected layers without 'All layers as frames'.")
        _refuse_drawn(layer)
        here, there = layer_rect(layer), layer_rect(first)
        if here != there:
            raise PluginError(f"Layer '{layer.get_name()}' is {here.w}x{here.h} at ({here.x}, {here.y}), but "
                              f"'{first.get_name()}' is {there.w}x{there.h} at ({there.x}, {there.y}): as frames, "
                              "every layer must have the same size and position, each a whole frame. An "
                              "optimised GIF keeps only the changed part of most frames: Filters > Animation "
                              "> Unoptimize makes every frame whole. Or run on the selected layers without "
                              "'All layers as frames'.")
    return layers


def selection_bounds(gimp: Any, image: Any) -> Optional[Rect]:
    """The selection's bounding box in image coordinates, or None when nothing is selected."""
    _, non_empty, x1, y1, x2, y2 = gimp.Selection.bounds(image)
    return Rect(x1, y1, x2 - x1, y2 - y1) if non_empty else None


def layer_rect(layer: Any) -> Rect:
    _, x, y = layer.get_offsets()
    return Rect(x, y, layer.get_width(), layer.get_height())


def remove_background(gimp: Any, gegl: Any, image: Any, drawables: Sequence[Any], settings: Settings,
                      make_client: Callable[[], Any]) -> None:
    """Run the whole operation: check, read, ask the daemon, then change the image in one undo step.

    `make_client` returns a bgmask_client.Client; it is called only once the checks have passed. With
    `settings.all_layers` the image's layers are the frames (frame_layers) and `drawables` is not used.

    Every check and every daemon request happens before the image is touched, so a failure (or a
    cancel from GIMP's progress bar, which ends this process) leaves the image exactly as it was.
    """
    layers = frame_layers(image, settings) if settings.all_layers else selected_layers(drawables)
    if settings.output != OUTPUT_SELECTION and settings.existing_mask == EXISTING_CANCEL:
        for layer in layers:
            if layer.get_mask() is not None:
                raise PluginError(f"Layer '{layer.get_name()}' already has a mask; nothing was changed. "
                                  "Choose 'Replace it' or 'Intersect with it' to use the new mask.",
                                  cancelled=True)
    base_type = image.get_base_type().value_nick
    if settings.output == OUTPUT_DECONTAMINATED and base_type == "indexed":
        raise PluginError("Decontaminated colours need an RGB or grayscale image: an indexed layer would "
                          "snap them back to its palette. Convert it with Image > Mode > RGB first.")
    selection = selection_bounds(gimp, image)
    precision = image.get_precision().value_nick
    out = mask_format(precision)
    # The frames of a sequence share one format: with alpha if any frame has it (read as opaque elsewhere)
    frames_alpha = any(layer.has_alpha() for layer in layers) if settings.all_layers else None
    jobs = []
    for layer in layers:
        rect = layer_rect(layer)
        crop = context_crop(rect, selection, settings.padding)
        if crop is None:
            raise PluginError(f"The selection does not overlap layer '{layer.get_name()}'. Select part "
                              "of that layer, or Select > None to use all of it.")
        fmt = pixel_format(base_type, layer.has_alpha() if frames_alpha is None else frames_alpha, precision)
        jobs.append(Job(layer, crop, crop_region(rect, selection, crop), fmt))

    progress = ProgressFeed(gimp, len(jobs), "frame" if settings.all_layers else "layer")
    try:
        client = make_client()
        if settings.all_layers:
            _request_frames(gegl, client, jobs, settings, out, progress)
        else:
            for index, job in enumerate(jobs):
                progress.start(index)
                _request(gegl, client, job, settings, out, progress)
    except bgmask_client.BgmaskError as error:
        raise PluginError(user_message(error, settings), cancelled=error.code == "cancelled") from error
    # From here on the image changes; ending the progress removes its cancel button, so a cancel can
    # no longer stop this process half-way through the undo group.
    gimp.progress_end()

    checked(gimp, image.undo_group_start(), "start an undo group")
    try:
        if settings.output == OUTPUT_SELECTION:  # the selection is a channel like the result: linear values
            _select(gimp, gegl, image, jobs, out.babl, selection is not None)
        else:
            for job in jobs:
                _add_mask(gimp, gegl, image, job, channel_format(precision), settings, selection is not None)
    finally:
        image.undo_group_end()  # not checked: it must not hide the error that got us here


def _read(gegl: Any, job: Job) -> bytes:
    """The job's crop of its layer, in the job's format."""
    crop = job.crop
    return bytes(job.layer.get_buffer().get(gegl.Rectangle.new(crop.x, crop.y, crop.w, crop.h), 1.0,
                                            job.fmt.babl, gegl.AbyssPolicy.CLAMP))


def _options(settings: Settings, region: Optional[Rect]) -> Dict[str, Any]:
    options = settings.options()
    if region is not None:
        options.update(region=[region.x, region.y, region.w, region.h], padding=settings.padding)
    return options


def _request(gegl: Any, client: Any, job: Job, settings: Settings, out: SampleFormat,
             progress: ProgressFeed) -> None:
    """Read the job's crop, ask the daemon, and keep what the image will need (mask, and colours)."""
    crop, fmt = job.crop, job.fmt
    pixels = _read(gegl, job)
    reply = client.remove_full(pixels, crop.w, crop.h, fmt.channels, fmt.sample_type, linear=fmt.linear,
                               model=settings.model or None, options=_options(settings, job.region),
                               out_sample_type=out.sample_type, on_progress=progress)
    job.mask = reply.mask
    if settings.output == OUTPUT_DECONTAMINATED:
        job.colours = bgmask_client.decontaminated_pixels(pixels, reply.extra[0] if reply.extra else b"",
                                                          fmt.channels, fmt.sample_type)


def _request_frames(gegl: Any, client: Any, jobs: Sequence[Job], settings: Settings, out: SampleFormat,
                    progress: ProgressFeed) -> None:
    """The jobs' masks as one frame sequence, first frame first. The layers are read as the client sends
    them (two at a time), not all up front; frame_layers made their crops, regions and formats equal."""
    first = jobs[0]
    replies = client.remove_frames((_read(gegl, job) for job in jobs), first.crop.w, first.crop.h,
                                   first.fmt.channels, first.fmt.sample_type, linear=first.fmt.linear,
                                   model=settings.model or None, options=_options(settings, first.region),
                                   out_sample_type=out.sample_type, temporal=settings.temporal,
                                   on_progress=bgmask_client.ForwardFrameProgress(progress.frame))
    for job, reply in zip(jobs, replies):
        job.mask = reply.mask


def _result_channel(gimp: Any, gegl: Any, image: Any, job: Job, babl: str) -> Any:
    """A layer-sized, unattached channel holding the mask (written as `babl`) in the crop and 0 around it.
    Channels are created in the image's precision, so copying one into a layer mask loses nothing."""
    channel = checked(gimp, gimp.Channel.new(image, "bgmask result", job.layer.get_width(),
                                             job.layer.get_height(), 100.0, gegl.Color.new("black")),
                      "make a channel for the mask")
    buffer = channel.get_buffer()
    buffer.set(gegl.Rectangle.new(job.crop.x, job.crop.y, job.crop.w, job.crop.h), babl, job.mask)
    buffer.flush()  # the core reads the channel next (combine_masks): push the tiles out first
    return channel


def _add_mask(gimp: Any, gegl: Any, image: Any, job: Job, babl: str, settings: Settings,
              has_selection: bool) -> None:
    layer = job.layer
    if settings.output in (OUTPUT_NEW_LAYER, OUTPUT_DECONTAMINATED):
        layer = _copy_above(gimp, gegl, image, job, settings.output == OUTPUT_DECONTAMINATED)
    result = _result_channel(gimp, gegl, image, job, babl)
    try:
        if has_selection:  # 0 outside the selection, and feathered selections stay feathered
            _, x, y = layer.get_offsets()
            checked(gimp, result.combine_masks(image.get_selection(), gimp.ChannelOps.INTERSECT, -x, -y),
                    "limit the mask to the selection")
        existing = layer.get_mask()
        name = layer.get_name()
        if existing is not None and settings.existing_mask == EXISTING_INTERSECT:
            checked(gimp, existing.combine_masks(result, gimp.ChannelOps.INTERSECT, 0, 0),
                    f"intersect the mask of '{name}'")
        else:
            if existing is not None:
                checked(gimp, layer.remove_mask(gimp.MaskApplyMode.DISCARD), f"remove the old mask of '{name}'")
            mask = checked(gimp, layer.create_mask(gimp.AddMaskType.BLACK), f"make a mask for '{name}'")
            checked(gimp, layer.add_mask(mask), f"add the mask to '{name}'")
            checked(gimp, mask.combine_masks(result, gimp.ChannelOps.ADD, 0, 0), f"fill the mask of '{name}'")
    finally:
        result.delete()


def _copy_above(gimp: Any, gegl: Any, image: Any, job: Job, decontaminated: bool) -> Any:
    """A copy of the job's layer just above it; with `decontaminated`, the crop holds the new colours."""
    layer = job.layer
    copy = checked(gimp, layer.copy(), f"copy '{layer.get_name()}'")
    if decontaminated:  # written while the copy is not part of the image: inserting it is the undo step
        buffer = copy.get_buffer()
        buffer.set(gegl.Rectangle.new(job.crop.x, job.crop.y, job.crop.w, job.crop.h), job.fmt.babl,
                   job.colours)
        buffer.flush()
    checked(gimp, image.insert_layer(copy, layer.get_parent(), image.get_item_position(layer)),
            f"add the copy of '{layer.get_name()}' to the image")
    copy.set_name(f"{layer.get_name()} ({'decontaminated' if decontaminated else 'subject'})")
    return copy


def _select(gimp: Any, gegl: Any, image: Any, jobs: Sequence[Job], babl: str, has_selection: bool) -> None:
    """The union of the layers' masks becomes the selection; an active selection limits it."""
    union = checked(gimp, gimp.Channel.new(image, "bgmask subject", image.get_width(), image.get_height(),
                                           100.0, gegl.Color.new("black")), "make a channel for the selection")
    try:
        for job in jobs:
            result = _result_channel(gimp, gegl, image, job, babl)
            try:
                _, x, y = job.layer.get_offsets()
                checked(gimp, union.combine_masks(result, gimp.ChannelOps.ADD, x, y), "combine the masks")
            finally:
                result.delete()
        if not has_selection:
            checked(gimp, gimp.Selection.all(image), "select all")
        checked(gimp, image.get_selection().combine_masks(union, gimp.ChannelOps.INTERSECT, 0, 0),
                "set the selection")
    finally:
        union.delete()

