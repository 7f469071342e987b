"""A small stand-in for GIMP 3's `Gimp` and `Gegl` gi modules: just the calls the plug-in's logic makes.

It behaves as real GIMP 3.0.4 was seen to behave in the chroot (tests/test_gimp_hostapp.py checks the
real thing): offsets come back as (True, x, y), Selection.bounds as (True, non_empty, x1, y1, x2, y2);
channels made with Channel.new are not part of the image until inserted and start black; combine_masks
with INTERSECT keeps the minimum and with ADD the maximum, the second channel placed at (offx, offy) of
the first, sample for sample, without conversion; buffers read and write babl-named formats
("R'G'B'A u16", "Y float", ...) with conversion (gray written into a layer sets R, G and B; a format
without A writes opaque pixels). Layers keep one encoding (the values the test put in are what every
format reads), but channels keep GIMP's: layer masks are linear, and the selection and channels made with
Channel.new are gamma-encoded (Y') in 8-bit non-linear images, linear otherwise
(gimp_image_get_channel_format), so a "Y u8" written into such a channel is stored encoded.

It also keeps the record a test needs: every change to the image says whether it happened inside an
undo group, and writing straight into the buffer of a drawable that belongs to the image (which real
GIMP does without an undo step) is recorded as such.
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, List, Optional, Tuple

_SAMPLES = {"u8": ("B", 255), "u16": ("H", 65535), "u32": ("I", 4294967295), "half": ("e", None),
            "float": ("f", None), "double": ("d", None)}


class Nick:
    """An enum value with GLib's value_nick."""

    def __init__(self, nick: str) -> None:
        self.value_nick = nick

    def __repr__(self) -> str:
        return f"<{self.value_nick}>"


ChannelOps = SimpleNamespace(ADD=Nick("add"), SUBTRACT=Nick("subtract"), REPLACE=Nick("replace"),
                             INTERSECT=Nick("intersect"))
AddMaskType = SimpleNamespace(WHITE=Nick("white"), BLACK=Nick("black"))
MaskApplyMode = SimpleNamespace(APPLY=Nick("apply"), DISCARD=Nick("discard"))


def _encode_srgb(v: float) -> float:
    return 12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def _decode_srgb(v: float) -> float:
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def parse_format(name: str) -> Tuple[List[str], str]:
    """"R'G'B'A u16" -> (['R', 'G', 'B', 'A'], 'u16'); the TRC marks are dropped (layers keep one encoding;
    Buffer converts for the channels that GIMP keeps gamma-encoded)."""
    model, kind = name.split(" ")
    assert kind in _SAMPLES, name
    comps = [c for c in model.replace("'", "") if c in "RGBYA"]
    assert comps in (["R", "G", "B"], ["R", "G", "B", "A"], ["Y"], ["Y", "A"]), name
    return comps, kind


def _encode(values: List[float], kind: str) -> bytes:
    code, scale = _SAMPLES[kind]
    if scale is None:
        return struct.pack(f"<{len(values)}{code}", *values)
    return struct.pack(f"<{len(values)}{code}", *(round(min(1.0, max(0.0, v)) * scale) for v in values))


def _decode(data: bytes, kind: str) -> List[float]:
    code, scale = _SAMPLES[kind]
    n = len(data) // struct.calcsize(code)
    values = struct.unpack(f"<{n}{code}", bytes(data))
    return [float(v) for v in values] if scale is None else [v / scale for v in values]


class Rectangle:
    def __init__(self, x: int, y: int, width: int, height: int) -> None:
        self.x, self.y, self.width, self.height = x, y, width, height

    @classmethod
    def new(cls, x: int, y: int, width: int, height: int) -> "Rectangle":
        return cls(x, y, width, height)


class Color:
    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def new(cls, name: str) -> "Color":
        return cls(name)


Gegl = SimpleNamespace(Rectangle=Rectangle, Color=Color, AbyssPolicy=SimpleNamespace(CLAMP=Nick("clamp")))


class Buffer:
    """Reads and writes a drawable's pixels (RGBA floats for layers, one float for channels)."""

    def __init__(self, drawable: "Drawable") -> None:
        self.drawable = drawable

    def get(self, rect: Rectangle, scale: float, fmt: str, abyss: Any) -> bytes:
        assert scale == 1.0
        d = self.drawable
        assert 0 <= rect.x and 0 <= rect.y and rect.x + rect.width <= d.width and rect.y + rect.height <= d.height
        d.image.reads.append((d, (rect.x, rect.y, rect.width, rect.height), fmt))
        comps, kind = parse_format(fmt)
        out: List[float] = []
        for y in range(rect.y, rect.y + rect.height):
            for x in range(rect.x, rect.x + rect.width):
                out.extend(d.sample(x, y, comps))
        if d.channels == 1 and d.gamma != ("'" in fmt):
            out = [(_decode_srgb if d.gamma else _encode_srgb)(v) for v in out]
        return _encode(out, kind)

    def set(self, rect: Rectangle, fmt: str, data: bytes) -> None:
        comps, kind = parse_format(fmt)
        d = self.drawable
        assert comps == ["Y"] or d.channels == 4, "only layers take colour"
        values = _decode(data, kind)
        if d.channels == 1 and d.gamma != ("'" in fmt):
            values = [(_encode_srgb if d.gamma else _decode_srgb)(v) for v in values]
        n = len(comps)
        assert len(values) == rect.width * rect.height * n, "wrong number of samples for the rectangle"
        assert 0 <= rect.x and 0 <= rect.y and rect.x + rect.width <= d.width and rect.y + rect.height <= d.height
        if d.attached():
            d.image.record("buffer write without undo", undoable=False)
        for i in range(rect.width * rect.height):
            d.pixels[(rect.y + i // rect.width) * d.width + rect.x + i % rect.width] = \
                d.compose(values[i * n:(i + 1) * n], comps)

    def flush(self) -> None:
        pass


class Drawable:
    def __init__(self, image: "Image", name: str, width: int, height: int, channels: int,
                 fill: Callable[[int, int], List[float]]) -> None:
        self.image, self.name, self.width, self.height, self.channels = image, name, width, height, channels
        self.x = self.y = 0
        self.pixels = [fill(x, y) for y in range(height) for x in range(width)]
        self.deleted = False
        self.gamma = False  # channels: samples stored gamma-encoded (Y')

    def attached(self) -> bool:
        return False

    def sample(self, x: int, y: int, comps: List[str]) -> List[float]:
        p = self.pixels[y * self.width + x]
        if self.channels == 1:
            return [p[0]]
        r, g, b, a = p
        luma = 0.2126 * r + 0.7152 * g + 0.0722 * b
        return [{"R": r, "G": g, "B": b, "Y": luma, "A": a}[c] for c in comps]

    def compose(self, values: List[float], comps: List[str]) -> List[float]:
        """A stored pixel from samples written in `comps` (gray goes to R, G and B; no A: opaque)."""
        if self.channels == 1:
            return [values[0]]
        got = dict(zip(comps, values))
        if "Y" in got:
            got.update(R=got["Y"], G=got["Y"], B=got["Y"])
        return [got["R"], got["G"], got["B"], got.get("A", 1.0)]

    def value(self, x: int, y: int) -> float:
        return self.pixels[y * self.width + x][0]

    def get_buffer(self) -> Buffer:
        assert not self.deleted
        return Buffer(self)

    def get_width(self) -> int:
        return self.width

    def get_height(self) -> int:
        return self.height

    def get_offsets(self) -> Tuple[bool, int, int]:
        return True, self.x, self.y

    def get_name(self) -> str:
        return self.name

    def set_name(self, name: str) -> None:
        self.image.record("rename")
        self.name = name

    def update(self, x: int, y: int, width: int, height: int) -> bool:
        return True

    def is_layer(self) -> bool:
        return False


class Channel(Drawable):
    """A channel, layer mask or the selection: one float per pixel."""

    def __init__(self, image: "Image", name: str, width: int, height: int, value: float = 0.0,
                 role: str = "channel") -> None:
        super().__init__(image, name, width, height, 1, lambda x, y: [value])
        self.role = role  # "channel" (unattached, from Channel.new), "mask" or "selection"
        self.owner: Optional["Layer"] = None
        self.gamma = role != "mask" and image.precision == "u8-non-linear"

    @classmethod
    def new(cls, image: "Image", name: str, width: int, height: int, opacity: float, color: Color) -> "Channel":
        return cls(image, name, width, height)

    def attached(self) -> bool:
        if self.role == "selection":
            return True
        return self.role == "mask" and self.owner is not None and self.owner.get_mask() is self \
            and self.owner.attached()

    def get_offsets(self) -> Tuple[bool, int, int]:
        if self.role == "mask" and self.owner is not None:
            return self.owner.get_offsets()
        return True, self.x, self.y

    def combine_masks(self, other: "Channel", op: Nick, offx: int, offy: int) -> bool:
        """GIMP's gimp-channel-combine-masks: `other` placed at (offx, offy) of this channel."""
        assert not self.deleted and not other.deleted
        if self.attached():
            self.image.record(f"combine {op.value_nick} into {self.role}")
        for y in range(self.height):
            for x in range(self.width):
                ox, oy = x - offx, y - offy
                inside = 0 <= ox < other.width and 0 <= oy < other.height
                b = other.value(ox, oy) if inside else 0.0
                a = self.value(x, y)
                if op is ChannelOps.ADD:
                    v = max(a, b)
                elif op is ChannelOps.INTERSECT:
                    v = min(a, b)
                elif op is ChannelOps.SUBTRACT:
                    v = max(0.0, a - b)
                else:
                    v = b
                self.pixels[y * self.width + x] = [v]
        return True

    def delete(self) -> bool:
        assert not self.attached(), "deleting a channel that is part of the image"
        self.deleted = True
        self.image.deleted_channels += 1
        return True


class Layer(Drawable):
    def __init__(self, image: "Image", name: str, width: int, height: int, has_alpha: bool,
                 fill: Callable[[int, int], List[float]]) -> None:
        super().__init__(image, name, width, height, 4, fill)
        self.alpha = has_alpha
        self.mask: Optional[Channel] = None

    def attached(self) -> bool:
        return self in self.image.layers

    def is_layer(self) -> bool:
        return True

    def is_group(self) -> bool:
        return False

    def has_alpha(self) -> bool:
        return self.alpha

    def get_parent(self) -> None:
        return None

    def get_mask(self) -> Optional[Channel]:
        return self.mask

    def create_mask(self, kind: Nick) -> Channel:
        mask = Channel(self.image, f"{self.name} mask", self.width, self.height,
                       1.0 if kind is AddMaskType.WHITE else 0.0, role="mask")
        mask.owner = self
        return mask

    def add_mask(self, mask: Channel) -> bool:
        assert self.mask is None, "the layer already has a mask"
        assert mask.owner is self and (mask.width, mask.height) == (self.width, self.height)
        self.image.record("add mask")
        self.mask = mask
        return True

    def remove_mask(self, mode: Nick) -> bool:
        assert self.mask is not None and mode is MaskApplyMode.DISCARD
        self.image.record("remove mask")
        self.mask = None
        return True

    def copy(self) -> "Layer":
        twin = copy.copy(self)
        twin.pixels = [list(p) for p in self.pixels]
        twin.name = f"{self.name} copy"
        if self.mask is not None:
            twin.mask = copy.copy(self.mask)
            twin.mask.pixels = [list(p) for p in self.mask.pixels]
            twin.mask.owner = twin
        return twin


@dataclass
class Image:
    width: int
    height: int
    base_type: str = "rgb"
    precision: str = "u8-non-linear"
    layers: List[Layer] = field(default_factory=list)
    changes: List[Tuple[str, bool]] = field(default_factory=list)  # (what, inside an undo group)
    reads: List[Any] = field(default_factory=list)
    undo_depth: int = 0
    undo_groups: int = 0
    deleted_channels: int = 0

    def __post_init__(self) -> None:
        self.selection = Channel(self, "selection", self.width, self.height, role="selection")

    def record(self, what: str, undoable: bool = True) -> None:
        self.changes.append((what if undoable else f"NOT UNDOABLE: {what}", self.undo_depth > 0))

    def add_layer(self, name: str, width: int, height: int, offsets: Tuple[int, int] = (0, 0),
                  has_alpha: bool = True, fill: Callable[[int, int], List[float]] = lambda x, y: [0.5] * 4
                  ) -> Layer:
        """Test setup (not a GIMP call): a layer at `offsets`, pixels from fill(x, y) -> RGBA floats."""
        layer = Layer(self, name, width, height, has_alpha, fill)
        layer.x, layer.y = offsets
        self.layers.insert(0, layer)
        return layer

    def select_rect(self, x: int, y: int, w: int, h: int, value: float = 1.0) -> None:
        """Test setup: replace the selection with a rectangle."""
        self.selection.pixels = [[value if x <= px < x + w and y <= py < y + h else 0.0]
                                 for py in range(self.height) for px in range(self.width)]

    def state(self) -> Any:
        """Everything a user could see, to compare before and after."""
        return ([(l.name, l.x, l.y, l.width, l.height, l.pixels, l.mask.pixels if l.mask else None)
                 for l in self.layers], self.selection.pixels)

    # -- Gimp.Image API -----------------------------------------------------------------------------
    def get_width(self) -> int:
        return self.width

    def get_height(self) -> int:
        return self.height

    def get_precision(self) -> Nick:
        return Nick(self.precision)

    def get_base_type(self) -> Nick:
        return Nick(self.base_type)

    def get_layers(self) -> List[Layer]:
        return list(self.layers)

    def get_selection(self) -> Channel:
        return self.selection

    def get_item_position(self, layer: Layer) -> int:
        return self.layers.index(layer)

    def insert_layer(self, layer: Layer, parent: Any, position: int) -> bool:
        assert parent is None and layer not in self.layers
        self.record("insert layer")
        self.layers.insert(position, layer)
        return True

    def undo_group_start(self) -> bool:
        self.undo_depth += 1
        self.undo_groups += 1
        return True

    def undo_group_end(self) -> bool:
        assert self.undo_depth > 0
        self.undo_depth -= 1
        return True


def _bounds(image: Image) -> Tuple[bool, bool, int, int, int, int]:
    sel = image.selection
    xs = [i % sel.width for i, p in enumerate(sel.pixels) if p[0] > 0]
    ys = [i // sel.width for i, p in enumerate(sel.pixels) if p[0] > 0]
    if not xs:
        return True, False, 0, 0, image.width, image.height
    return True, True, min(xs), min(ys), max(xs) + 1, max(ys) + 1


def _select_all(image: Image) -> bool:
    image.record("select all")
    image.selection.pixels = [[1.0] for _ in image.selection.pixels]
    return True


class FakeGimp:
    """The `Gimp` module: the classes, enums and progress calls the logic uses, plus a progress log."""

    ChannelOps = ChannelOps
    AddMaskType = AddMaskType
    MaskApplyMode = MaskApplyMode
    Channel = Channel
    Selection = SimpleNamespace(bounds=staticmethod(_bounds), all=staticmethod(_select_all))

    def __init__(self) -> None:
        self.progress: List[Tuple[str, Any]] = []
        self.last_error = "success"  # what the PDB says about the last call (tests set a failure's reason)

    def get_pdb(self) -> SimpleNamespace:
        return SimpleNamespace(get_last_error=lambda: self.last_error)

    def progress_init(self, text: str) -> bool:
        self.progress.append(("init", text))
        return True

    def progress_set_text(self, text: str) -> bool:
        self.progress.append(("text", text))
        return True

    def progress_update(self, fraction: float) -> bool:
        assert 0.0 <= fraction <= 1.0
        self.progress.append(("update", fraction))
        return True

    def progress_pulse(self) -> bool:
        self.progress.append(("pulse", None))
        return True

    def progress_end(self) -> bool:
        self.progress.append(("end", None))
        return True
