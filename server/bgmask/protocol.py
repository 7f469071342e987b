"""Wire protocol v1 (docs/protocol.md): decoding and validating request headers, building replies.

Everything here is pure and cheap, so the socket thread can reject a bad request before any work is queued
and before anything is allocated according to an unchecked header."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import msgpack

from bgmask import PROTOCOL_VERSION
from bgmask import errors as E
from bgmask.errors import BgmaskError

OPS = ("hello", "status", "models", "pull", "remove", "cancel", "shutdown")
SAMPLE_SIZES = {"u8": 1, "u16": 2, "f16": 2, "f32": 4}
OUTPUT_SAMPLE_TYPES = ("u8", "u16", "f32")
CHANNEL_NAMES = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}
MAX_HEADER_BYTES = 64 * 1024


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_header(frame: bytes | memoryview) -> dict:
    """Decode frame 0; anything that is not a msgpack map with string keys is a bad_request."""
    if len(frame) > MAX_HEADER_BYTES:
        raise BgmaskError(E.BAD_REQUEST, f"The request header is larger than {MAX_HEADER_BYTES} bytes.")
    try:
        obj = msgpack.unpackb(
            frame, raw=False, strict_map_key=True, max_str_len=MAX_HEADER_BYTES, max_bin_len=MAX_HEADER_BYTES, max_array_len=4096, max_map_len=4096,
            max_ext_len=0,
        )
    except (ValueError, TypeError):  # msgpack's errors (ExtraData, FormatError, StackError...) are ValueErrors
        raise BgmaskError(E.BAD_REQUEST, "The request header is not valid msgpack.") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise BgmaskError(E.BAD_REQUEST, "The request header must be a msgpack map with string keys.")
    return obj


def request_id(header: Mapping[str, Any]) -> Any:
    """The id to echo: only ints and short strings are echoed, anything else becomes None."""
    rid = header.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        return None
    if isinstance(rid, str) and len(rid) > 256:
        return None
    if isinstance(rid, int) and not -(2**63) <= rid < 2**64:
        return None
    return rid


def check_envelope(header: Mapping[str, Any], token: str) -> str:
    """Version, then token (constant time), then op: returns the op."""
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # True and 1.0 equal 1 in Python, not on the wire
        raise BgmaskError(
            E.UNSUPPORTED_VERSION,
            f"This bgmask daemon speaks protocol {PROTOCOL_VERSION}, but the request uses "
            f"{header.get('v')!r}; update the plugin or the daemon so both match.",
        )
    sent = header.get("token")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), token.encode()):
        raise BgmaskError(E.UNAUTHORIZED, "The request did not carry this daemon's token; it was refused.")
    op = header.get("op")
    if op not in OPS:
        raise BgmaskError(E.UNKNOWN_OP, f"Unknown operation {op!r}; known operations: {', '.join(OPS)}.")
    return op


@dataclass(frozen=True)
class ImageSpec:
    """The pixel layout a client declared for a remove request."""

    width: int
    height: int
    channels: int
    sample_type: str
    stride: int
    linear: bool

    @property
    def sample_size(self) -> int:
        return SAMPLE_SIZES[self.sample_type]

    @property
    def row_bytes(self) -> int:
        return self.width * self.channels * self.sample_size

    @property
    def min_bytes(self) -> int:
        return (self.height - 1) * self.stride + self.row_bytes

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _int(d: Mapping[str, Any], key: str, code: str = E.BAD_IMAGE) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BgmaskError(code, f"image.{key} must be an integer, got {value!r}.")
    return value


def parse_image(d: Any, max_pixels: int, max_bytes: int) -> ImageSpec:
    """Validate the image description without trusting any size in it."""
    if not isinstance(d, dict):
        raise BgmaskError(E.BAD_IMAGE, "The remove request needs an 'image' map describing the pixels.")
    width, height, channels = _int(d, "width"), _int(d, "height"), _int(d, "channels")
    if width <= 0 or height <= 0:
        raise BgmaskError(E.BAD_IMAGE, f"The image size {width}x{height} is not valid; both sides must be positive.")
    if channels not in CHANNEL_NAMES:
        raise BgmaskError(E.BAD_IMAGE, f"image.channels must be 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA), got {channels}.")
    sample_type = d.get("sample_type")
    if sample_type not in SAMPLE_SIZES:
        raise BgmaskError(E.BAD_IMAGE, f"image.sample_type must be one of u8, u16, f16, f32, got {sample_type!r}.")
    linear = d.get("linear", False)
    if not isinstance(linear, bool):
        raise BgmaskError(E.BAD_IMAGE, "image.linear must be true or false.")
    if width * height > max_pixels:
        raise BgmaskError(E.TOO_LARGE, f"The image has {width * height:,} pixels; this daemon accepts at most {max_pixels:,}.")
    row_bytes = width * channels * SAMPLE_SIZES[sample_type]
    stride = d.get("stride")
    if stride is None:
        stride = row_bytes
    elif isinstance(stride, bool) or not isinstance(stride, int) or stride < row_bytes:
        raise BgmaskError(E.BAD_IMAGE, f"image.stride must be an integer of at least {row_bytes} bytes (width x channels x sample size), got {stride!r}.")
    spec = ImageSpec(width, height, channels, sample_type, stride, linear)
    if spec.min_bytes > max_bytes:
        raise BgmaskError(E.TOO_LARGE, f"The image needs {spec.min_bytes:,} bytes; this daemon accepts at most {max_bytes:,} per message.")
    if stride > max_bytes:  # even for one row, where it is never stepped over (2^63 once overflowed numpy)
        raise BgmaskError(E.TOO_LARGE, f"image.stride is {stride:,} bytes; this daemon accepts at most {max_bytes:,} per message.")
    return spec


def check_pixel_frames(spec: ImageSpec, frames: Sequence[Any]) -> Any:
    """Exactly one data frame, of a length that matches the declared layout."""
    if len(frames) != 1:
        raise BgmaskError(E.BAD_IMAGE, f"A remove request carries exactly one pixel frame after the header, got {len(frames)}.")
    n = len(frames[0])
    allowed = {spec.min_bytes, spec.height * spec.stride}
    if n not in allowed:
        raise BgmaskError(
            E.BAD_IMAGE,
            f"The pixel frame has {n:,} bytes, but a {spec.width}x{spec.height} {CHANNEL_NAMES[spec.channels]} "
            f"{spec.sample_type} image with a {spec.stride}-byte stride needs {spec.height * spec.stride:,}.",
        )
    return frames[0]


@dataclass(frozen=True)
class RemoveOptions:
    """User-facing mask options; see the options table in docs/protocol.md."""

    refine: bool = True
    hardness: float = 0.0
    shift_edge: float = 0.0
    feather: float = 0.0
    fill_holes: float = 0.0
    remove_specks: float = 0.0
    region: Optional[tuple[int, int, int, int]] = None
    padding: float = 0.15
    decontaminate: bool = False
    quality: str = "balanced"

    def matte_ops(self) -> dict[str, float]:
        """The options applied to the full-resolution alpha after refinement."""
        return {"hardness": self.hardness, "shift_edge": self.shift_edge, "feather": self.feather,
                "fill_holes": self.fill_holes, "remove_specks": self.remove_specks}


# name -> (low, high) for the numeric options
NUMERIC_OPTIONS = {
    "hardness": (0.0, 1.0),
    "shift_edge": (-100.0, 100.0),
    "feather": (0.0, 500.0),
    "fill_holes": (0.0, 1e12),
    "remove_specks": (0.0, 1e12),
    "padding": (0.0, 4.0),
}


QUALITIES = ("fast", "balanced", "best")


def _quality(d: Mapping[str, Any], default: str) -> str:
    value = d.get("quality", default)
    if not isinstance(value, str) or value not in QUALITIES:
        raise BgmaskError(E.BAD_REQUEST, f"options.quality must be \"fast\", \"balanced\" or \"best\", got {value!r}.")
    return value


def _number(d: Mapping[str, Any], key: str, default: float) -> float:
    value = d.get(key, default)
    low, high = NUMERIC_OPTIONS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BgmaskError(E.BAD_REQUEST, f"options.{key} must be a number from {low:g} to {high:g}, got {value!r}.")
    return float(value)


def _flag(d: Mapping[str, Any], key: str, default: bool) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise BgmaskError(E.BAD_REQUEST, f"options.{key} must be true or false.")
    return value


def parse_region(value: Any, spec: ImageSpec) -> Optional[tuple[int, int, int, int]]:
    """[x, y, w, h] inside the image (clipped to it); None when absent."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
        raise BgmaskError(E.BAD_REQUEST, "options.region must be [x, y, width, height] in whole pixels.")
    x, y, w, h = value
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, spec.width), min(y + h, spec.height)
    if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
        raise BgmaskError(E.BAD_REQUEST, f"options.region {list(value)} does not overlap the {spec.width}x{spec.height} image.")
    return (x0, y0, x1 - x0, y1 - y0)


def parse_options(d: Any, spec: ImageSpec) -> RemoveOptions:
    if d is None:
        return RemoveOptions()
    if not isinstance(d, dict):
        raise BgmaskError(E.BAD_REQUEST, "options must be a map.")
    known = {"refine", "decontaminate", "region", "quality", *NUMERIC_OPTIONS}
    unknown = sorted(str(k) for k in set(d) - known)
    if unknown:
        raise BgmaskError(E.BAD_REQUEST, f"Unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    defaults = RemoveOptions()
    return RemoveOptions(
        refine=_flag(d, "refine", defaults.refine),
        decontaminate=_flag(d, "decontaminate", defaults.decontaminate),
        region=parse_region(d.get("region"), spec),
        quality=_quality(d, defaults.quality),
        **{key: _number(d, key, getattr(defaults, key)) for key in NUMERIC_OPTIONS},
    )


def parse_output(d: Any) -> str:
    if d is None:
        return "u8"
    if not isinstance(d, dict):
        raise BgmaskError(E.BAD_REQUEST, "output must be a map.")
    st = d.get("sample_type", "u8")
    if st not in OUTPUT_SAMPLE_TYPES:
        raise BgmaskError(E.BAD_REQUEST, f"output.sample_type must be u8, u16 or f32, got {st!r}.")
    return st


def parse_model_name(value: Any) -> Optional[str]:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 128:
        raise BgmaskError(E.BAD_REQUEST, "model must be a model name (a string) or nil for the default model.")
    return value


def reply(rid: Any, **fields: Any) -> dict:
    return {"v": PROTOCOL_VERSION, "id": rid, "type": "reply", **fields}


def error(rid: Any, code: str, message: str, **fields: Any) -> dict:
    return {"v": PROTOCOL_VERSION, "id": rid, "type": "error", "error": {"code": code, "message": message}, **fields}


def progress(rid: Any, stage: str, fraction: Optional[float], **fields: Any) -> dict:
    return {"v": PROTOCOL_VERSION, "id": rid, "type": "progress", "stage": stage, "fraction": fraction, **fields}
