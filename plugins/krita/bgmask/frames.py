"""Remove Background on every frame of an animated paint layer: one keyframed transparency mask, no widgets.

Like core: `prepare` reads the frames on the UI thread, `FramesJob.run`
sends them to the daemon as one frame sequence (the client's `remove_frames`: pipelined, temporally consistent
unless turned off, cancellable between frames), and `apply` puts the masks into the document, once every
frame's mask has arrived.

Krita's scripting API (libkis, 5.2 to 6.0) reads any keyframe (`Node.pixelDataAtTime`) but cannot create one:
keyframes come only from the timeline's `add_blank_frame` action, which acts on the active node of the active
view, and every keyframe and time switch it makes is an undo step. So `apply` builds the mask in a throw-away
document shown for a moment in its own view, keys and fills it there, and adds a clone of it (keyframes
included) to the layer: in the user's document that is a single undoable "add mask" step.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Dict, Generator, Iterator, List, NamedTuple, Optional, Tuple

from krita import Krita

from . import core, pixels
from .core import OUTPUT_MASK, PluginError, Settings, mask_name
from .pixels import Rect

SCOPE_KEYFRAMES = "keyframes"  # core.FRAME_SCOPES keys; "" is core's single-layer path
SCOPE_PLAYBACK = "playback"
# What one click may hold in memory: the layer keyframes read by `prepare` (until the masks arrive) and, for
# every time the mask is keyed at, MASK_COPIES masks (the daemon's reply in FramesReply, the temporary
# document's keyframe, and the clone added to the layer). Beyond it the click is refused before anything is read.
MAX_FRAME_BYTES = 1 << 30
MASK_COPIES = 3
ADD_KEYFRAME_ACTION = "add_blank_frame"
ACTIVATE_TIMEOUT_S = 5.0
ACTIVATE_POLL_S = 0.05

FrameProgress = Callable[[str, Optional[float], Optional[Tuple[int, int]]], None]


class FramesReply(NamedTuple):
    """What FramesJob.run brings back for `apply`: one region-sized mask per time, in `times` order."""

    masks: List[bytes]
    model: Optional[str]


def wanted(node: Any, settings: Settings) -> bool:
    """Whether the click means frames: a scope is chosen and the layer is animated (a still layer gets one
    mask whatever the scope, which is what a user clicking on it wants)."""
    return bool(settings.frames) and bool(node.animated())


def _last_frame(doc: Any) -> int:
    """The last frame that can hold a keyframe: the animation's end, or a later keyframe (animationLength)."""
    return max(doc.animationLength() - 1, doc.fullClipRangeEndTime(), doc.playBackEndTime())


def _keyframe_times(doc: Any, node: Any) -> List[int]:
    """The layer's keyframes (libkis lists none: each frame is asked)."""
    return [t for t in range(0, _last_frame(doc) + 1) if node.hasKeyframeAtTime(t)]


def frame_plan(doc: Any, node: Any, scope: str) -> Tuple[List[int], List[Optional[int]], List[int]]:
    """(times to key on the mask, the layer keyframe shown at each time or None before the first one, times
    where the mask gets an opaque key so that frames outside the chosen ones show the layer as before: frame
    0 when the first chosen frame is later (Krita keys frame 0 anyway), and the frame after a playback range)."""
    keys = _keyframe_times(doc, node)
    if not keys:
        raise PluginError(f'"{node.name()}" has no keyframes between frame 0 and frame {_last_frame(doc)}.')
    if scope == SCOPE_KEYFRAMES:
        return keys, list(keys), [0] if keys[0] > 0 else []
    if scope != SCOPE_PLAYBACK:
        raise PluginError(f"Unknown frame choice {scope!r}.")
    times = list(range(doc.playBackStartTime(), doc.playBackEndTime() + 1))
    sources = [max((k for k in keys if k <= t), default=None) for t in times]
    if all(s is None for s in sources):
        raise PluginError(f'"{node.name()}" shows nothing in the playback range (frames {times[0]} to '
                          f"{times[-1]}): its first keyframe is at frame {keys[0]}.")
    return times, sources, ([0] if times[0] > 0 else []) + [times[-1] + 1]


class FramesJob(NamedTuple):
    """Everything one frame sequence needs, read from the document before the request starts."""

    document: Any
    node_id: Any
    layer_name: str
    region: Rect                      # the canvas: what every frame of the animation shows
    times: List[int]                  # where the mask gets a keyframe with the daemon's mask
    unmasked: List[int]               # where it gets an opaque keyframe (frame_plan)
    sources: List[Optional[int]]      # the layer keyframe shown at each time (None: nothing yet)
    frames: Dict[int, bytes]          # layer keyframe -> its pixels over `region`, as Krita stores them
    layout: pixels.Layout
    linear: bool
    settings: Settings

    def run(self, client: Any, on_progress: Optional[FrameProgress] = None,
            cancel: Optional[Callable[[], bool]] = None) -> FramesReply:
        """Send the frames that show something as one sequence (a held frame is sent again: the daemon sees
        the still scene it is); frames before the layer's first keyframe get an empty mask."""
        _, _, w, h = self.region
        shown = [i for i, source in enumerate(self.sources) if source is not None]

        def frames() -> Iterator[bytes]:  # reordered one at a time, as the client asks for them
            for i in shown:
                yield pixels.to_protocol_order(self.frames[self.sources[i]], self.layout)

        def progress(index: int, stage: str, fraction: Optional[float]) -> None:
            if on_progress is not None:
                on_progress(stage, fraction, (index, len(shown)))

        results = client.remove_frames(frames(), w, h, self.layout.channels, self.layout.sample_type,
                                       linear=self.linear, model=self.settings.model,
                                       options=self.settings.options(), out_sample_type="u8",
                                       temporal=self.settings.temporal, cancel=cancel,
                                       on_progress=core.client_module().ForwardFrameProgress(progress))
        masks = [bytes(w * h)] * len(self.times)
        for i, result in zip(shown, results):
            masks[i] = result.mask
        return FramesReply(masks, results[0].header.get("model") if results else None)


def _held_bytes(region: Rect, layout: pixels.Layout, keys: List[int], times: List[int]) -> int:
    """What a click holds at its peak (see MAX_FRAME_BYTES): the keyframes' pixels and the masks' copies."""
    _, _, w, h = region
    return w * h * (layout.pixel_size * len(keys) + MASK_COPIES * len(times))


def _too_much(region: Rect, keys: List[int], times: List[int], held: int, scope: str) -> str:
    """Why the click is refused, and what the user can narrow in this scope."""
    _, _, w, h = region
    need = f"need about {held >> 20} MB (the frames read and {MASK_COPIES} copies of each mask); at most " \
           f"{MAX_FRAME_BYTES >> 20} MB can be held at once."
    if scope == SCOPE_PLAYBACK:
        return (f"The playback range (frames {times[0]} to {times[-1]}) has {len(times)} frames of {w}x{h}: they "
                f"{need} Narrow the playback range (the animation's start and end), or scale the image down.")
    return (f"{len(keys)} keyframes of {w}x{h} {need} Choose 'Every frame of the playback range' with a range "
            "over part of the animation, or scale the image down.")


def krita_too_old_for_frames() -> bool:
    """Krita 5.2.9's animation curves docker aborts Krita (an assert on a row of -1) while the keyed mask is
    built: in two of three CI runs before the fixes in `_activate` and `_leave`, and still in one of three
    real-app runs after them. Frames need 5.3 or later."""
    version = getattr(Krita.instance(), "version", lambda: "")()
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return len(parts) == 2 and tuple(parts) < (5, 3)


def prepare(doc: Any, node: Any, settings: Settings) -> Generator[Tuple[int, int], None, FramesJob]:
    """Read every frame the scope names into a FramesJob; changes nothing in the document. A generator, so
    that the caller returns to Krita's event loop between frames (up to a gigabyte is read: the editor keeps
    drawing, the progress shows and Cancel is heard): once every check has passed it yields (k, n) before
    reading layer keyframe k of n, and returns the job."""
    if settings.output != OUTPUT_MASK:
        raise PluginError("Frames get a keyframed transparency mask: set Output to Transparency mask, or "
                          "Frames to Current frame only.")
    if krita_too_old_for_frames():
        raise PluginError("Masks keyed on an animation's frames need Krita 5.3 or later: Krita 5.2 can abort while "
                          "the keyframed mask is built. Choose Frames: Current frame only, or update Krita.")
    model, depth = node.colorModel(), node.colorDepth()
    layout = pixels.layout_for(model, depth)
    if layout is None:
        raise PluginError(f'Frames of a {model}/{depth} layer cannot be sent; "{node.name()}" must be RGBA or '
                          "grayscale. Convert the image first (Image > Convert Image Color Space).")
    times, sources, unmasked = frame_plan(doc, node, settings.frames)
    region = (0, 0, doc.width(), doc.height())
    keys = sorted({s for s in sources if s is not None})
    held = _held_bytes(region, layout, keys, times)
    if held > MAX_FRAME_BYTES:
        raise PluginError(_too_much(region, keys, times, held, settings.frames))
    size = region[2] * region[3] * layout.pixel_size
    frames = {}
    for index, key in enumerate(keys):
        yield index, len(keys)
        data = bytes(node.pixelDataAtTime(*region, key))
        if len(data) != size:
            raise PluginError(f'Krita gave {len(data)} bytes for frame {key} of "{node.name()}", expected {size}.')
        frames[key] = data
    return FramesJob(doc, node.uniqueId(), node.name(), region, times, unmasked, sources, frames, layout,
                     pixels.is_linear_profile(node.colorProfile()), settings)


def _activate(doc: Any, node: Any) -> Iterator[float]:
    """Make `node`, just added, the active node of `doc`'s view. The view learns of a new node only from
    Krita's event loop, after the image has added it; asked before that, Krita 5.2 refuses with a SAFE
    ASSERT that leaves the view's layer selection half-changed (and its animation curves docker aborted
    Krita later). So: the image first, then the event loop, then ask until the view has it."""
    doc.waitForDone()
    waited = 0.0
    while True:
        waited += ACTIVATE_POLL_S
        yield ACTIVATE_POLL_S
        doc.setActiveNode(node)
        active = doc.activeNode()
        if active is not None and active.uniqueId() == node.uniqueId():
            return
        if waited >= ACTIVATE_TIMEOUT_S:
            raise PluginError("Krita did not activate the temporary mask; nothing was changed.")


def _keyed_mask(app: Any, scratch: Any, mask: Any, keys: List[Tuple[int, bytes]], region: Rect) -> None:
    """Key `mask` (active in the scratch document's view) at each time and fill that keyframe. It does not
    return to the event loop itself (Krita may, while it waits for an image operation), so the active image
    is checked before every keyframe: the action acts on whatever view is active."""
    action = app.action(ADD_KEYFRAME_ACTION)
    if action is None:
        raise PluginError(f"This Krita has no {ADD_KEYFRAME_ACTION} action to make keyframes; nothing was changed.")
    mask.enableAnimation()
    for t, data in keys:
        scratch.setCurrentTime(t)
        scratch.waitForDone()
        if app.activeDocument() is None or app.activeDocument().name() != scratch.name():
            raise PluginError("Another image became active while the mask was being built; nothing was changed.")
        action.trigger()
        scratch.waitForDone()
        if not mask.hasKeyframeAtTime(t):
            raise PluginError(f"Krita did not make a keyframe at frame {t}; nothing was changed.")
        mask.setPixelData(data, *region)


def _shows(view: Any, doc: Any) -> bool:
    """Whether `view` (possibly None, or a libkis View of no view) shows `doc`."""
    shown = view.document() if view is not None else None
    return shown is not None and shown.name() == doc.name()


def _leave(window: Any, user_view: Any, scratch: Any) -> None:
    """Make another image's view the active one before the scratch image closes: the user's view, or any other
    where the user closed theirs meanwhile. An image closed while its view is the active one leaves Krita's
    animation curves docker tied to its nodes, and that docker's assert (row >= 0) then aborted Krita 5.2.9
    and 5.3.4.1 in one to two of three real-app runs."""
    if user_view is not None:
        window.showView(user_view)  # a no-op for a view that was closed meanwhile
    if _shows(window.activeView(), scratch):
        for view in window.views():
            if not _shows(view, scratch):
                window.showView(view)
                return


def apply(job: FramesJob, reply: FramesReply) -> Iterator[float]:
    """Add the keyframed mask to the layer in one undoable step. A generator: each value is how long the
    caller returns to Krita's event loop before going on; its return value is the sentence for the status."""
    doc = job.document
    _, _, w, h = job.region
    if len(reply.masks) != len(job.times) or any(len(m) != w * h for m in reply.masks):
        raise PluginError(f"The daemon's masks do not fit the {len(job.times)} frames of {w}x{h}.")
    app = Krita.instance()
    window = app.activeWindow()
    if window is None:
        raise PluginError("Krita has no window to build the mask in; nothing was changed.")
    user_view = window.activeView()
    scratch = app.createDocument(w, h, f"bgmask frames {uuid.uuid4().hex[:8]}", "RGBA", "U8", "", 72.0)
    try:
        scratch.setBatchmode(True)
        scratch.setFullClipRangeStartTime(0)
        scratch.setFullClipRangeEndTime(max(job.times + job.unmasked))
        window.addView(scratch)
        holder = scratch.createNode("frames", "paintlayer")
        scratch.rootNode().addChildNode(holder, None)
        mask = scratch.createTransparencyMask(mask_name(reply.model or job.settings.model))
        holder.addChildNode(mask, None)
        yield from _activate(scratch, mask)
        opaque = b"\xff" * (w * h)
        keys = list(zip(job.times, reply.masks)) + [(t, opaque) for t in job.unmasked]
        _keyed_mask(app, scratch, mask, sorted(keys, key=lambda key: key[0]), job.region)
        node = doc.nodeByUniqueID(job.node_id)  # looked up last: the user had the event loop until now
        if node is None or node.type() != "paintlayer":
            raise PluginError(f'The layer "{job.layer_name}" was removed while its background was being computed.')
        node.addChildNode(mask.duplicate(), None)  # keyframes and all: the one undo step in the user's image
    finally:
        scratch.setModified(False)
        try:
            _leave(window, user_view, scratch)
        finally:
            scratch.close()  # with its view and its undo history
    return (f'Added "{mask_name(reply.model or job.settings.model)}" to "{job.layer_name}", keyed on '
            f"{len(job.times)} frames ({job.times[0]} to {job.times[-1]}).")
