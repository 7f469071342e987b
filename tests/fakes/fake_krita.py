"""An in-memory stand-in for Krita's `krita` module, for the plugin's unit tests on the host.

It models only what the bgmask plugin uses, and behaves the way Krita 5.2.9 was seen to behave in
the real application (tests/hostapps/krita_*.py check the same things there):
- pixelData/setPixelData take image coordinates and read/write raw bytes in the node's colour space;
  Krita's own byte order (B,G,R,A for integer RGBA) is whatever the test writes;
- transparency masks and selections hold one byte per pixel, 0 where nothing was written;
- bounds() is the tight box around non-zero pixels;
- Node.addChildNode and Node.remove are undoable commands ("Add Layer"/"Remove Layer"); setPixelData,
  setChildNodes on a node outside the tree, and Document.setSelection are not;
- Document.clone() copies the tree with the same uniqueIds and is not one of Krita.documents();
- readSetting/writeSetting keep strings, as kritarc does;
- animation (Krita 5.2.9, 5.3.4.1 and 6.0.4.1 alike): enableAnimation() makes a node animated without
  keyframes; only the timeline's add_blank_frame action, on the active node of the active view's document at
  its current time, adds one (undoable; the node's content so far becomes frame 0 when it is the first);
  pixelData/setPixelData/bounds work on the keyframe shown at the current time, pixelDataAtTime only on a
  keyframe (empty elsewhere); setCurrentTime is an undo step; duplicate() keeps the keyframes;
- a node added to a document cannot be made active before the event loop has run (`Krita.process_events`);
- Window.closed_while_shown names the documents closed while their view was the active one, and
  Krita.early_activations the nodes activated in the callback that added them (Krita 5.2.9 and 5.3.4.1
  could then abort in the animation curves docker: see frames.apply).
"""

from __future__ import annotations

import copy
import uuid
from typing import Callable, Dict, List, Optional, Tuple

_CHANNELS = {"RGBA": 4, "GRAYA": 2, "CMYKA": 5, "LABA": 4, "XYZA": 4, "YCbCrA": 4}
_DEPTH_BYTES = {"U8": 1, "U16": 2, "F16": 2, "F32": 4}
DEFAULT_PROFILES = {
    ("RGBA", "U8"): "sRGB-elle-V2-srgbtrc.icc",
    ("GRAYA", "U8"): "Gray-D50-elle-V2-srgbtrc.icc",
    ("CMYKA", "U8"): "Chemical proof",
    ("LABA", "U16"): "Lab identity built-in",
}


def default_profile(model: str, depth: str) -> str:
    """Krita 5.2.9's defaults: sRGB TRC for 8-bit RGB/gray, linear (g10) for deeper RGB/gray."""
    if (model, depth) in DEFAULT_PROFILES:
        return DEFAULT_PROFILES[(model, depth)]
    if model == "RGBA":
        return "sRGB-elle-V2-g10.icc"
    if model == "GRAYA":
        return "Gray-D50-elle-V2-g10.icc"
    return f"{model} built-in"


class QRect:
    def __init__(self, x: int = 0, y: int = 0, w: int = 0, h: int = 0) -> None:
        self._r = (x, y, w, h)

    def x(self) -> int:
        return self._r[0]

    def y(self) -> int:
        return self._r[1]

    def width(self) -> int:
        return self._r[2]

    def height(self) -> int:
        return self._r[3]

    def isEmpty(self) -> bool:
        return self._r[2] <= 0 or self._r[3] <= 0


class _Device:
    """An unbounded grid of pixels of `pixel_size` bytes, zero where nothing was written."""

    def __init__(self, pixel_size: int) -> None:
        self.pixel_size = pixel_size
        self.rect = (0, 0, 0, 0)
        self.data = bytearray()

    def _grow(self, x: int, y: int, w: int, h: int) -> None:
        ox, oy, ow, oh = self.rect
        if ow and oh:
            nx, ny = min(ox, x), min(oy, y)
            nw, nh = max(ox + ow, x + w) - nx, max(oy + oh, y + h) - ny
        else:
            nx, ny, nw, nh = x, y, w, h
        if (nx, ny, nw, nh) == self.rect:
            return
        ps = self.pixel_size
        data = bytearray(nw * nh * ps)
        for row in range(oh):
            dst = ((oy - ny + row) * nw + (ox - nx)) * ps
            data[dst:dst + ow * ps] = self.data[row * ow * ps:(row + 1) * ow * ps]
        self.rect, self.data = (nx, ny, nw, nh), data

    def read(self, x: int, y: int, w: int, h: int) -> bytes:
        ps = self.pixel_size
        out = bytearray(w * h * ps)
        ox, oy, ow, oh = self.rect
        x0, x1 = max(x, ox), min(x + w, ox + ow)
        for row in range(max(y, oy), min(y + h, oy + oh)):
            if x0 >= x1:
                break
            src = ((row - oy) * ow + (x0 - ox)) * ps
            dst = ((row - y) * w + (x0 - x)) * ps
            out[dst:dst + (x1 - x0) * ps] = self.data[src:src + (x1 - x0) * ps]
        return bytes(out)

    def write(self, data: bytes, x: int, y: int, w: int, h: int) -> None:
        ps = self.pixel_size
        self._grow(x, y, w, h)
        ox, oy, ow, _ = self.rect
        for row in range(h):
            dst = ((y - oy + row) * ow + (x - ox)) * ps
            self.data[dst:dst + w * ps] = data[row * w * ps:(row + 1) * w * ps]

    def bounds(self) -> QRect:
        ox, oy, ow, oh = self.rect
        ps = self.pixel_size
        rows = [r for r in range(oh) if any(self.data[r * ow * ps:(r + 1) * ow * ps])]
        if not rows:
            return QRect()
        left, right = ow, 0
        for r in rows:
            line = bytes(self.data[r * ow * ps:(r + 1) * ow * ps])
            left = min(left, (len(line) - len(line.lstrip(b"\0"))) // ps)
            right = max(right, (len(line.rstrip(b"\0")) + ps - 1) // ps)
        return QRect(ox + left, oy + rows[0], right - left, rows[-1] - rows[0] + 1)


class Node:
    def __init__(self, doc: "Document", name: str, kind: str, model: str = "RGBA", depth: str = "U8",
                 profile: Optional[str] = None) -> None:
        self._doc = doc
        self._name = name
        self._type = kind
        self._model, self._depth = model, depth
        self._profile = profile or default_profile(model, depth)
        self._uuid = uuid.uuid4()
        self._parent: Optional[Node] = None
        self._children: List[Node] = []
        mask_like = kind in ("transparencymask", "selectionmask")
        self._device = _Device(1 if mask_like else _CHANNELS[model] * _DEPTH_BYTES[depth])
        self._keys: Optional[Dict[int, _Device]] = None  # animated: time -> that keyframe's pixels

    # identity and tree
    def uniqueId(self) -> uuid.UUID:
        return self._uuid

    def name(self) -> str:
        return self._name

    def setName(self, name: str) -> None:
        self._name = name

    def type(self) -> str:
        return self._type

    def parentNode(self) -> Optional["Node"]:
        return self._parent

    def childNodes(self) -> List["Node"]:
        return list(self._children)

    def addChildNode(self, child: "Node", above: Optional["Node"]) -> bool:
        """Undoable, like Krita 5.2 (a KisImageLayerAddCommand stroke)."""
        index = len(self._children) if above is None else self._children.index(above) + 1

        def do() -> None:
            self._children.insert(index, child)
            child._parent = self
            child._adopt(self._doc)

        def undo() -> None:
            self._children.remove(child)
            child._parent = None

        self._doc._push("Add Layer", do, undo)
        self._doc._unsettled = True
        return True

    def _adopt(self, doc: "Document") -> None:
        """A node added to another document's tree (a duplicate from elsewhere) now belongs to it."""
        self._doc = doc
        for child in self._children:
            child._adopt(doc)

    def setChildNodes(self, nodes: List["Node"]) -> None:
        for node in nodes:
            node._parent = self
        self._children = list(nodes)

    def remove(self) -> bool:
        parent = self._parent
        if parent is None:
            return False
        index = parent._children.index(self)

        def do() -> None:
            parent._children.remove(self)
            self._parent = None

        def undo() -> None:
            parent._children.insert(index, self)
            self._parent = parent

        self._doc._push("Remove Layer", do, undo)
        return True

    def duplicate(self) -> "Node":
        dup = copy.copy(self)
        dup._uuid = uuid.uuid4()
        dup._parent = None
        dup._device = copy.deepcopy(self._device)
        dup._keys = copy.deepcopy(self._keys)
        dup._children = []
        for child in self._children:
            c = child.duplicate()
            c._parent = dup
            dup._children.append(c)
        return dup

    # colour and pixels
    def colorModel(self) -> str:
        return "A" if self._type.endswith("mask") else self._model

    def colorDepth(self) -> str:
        return "U8" if self._type.endswith("mask") else self._depth

    def colorProfile(self) -> str:
        return self._profile

    def setColorSpace(self, model: str, depth: str, profile: str) -> bool:
        """Only what the tests need: CMYKA/U8 to RGBA/U8 or U16 with a naive formula."""
        if (self._model, self._depth) != ("CMYKA", "U8") or model != "RGBA" or depth not in ("U8", "U16"):
            raise NotImplementedError(f"fake conversion {self._model}/{self._depth} -> {model}/{depth}")
        old = self._device
        new = _Device(4 * _DEPTH_BYTES[depth])
        ox, oy, ow, oh = old.rect
        src = old.read(ox, oy, ow, oh)
        out = bytearray()
        for i in range(0, len(src), 5):
            c, m, y, k, a = src[i:i + 5]
            rgb = [255 - min(255, v + k) for v in (c, m, y)]
            bgra = [rgb[2], rgb[1], rgb[0], a]
            out += bytes(bgra) if depth == "U8" else b"".join((v * 257).to_bytes(2, "little") for v in bgra)
        new.write(bytes(out), ox, oy, ow, oh)
        self._device, self._model, self._depth, self._profile = new, model, depth, profile
        return True

    # animation
    def animated(self) -> bool:
        return self._keys is not None

    def enableAnimation(self) -> None:
        if self._keys is None:
            self._keys = {}

    def hasKeyframeAtTime(self, time: int) -> bool:
        return bool(self._keys) and time in self._keys

    def pixelDataAtTime(self, x: int, y: int, w: int, h: int, time: int) -> bytes:
        if not self.hasKeyframeAtTime(time):
            return b""
        return self._keys[time].read(x, y, w, h)

    def _add_keyframe(self, time: int) -> Callable[[], None]:
        """What add_blank_frame does to this node; returns how to undo it."""
        before = dict(self._keys or {})
        if not self._keys:
            self._keys = {0: self._device}
        self._keys[time] = _Device(self._device.pixel_size)

        def undo() -> None:
            self._keys = before
        return undo

    def _shown(self) -> _Device:
        """The pixels shown at the document's current time: the last keyframe at or before it."""
        if not self._keys:
            return self._device
        earlier = [t for t in self._keys if t <= self._doc._time]
        return self._keys[max(earlier)] if earlier else _Device(self._device.pixel_size)

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        return self._shown().read(x, y, w, h)

    def setPixelData(self, data: bytes, x: int, y: int, w: int, h: int) -> bool:
        if len(data) < w * h * self._device.pixel_size:
            return False
        self._shown().write(bytes(data), x, y, w, h)
        self._doc._modified = True
        return True

    def bounds(self) -> QRect:
        return self._shown().bounds()


class Selection:
    def __init__(self) -> None:
        self._device = _Device(1)

    def select(self, x: int, y: int, w: int, h: int, value: int) -> None:
        self._device.write(bytes([value]) * (w * h), x, y, w, h)

    def setPixelData(self, data: bytes, x: int, y: int, w: int, h: int) -> None:
        self._device.write(bytes(data), x, y, w, h)

    def pixelData(self, x: int, y: int, w: int, h: int) -> bytes:
        return self._device.read(x, y, w, h)

    def x(self) -> int:
        return self._device.bounds().x()

    def y(self) -> int:
        return self._device.bounds().y()

    def width(self) -> int:
        return self._device.bounds().width()

    def height(self) -> int:
        return self._device.bounds().height()


class Document:
    def __init__(self, width: int, height: int, name: str, model: str, depth: str, profile: str = "") -> None:
        self._w, self._h, self._name = width, height, name
        self._model, self._depth = model, depth
        self._profile = profile or default_profile(model, depth)
        self._root = Node(self, "root", "grouplayer", model, depth, self._profile)
        self._active: Optional[Node] = None
        self._selection: Optional[Selection] = None
        self._modified = False
        self.undo_stack: List[Tuple[str, Callable[[], None], Callable[[], None]]] = []
        self.closed = False
        self._time = 0
        self._clip = (0, 100)  # the animation's start and end; the playback range follows it
        self._unsettled = False  # nodes were added since the event loop last ran

    def _push(self, text: str, do: Callable[[], None], undo: Callable[[], None]) -> None:
        do()
        self.undo_stack.append((text, do, undo))
        self._modified = True

    def undo(self) -> str:
        """What Edit > Undo does: revert the last command; returns its text."""
        text, _, undo = self.undo_stack.pop()
        undo()
        return text

    def name(self) -> str:
        return self._name

    def width(self) -> int:
        return self._w

    def height(self) -> int:
        return self._h

    def colorModel(self) -> str:
        return self._model

    def colorDepth(self) -> str:
        return self._depth

    def colorProfile(self) -> str:
        return self._profile

    def modified(self) -> bool:
        return self._modified

    def setModified(self, value: bool) -> None:
        self._modified = value

    def rootNode(self) -> Node:
        return self._root

    def topLevelNodes(self) -> List[Node]:
        return self._root.childNodes()

    def activeNode(self) -> Optional[Node]:
        return self._active

    def setActiveNode(self, node: Optional[Node]) -> None:
        if self._unsettled and Krita.instance().window.shows(self):
            # Krita 5.2: ignored in the callback that added the node to a document in a view (SAFE ASSERT "shape")
            Krita.instance().early_activations.append(node.name() if node is not None else None)
            return
        self._active = node

    def currentTime(self) -> int:
        return self._time

    def setCurrentTime(self, time: int) -> None:
        """requestTimeSwitchWithUndo: an undo step."""
        before = self._time

        def do() -> None:
            self._time = time

        def undo() -> None:
            self._time = before

        self._push("Switch Frames", do, undo)

    def fullClipRangeStartTime(self) -> int:
        return self._clip[0]

    def fullClipRangeEndTime(self) -> int:
        return self._clip[1]

    def setFullClipRangeStartTime(self, time: int) -> None:
        self._clip = (time, self._clip[1])

    def setFullClipRangeEndTime(self, time: int) -> None:
        self._clip = (self._clip[0], time)

    def animationLength(self) -> int:
        """The animation's end or its last keyframe, whichever is later, plus one."""
        keys, stack = [], [self._root]
        while stack:
            node = stack.pop()
            keys += list(node._keys or {})
            stack += node._children
        return max([self._clip[1]] + keys) + 1

    def playBackStartTime(self) -> int:
        return self._clip[0]

    def playBackEndTime(self) -> int:
        return self._clip[1]

    def setBatchmode(self, value: bool) -> None:
        self.batchmode = value

    def waitForDone(self) -> None:
        """Nothing runs in the background here."""

    def createNode(self, name: str, kind: str) -> Node:
        return Node(self, name, kind, self._model, self._depth, self._profile)

    def createGroupLayer(self, name: str) -> Node:
        return self.createNode(name, "grouplayer")

    def createTransparencyMask(self, name: str) -> Node:
        return Node(self, name, "transparencymask")

    def nodeByUniqueID(self, uid: uuid.UUID) -> Optional[Node]:
        stack = list(self._root._children)
        while stack:
            node = stack.pop()
            if node._uuid == uid:
                return node
            stack.extend(node._children)
        return None

    def selection(self) -> Optional[Selection]:
        return self._selection

    def setSelection(self, selection: Optional[Selection]) -> None:
        """Not undoable in Krita 5.2.9 (seen in the real application)."""
        self._selection = selection

    def clone(self) -> "Document":
        twin = copy.copy(self)
        twin.undo_stack = []
        twin.closed = False
        twin._root = _clone_tree(self._root, twin)
        return twin

    def close(self) -> bool:
        self.closed = True
        app = Krita.instance()
        if app.window.active is not None and app.window.active._doc is self:
            app.window.closed_while_shown.append(self.name())
        if self in app._documents:
            app._documents.remove(self)
        app.window._close_views_of(self)
        return True


def _clone_tree(node: Node, doc: Document) -> Node:
    twin = copy.copy(node)  # same uniqueId, as Krita's Document.clone() keeps them
    twin._doc = doc
    twin._device = copy.deepcopy(node._device)
    twin._keys = copy.deepcopy(node._keys)
    twin._children = []
    for child in node._children:
        c = _clone_tree(child, doc)
        c._parent = twin
        twin._children.append(c)
    return twin


class View:
    def __init__(self, doc: Document) -> None:
        self._doc = doc

    def document(self) -> Document:
        return self._doc


class Window:
    """One main window; the active view's document is Krita.activeDocument()."""

    def __init__(self) -> None:
        self._views: List[View] = []
        self.active: Optional[View] = None
        self.closed_while_shown: List[str] = []  # see the module docstring

    def addView(self, doc: Document) -> View:
        view = View(doc)
        self._views.append(view)
        self.active = view
        return view

    def activeView(self) -> Optional[View]:
        return self.active

    def views(self) -> List[View]:
        return list(self._views)

    def showView(self, view: View) -> None:
        if view in self._views:
            self.active = view

    def shows(self, doc: Document) -> bool:
        return any(v._doc is doc for v in self._views)

    def _close_views_of(self, doc: Document) -> None:
        self._close_views([v for v in self._views if v._doc is doc])

    def _close_views(self, views: List[View]) -> None:
        """The user closing views: another one becomes active if the active one went."""
        self._views = [v for v in self._views if v not in views]
        if self.active in views:
            self.active = self._views[-1] if self._views else None


class Action:
    def __init__(self, name: str) -> None:
        self._name = name

    def trigger(self) -> None:
        """add_blank_frame: a blank keyframe on the active view's active node, at that document's time."""
        doc = Krita.instance().activeDocument()
        node = doc.activeNode() if doc is not None else None
        if node is None or node._keys is None:
            return
        undo = node._add_keyframe(doc._time)
        doc.undo_stack.append(("Add Keyframe", lambda: None, undo))


class Krita:
    _instance: Optional["Krita"] = None
    ACTIONS = ("add_blank_frame",)

    def __init__(self) -> None:
        self._documents: List[Document] = []
        self.early_activations: List[Optional[str]] = []  # Document.setActiveNode calls Krita 5.2 ignored
        self.settings: Dict[Tuple[str, str], str] = {}  # kritarc: (group, key) -> value
        self.window = Window()

    @classmethod
    def instance(cls) -> "Krita":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @classmethod
    def reset(cls) -> None:
        """Tests: forget all documents."""
        cls._instance = None

    def createDocument(self, width: int, height: int, name: str, model: str, depth: str, profile: str,
                       resolution: float) -> Document:
        doc = Document(width, height, name, model, depth, profile)
        self._documents.append(doc)
        return doc

    def documents(self) -> List[Document]:
        return list(self._documents)

    def activeWindow(self) -> Window:
        return self.window

    def activeDocument(self) -> Optional[Document]:
        return self.window.active._doc if self.window.active is not None else None

    def action(self, name: str) -> Optional[Action]:
        return Action(name) if name in self.ACTIONS else None

    def process_events(self) -> None:
        """Tests: what returning to Krita's event loop does here (new nodes become activatable)."""
        for doc in self._documents:
            doc._unsettled = False

    def readSetting(self, group: str, key: str, default: str) -> str:
        """Like Krita's: kritarc holds strings."""
        return self.settings.get((group, key), default)

    def writeSetting(self, group: str, key: str, value: str) -> None:
        assert isinstance(value, str), value
        self.settings[(group, key)] = value
