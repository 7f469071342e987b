"""The daemon under generated hostile traffic, with docs/protocol.md as the oracle (issue 9).

Every message must get exactly one final answer, with the code the protocol predicts, except a frame over
max_message_bytes, which costs its sender the connection. Lying headers must be refused before anything is
allocated for them (the daemon's peak RSS does not move) and the daemon's RSS must stay flat. The oracle
below is written from the protocol document, not from the daemon's code; where the document leaves a case
open (an int for a float option, header size limits) it accepts each reasonable answer but never `internal`.

bench/fuzz_long.py runs the same generator for >= 10,000 messages and prints the figures."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings
from hypothesis import strategies as st

from conftest import RunningDaemon, authenticate, start_daemon, vm_kib

CAP = 16 * 2**20  # the fuzz daemon's --max-message-bytes: lying sizes below it must be caught by the frame check
MAX_PIXELS = 250_000_000  # the daemon's default --max-pixels
HEADER_LIMIT = 64 * 1024  # above this a header may be refused as such (the document does not say; see the report)
OPS = ("hello", "status", "models", "pull", "remove", "cancel", "shutdown")
CATALOG = ("u2netp", "u2net", "u2net_human_seg", "silueta", "isnet-general-use", "isnet-anime")
SAMPLE_SIZES = {"u8": 1, "u16": 2, "f16": 2, "f32": 4}
MASK_SIZES = {"u8": 1, "u16": 2, "f32": 4}
CODES = {"bad_request", "unsupported_version", "unauthorized", "unknown_op", "unknown_model", "bad_image",
         "too_large", "busy", "cancelled", "model_unavailable", "device_unavailable", "inference_failed",
         "shutting_down", "internal"}
STAGES = {"queued", "downloading", "loading", "inferring", "refining"}
# docs/protocol.md's options table: name -> (low, high) for the numbers, and the flags and quality names
NUMBER_OPTIONS = {"hardness": (0, 1), "shift_edge": (-100, 100), "feather": (0, 500), "fill_holes": (0, 1e12),
                  "remove_specks": (0, 1e12), "padding": (0, 4)}
FLAG_OPTIONS = {"refine", "decontaminate"}
QUALITY_NAMES = {"fast", "balanced", "best"}
MISSING = object()  # a key left out of a generated map



# ----------------------------------------------------------------------------------------------- oracle
@dataclass(frozen=True)
class Expect:
    """What the protocol allows as the answer to one message."""

    outcomes: frozenset  # error codes, "reply", or "drop" (connection closed, no answer)
    echo: tuple = (None,)  # ids the final message may carry
    mask: Optional[tuple[int, int, int]] = None  # (width, height, bytes per sample) of a remove reply
    colours_ok: bool = False  # a remove reply may carry a second data frame (decontaminated colours)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _echo(rid: Any) -> tuple[tuple, bool]:
    """Ids a reply may echo, and whether the id itself is well-formed (int or str)."""
    if _is_int(rid):
        return (rid,), True
    if isinstance(rid, str):
        return ((rid,) if len(rid) <= 256 else (rid, None)), True  # the document sets no length limit
    return (None,), False


def _unusual(obj: Any, depth: int = 0) -> bool:
    """Things the document does not rule on: extension types, very large or deeply nested containers."""
    if depth > 100 or isinstance(obj, (msgpack.ExtType, msgpack.Timestamp)):
        return True
    if isinstance(obj, (list, dict)):
        if len(obj) > 4096 or (isinstance(obj, dict) and not all(isinstance(k, str) for k in obj)):
            return True
        items = list(obj.keys()) + list(obj.values()) if isinstance(obj, dict) else obj
        return any(_unusual(x, depth + 1) for x in items)
    return False


def _model_codes(value: Any) -> tuple[set, set]:
    """(definite codes, codes the document leaves open) for a `model` field."""
    if value is None:
        return set(), set()
    if not isinstance(value, str):
        return {"bad_request"}, set()
    if value == "":
        return set(), {"unknown_model"}  # the daemon reads "" as nil; the document names only nil
    if value in CATALOG:
        return set(), set()
    return {"unknown_model"}, ({"bad_request"} if len(value) > 128 else set())


def _image_codes(d: Any, data: list[bytes]) -> tuple[set, Optional[tuple[int, int]]]:
    """Definite codes for the image description and pixel frames, and (width, height) when all is well."""
    if not isinstance(d, dict):
        return {"bad_image"}, None
    codes: set = set()
    w, h, c = d.get("width"), d.get("height"), d.get("channels")
    for v in (w, h, c):
        if not _is_int(v):
            codes.add("bad_image")
    if _is_int(w) and _is_int(h) and (w <= 0 or h <= 0):
        codes.add("bad_image")
    if _is_int(c) and c not in (1, 2, 3, 4):
        codes.add("bad_image")
    sample_type = d.get("sample_type")
    if not (isinstance(sample_type, str) and sample_type in SAMPLE_SIZES):
        codes.add("bad_image")
    if not isinstance(d.get("linear", False), bool):
        codes.add("bad_image")
    if codes:
        return codes, None
    if w * h > MAX_PIXELS:
        codes.add("too_large")
    row = w * c * SAMPLE_SIZES[sample_type]
    stride = d.get("stride")
    if stride is None:
        stride = row
    elif not _is_int(stride) or stride < row:
        return codes | {"bad_image"}, None
    min_bytes = (h - 1) * stride + row
    if min_bytes > CAP or stride > CAP:  # a one-row image's stride too: 2^63 once overflowed numpy (internal)
        codes.add("too_large")
    if codes:
        return codes, None
    if len(data) != 1 or len(data[0]) not in (min_bytes, h * stride):
        return {"bad_image"}, None
    return set(), (w, h)


def _option_codes(o: Any, wh: Optional[tuple[int, int]] = None) -> tuple[set, set, bool]:
    """(definite, open, decontaminate may be on) for the `options` map: a value of the wrong type or out of range
    is bad_request, an unknown key too. `wh` is the image's size, without which a region's overlap is open."""
    if o is None:
        return set(), set(), False
    if not isinstance(o, dict):
        return {"bad_request"}, set(), False
    definite, open_ = set(), set()
    for key, value in o.items():
        verdict = _option_verdict(key, value, wh)
        if verdict == "bad":
            definite.add("bad_request")
        elif verdict == "open":
            open_.add("bad_request")
    return definite, open_, o.get("decontaminate") is True


def _option_verdict(key: Any, value: Any, wh: Optional[tuple[int, int]]) -> str:
    """"ok", "bad" or "open" (the document does not say) for one option."""
    if key in FLAG_OPTIONS:
        return "ok" if isinstance(value, bool) else "bad"
    if key == "quality":
        return "ok" if isinstance(value, str) and value in QUALITY_NAMES else "bad"
    if key in NUMBER_OPTIONS:
        low, high = NUMBER_OPTIONS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            return "bad"
        return "ok" if isinstance(value, float) else "open"  # the table says float; an int may be taken as one
    if key == "region":
        if value is None:
            return "ok"
        if not isinstance(value, list) or len(value) != 4 or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            return "bad"
        if wh is None:
            return "open"
        x, y, w, h = value
        overlaps = w > 0 and h > 0 and max(x, 0) < min(x + w, wh[0]) and max(y, 0) < min(y + h, wh[1])
        return "ok" if overlaps else "bad"
    return "bad"


def _output_type(o: Any) -> Optional[str]:
    if o is None:
        return "u8"
    if not isinstance(o, dict):
        return None
    st_ = o.get("sample_type", "u8")
    return st_ if isinstance(st_, str) and st_ in MASK_SIZES else None


def expect(frames: list[bytes], token: str) -> Expect:
    """The answers docs/protocol.md allows for this message."""
    if any(len(f) > CAP for f in frames):
        return Expect(frozenset({"drop"}))
    f0, data = frames[0], frames[1:]
    try:
        header = msgpack.unpackb(f0, raw=False, strict_map_key=False)
    except Exception:  # not msgpack at all (msgpack raises several exception types)
        return Expect(frozenset({"bad_request"}))
    if not isinstance(header, dict) or not all(isinstance(k, str) for k in header):
        return Expect(frozenset({"bad_request"}))
    echo, id_ok = _echo(header.get("id", MISSING))
    definite, open_ = _envelope_and_op(header, data, token)
    mask, colours = _remove_result(header, data) if not definite and header.get("op") == "remove" else (None, False)
    if len(f0) > HEADER_LIMIT or _unusual(header):
        open_ |= {"bad_request"}
        echo = echo + (None,)
    if not id_ok:
        open_ |= {"bad_request"}  # a wrong-typed id is "a field with the wrong type"; serving it anonymously is also fine
    outcomes = (definite or {"reply"}) | open_
    return Expect(frozenset(outcomes), tuple(dict.fromkeys(echo)), mask, colours)


def _envelope_and_op(h: dict, data: list[bytes], token: str) -> tuple[set, set]:
    """(definite codes, codes the document leaves open): the envelope checks in the documented order, then the op's."""
    v = h.get("v")
    if not (_is_int(v) and v == 2):
        return {"unsupported_version"}, set()
    t = h.get("token")
    if not (isinstance(t, str) and t == token):
        return {"unauthorized"}, set()
    op = h.get("op")
    if not (isinstance(op, str) and op in OPS):
        return {"unknown_op"}, set()
    if op != "remove" and data:
        return {"bad_request"}, set()
    if op == "pull":
        return _model_codes(h.get("model"))
    if op != "remove":
        return set(), set()
    definite, open_ = _model_codes(h.get("model"))
    image_codes, wh = _image_codes(h.get("image"), data)
    opt_definite, opt_open, _ = _option_codes(h.get("options"), wh)
    definite |= image_codes | opt_definite
    open_ |= opt_open
    if _output_type(h.get("output")) is None:
        definite.add("bad_request")
    return definite, open_


def _remove_result(h: dict, data: list[bytes]) -> tuple[Optional[tuple[int, int, int]], bool]:
    _, wh = _image_codes(h.get("image"), data)
    out = _output_type(h.get("output"))
    if wh is None or out is None:
        return None, False
    return (wh[0], wh[1], MASK_SIZES[out]), _option_codes(h.get("options"), wh)[2]


# ----------------------------------------------------------------------------------------------- messages
@dataclass
class Probe:
    """One message to send: a header to pack (with an id chosen at send time) or raw frame-0 bytes, then data."""

    kind: str
    header: Optional[dict] = None
    raw0: Optional[bytes] = None
    data: list = field(default_factory=list)
    id_kind: str = "int"
    mangle: Optional[tuple[str, Any]] = None  # ("truncate", fraction) or ("append", bytes) applied to frame 0
    want: Optional[frozenset] = None  # for the named cases: the answers, written by hand from the document


class Ids:
    """Fresh request ids, so every answer can be attributed to exactly one message."""

    def __init__(self) -> None:
        self.n = 0

    def make(self, kind: str) -> Any:
        self.n += 1
        n = self.n
        return {"int": n, "big": 2**63 + n, "neg": -n, "str": f"fz-{n}-\u00e9\u2603", "long": "L" * 300 + str(n),
                "float": n + 0.5, "bool": True, "nil": None, "list": [n], "bin": n.to_bytes(8, "little"),
                "missing": MISSING}[kind]


def _strip(value: Any) -> Any:
    """The value with every MISSING map entry left out."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not MISSING}
    return value


def render(probe: Probe, ids: Ids) -> list[bytes]:
    if probe.header is None:
        frame0 = probe.raw0 or b""
    else:
        header = _strip(probe.header)
        rid = ids.make(probe.id_kind)
        if rid is not MISSING:
            header["id"] = rid
        frame0 = msgpack.packb(header, use_bin_type=True)
    if probe.mangle is not None:
        how, arg = probe.mangle
        frame0 = frame0[: int(len(frame0) * arg)] if how == "truncate" else frame0 + arg
    return [frame0, *probe.data]


def pixels(n: int, salt: int) -> bytes:
    return random.Random(salt).randbytes(n)


def corpus(token: str) -> list[Probe]:
    """The cases the issue names, each with its answer written by hand from the document (the generator finds
    the rest, and the oracle is checked against these)."""
    img = {"width": 4, "height": 3, "channels": 3, "sample_type": "u8"}
    ok = {"v": 2, "token": token}
    rm = {**ok, "op": "remove", "model": "u2netp"}

    def case(kind: str, want: str, header: Optional[dict] = None, **kw: Any) -> Probe:
        return Probe(kind, header, want=frozenset(want.split("|")), **kw)

    probes = [
        case("random", "bad_request", raw0=b""), case("random", "bad_request", raw0=b"\xc1"),
        case("random", "bad_request", raw0=pixels(1000, 1)),
        case("random", "bad_request", raw0=b"\xff" * 64, data=[b"\x00"] * 3),
        case("truncated", "bad_request", {**ok, "op": "hello"}, mangle=("truncate", 0.5)),
        case("truncated", "bad_request", {**ok, "op": "hello"}, mangle=("truncate", 0.0)),
        case("truncated", "bad_request", {**rm, "image": img}, data=[pixels(36, 2)], mangle=("truncate", 0.9)),
        case("extra", "bad_request", {**ok, "op": "hello"}, mangle=("append", b"\x00")),
        case("extra", "bad_request", {**ok, "op": "hello"}, data=[b"x"]),
        case("extra", "bad_request", {**ok, "op": "status"}, data=[b"", b"", b""]),
        case("extra", "bad_image", {**rm, "image": img}, data=[pixels(36, 3), b"x"]),
        case("missing", "bad_image", {**rm, "image": img}),
        case("shape", "bad_request", raw0=msgpack.packb([1, 2, 3])),
        case("shape", "bad_request", raw0=msgpack.packb("hello")),
        case("shape", "bad_request", raw0=msgpack.packb(None)),
        case("shape", "bad_request", raw0=msgpack.packb({1: 2})),
        case("shape", "bad_request", raw0=msgpack.packb({b"v": 2, b"op": b"hello"}, use_bin_type=True)),
        case("shape", "bad_request", raw0=b"\x81\xa1v" + b"\x91" * 3000 + b"\xc0"),  # nested 3000 deep
        # limits and types the document does not rule on: served or refused, never an internal error
        case("shape", "reply|bad_request", {**ok, "op": "hello", "pad": [None] * 5000}),
        case("shape", "reply|bad_request", {**ok, "op": "hello", "pad": "p" * (HEADER_LIMIT + 10)}),
        case("shape", "reply|bad_request", {**ok, "op": "hello", "ext": msgpack.ExtType(5, b"abc")}),
        case("shape", "reply|bad_request", {**ok, "op": "hello", "nested": {1: "int key"}}),
        case("types", "bad_image", {**rm, "image": "/etc/passwd"}, data=[b"x"]),
        case("types", "bad_image", {**rm, "image": [4, 3, 3, "u8"]}, data=[pixels(36, 4)]),
        case("types", "bad_image", {**rm, "image": {**img, "width": "4"}}, data=[pixels(36, 4)]),
        case("types", "bad_image", {**rm, "image": {**img, "height": 3.0}}, data=[pixels(36, 4)]),
        case("types", "bad_image", {**rm, "image": {**img, "linear": "yes"}}, data=[pixels(36, 4)]),
        case("types", "bad_request", {**rm, "model": ["u2netp"], "image": img}, data=[pixels(36, 4)]),
        case("types", "bad_request", {**rm, "image": img, "options": "refine"}, data=[pixels(36, 4)]),
        case("types", "bad_request", {**rm, "image": img, "options": {"refine": "yes"}}, data=[pixels(36, 4)]),
        case("types", "bad_request", {**rm, "image": img, "output": {"sample_type": "f16"}}, data=[pixels(36, 4)]),
        case("types", "reply", {**ok, "op": "cancel", "target": {"id": 1}}),
        # every option of the document's table: in range it is served, out of range or of the wrong type it is not
        case("options", "reply", {**rm, "image": img, "options": {"region": [1, 1, 2, 1]}}, data=[pixels(36, 9)]),
        case("options", "reply", {**rm, "image": img, "options": {"region": [-5, -5, 2**40, 2**40]}}, data=[pixels(36, 9)]),
        case("options", "bad_request", {**rm, "image": img, "options": {"region": [9, 9, 2, 2]}}, data=[pixels(36, 9)]),
        case("options", "bad_request", {**rm, "image": img, "options": {"region": [1, 1, 2]}}, data=[pixels(36, 9)]),
        case("options", "reply", {**rm, "image": img, "options": {"decontaminate": True}}, data=[pixels(36, 9)]),
        case("options", "reply", {**rm, "image": img, "options": {"hardness": 1.0, "feather": 256.0, "shift_edge": -100.0,
                                                              "fill_holes": 1.0, "remove_specks": 1.0}}, data=[pixels(36, 9)]),
        case("options", "bad_request", {**rm, "image": img, "options": {"shift_edge": -256.0}}, data=[pixels(36, 9)]),
        case("options", "bad_request", {**rm, "image": img, "options": {"hardness": float("nan")}}, data=[pixels(36, 9)]),
        case("options", "bad_request", {**rm, "image": img, "options": {"padding": True}}, data=[pixels(36, 9)]),
        case("options", "reply", {**rm, "image": img, "options": {"quality": "best"}}, data=[pixels(36, 9)]),
        case("options", "bad_request", {**rm, "image": img, "options": {"quality": "ultra"}}, data=[pixels(36, 9)]),
        case("options", "bad_request", {**rm, "image": img, "options": {"sharpen": 1.0}}, data=[pixels(36, 9)]),
    ]
    lies = [  # (image, frame length, answer): sizes the header claims and the frame does not carry
        ({"width": 100000, "height": 100000, "channels": 4, "sample_type": "f32"}, 64, "too_large"),
        ({"width": 4000, "height": 4000, "channels": 3, "sample_type": "u8"}, 48, "too_large"),  # 48 MB > CAP
        ({"width": 2000, "height": 2000, "channels": 3, "sample_type": "u8"}, 12, "bad_image"),  # 12 MB <= CAP
        ({"width": 2**31, "height": 1, "channels": 1, "sample_type": "u8"}, 1, "too_large"),  # > max_pixels
        ({"width": 2**64 - 1, "height": 2**64 - 1, "channels": 4, "sample_type": "f32"}, 1, "too_large"),
        ({"width": 0, "height": 3, "channels": 3, "sample_type": "u8"}, 0, "bad_image"),
        ({"width": 4, "height": -3, "channels": 3, "sample_type": "u8"}, 36, "bad_image"),
        ({"width": -(2**63), "height": -1, "channels": 3, "sample_type": "u8"}, 36, "bad_image"),
        ({"width": 4, "height": 3, "channels": 0, "sample_type": "u8"}, 36, "bad_image"),
        ({"width": 4, "height": 3, "channels": 5, "sample_type": "u8"}, 60, "bad_image"),
        ({"width": 4, "height": 3, "channels": 3, "sample_type": "u64"}, 36, "bad_image"),
        ({"width": 4, "height": 3, "channels": 3, "sample_type": "u8", "stride": 2**40}, 36, "too_large"),
        ({"width": 4, "height": 3, "channels": 3, "sample_type": "u8", "stride": 2**64 - 1}, 36, "too_large"),
        ({"width": 4, "height": 3, "channels": 3, "sample_type": "u8", "stride": -12}, 36, "bad_image"),
        ({"width": 4, "height": 3, "channels": 3, "sample_type": "u8", "stride": 11}, 36, "bad_image"),
        ({"width": 4, "height": 1, "channels": 3, "sample_type": "u8", "stride": 2**62}, 12, "too_large"),  # one row
        ({"width": 4, "height": 1, "channels": 3, "sample_type": "u8", "stride": 2**63}, 12, "too_large"),
        ({"width": 3, "height": 2, "channels": 4, "sample_type": "f32", "stride": 64}, 112, "reply"),  # short last row
        ({"width": 4, "height": 3, "channels": 3, "sample_type": "u8"}, 35, "bad_image"),
        ({"width": 4, "height": 3, "channels": 3, "sample_type": "u8"}, 37, "bad_image"),
    ]
    for image, n, want in lies:
        probes.append(case("lying", want, {**rm, "image": image}, data=[pixels(n, n)]))
    for op in ("explode", "", "HELLO", "remove ", None, 7, ["hello"]):
        probes.append(case("op", "unknown_op", {**ok, "op": op}))
    for name in ("nope", "../../etc/passwd", "/etc/passwd", "U2NETP", "u2netp\x00", "x" * 200):
        want = "unknown_model|bad_request" if len(name) > 128 else "unknown_model"
        probes.append(case("model", want, {**rm, "model": name, "image": img}, data=[pixels(36, 5)]))
        probes.append(case("model", want, {**ok, "op": "pull", "model": name}))
    for wrong in (MISSING, "", token[:-1], token + "x", token.upper(), None, 12345, token.encode(), [token]):
        for op in ("remove", "shutdown", "pull"):
            probes.append(case("token", "unauthorized", {"v": 2, "token": wrong, "op": op, "model": "u2netp", "image": img},
                               data=[pixels(36, 6)] if op == "remove" else []))
    for v in (MISSING, 0, 1, -1, 2**64 - 1, "2", None, [2], True, 2.0):  # `v` is the int 2, not something equal to it
        probes.append(case("version", "unsupported_version", {"v": v, "token": token, "op": "hello"}))
    for kind in ("big", "neg", "str", "long"):
        probes.append(case("id", "reply", {**ok, "op": "hello"}, id_kind=kind))
    for kind in ("float", "bool", "nil", "list", "bin", "missing"):  # not an int or str: refused, or served anonymously
        probes.append(case("id", "reply|bad_request", {**ok, "op": "hello"}, id_kind=kind))
    probes += [  # over the cap: the connection is dropped
        case("oversize", "drop", {**ok, "op": "hello"}, data=[bytes(CAP + 1)]),
        case("oversize", "drop", {**rm, "image": {"width": 2048, "height": 2048, "channels": 4, "sample_type": "u8"}},
             data=[bytes(2048 * 2048 * 4 + 1)]),
        case("oversize", "drop", raw0=bytes(CAP + 1)),
    ]
    for out in ("u8", "u16", "f32"):  # real work, kept tiny
        probes.append(case("valid", "reply", {**rm, "image": img, "output": {"sample_type": out}}, data=[pixels(36, 7)]))
    probes.append(case("valid", "reply", {**rm, "model": None, "image": {**img, "channels": 1, "sample_type": "f16"}},
                       data=[pixels(24, 8)]))
    probes.append(case("valid", "reply", {**ok, "op": "pull", "model": "u2netp"}))
    probes.append(case("valid", "reply", {**ok, "op": "cancel", "target": 10**9}))
    return probes


def weighted(*options: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, chosen with the given weights (st.one_of merges repeated branches, so repeating
    a branch does not weigh it)."""
    table = [s for weight, s in options for _ in range(weight)]
    return st.sampled_from(range(len(table))).flatmap(lambda i: table[i])


def _either(valid: st.SearchStrategy, hostile: st.SearchStrategy, weight: int = 3) -> st.SearchStrategy:
    """Mostly valid values, sometimes hostile ones (so that one fault at a time is common)."""
    return weighted((weight, valid), (1, hostile))


HOSTILE_INTS = st.sampled_from([0, -1, 2**31, 2**32 + 1, 2**63 - 1, 2**64 - 1, -(2**63), 100000])
HOSTILE_SCALARS = st.sampled_from(["4", 4.0, None, True, [4], {"n": 4}, b"4", float("nan")])
MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), inner, max_size=5),
    max_leaves=12,
)


@st.composite
def remove_probes(draw: st.DrawFn, token: str) -> Probe:
    w = draw(_either(st.integers(1, 12), HOSTILE_INTS | HOSTILE_SCALARS))
    h = draw(_either(st.integers(1, 12), HOSTILE_INTS | HOSTILE_SCALARS))
    c = draw(_either(st.integers(1, 4), st.sampled_from([0, 5, -1, 255, "3", 3.0, True, None])))
    sample_type = draw(_either(st.sampled_from(sorted(SAMPLE_SIZES)), st.sampled_from(["u32", "U8", "f64", "", None, 1, b"u8"])))
    image: dict = {"width": w, "height": h, "channels": c, "sample_type": sample_type}
    row = w * c * SAMPLE_SIZES[sample_type] if (_is_int(w) and _is_int(c) and sample_type in SAMPLE_SIZES) else None
    stride = draw(weighted((4, st.just(MISSING)), (1, st.just(None)), (2, st.integers(0, 9)), (1, HOSTILE_INTS | st.just("12"))))
    if _is_int(stride) and 0 <= stride <= 9 and row is not None and 0 <= row < 2**32:
        stride = row + stride  # a valid padded stride
    image["stride"] = stride
    image["linear"] = draw(weighted((4, st.just(MISSING)), (2, st.booleans()), (1, st.sampled_from([None, 1, "yes"]))))
    if draw(st.integers(0, 9)) == 0:
        image[draw(st.text(max_size=6))] = draw(MSGPACK_VALUES)
    wh_ok = _is_int(w) and _is_int(h) and 0 < w <= 12 and 0 < h <= 12
    full = stride if _is_int(stride) else row
    exact = (h - 1) * full + row if wh_ok and row is not None and _is_int(full) and 0 <= full < 4096 else None
    shape = draw(weighted((1, st.sampled_from(["exact", "full"])), (9, st.sampled_from(["short", "long", "empty", "none", "two", "random"]))))
    salt = draw(st.integers(0, 2**32))
    if shape in ("exact", "full") and exact is not None:
        data = [pixels(max(0, exact if shape == "exact" else h * full), salt)]
    elif shape in ("short", "long") and exact is not None:
        data = [pixels(max(0, exact + (-1 if shape == "short" else 1)), salt)]
    elif shape == "empty":
        data = [b""]
    elif shape == "none":
        data = []
    elif shape == "two":
        data = [pixels(draw(st.integers(0, 64)), salt), b"x"]
    else:
        data = [pixels(draw(st.integers(0, 600)), salt)]
    model = draw(weighted((5, st.just("u2netp")), (2, st.sampled_from([None, MISSING])),
                          (1, st.sampled_from(["", "nope", "../../etc/passwd", "/tmp/u2netp.onnx", "U2NETP", "x" * 129, 5, ["u2netp"], b"u2netp"]))))
    refine = st.fixed_dictionaries({"refine": st.booleans()})
    options = draw(weighted(
        (6, st.sampled_from([MISSING, None, {}])), (4, refine), (6, st.one_of(
        st.fixed_dictionaries({"refine": st.sampled_from(["yes", 1, None])}),
        st.fixed_dictionaries({"region": st.lists(st.integers(-(2**40), 2**40) | st.integers(-5, 20), min_size=0, max_size=5)}),
        st.fixed_dictionaries({"hardness": st.floats() | st.integers(-3, 3), "feather": st.floats(-1, 300)}),
        st.fixed_dictionaries({"decontaminate": st.booleans() | st.just("yes")}),
        st.fixed_dictionaries({"padding": st.floats(allow_nan=True) | HOSTILE_INTS}),
        st.fixed_dictionaries({"quality": st.sampled_from(["fast", "balanced", "best", "BEST", "", None, 2])}),
        st.fixed_dictionaries({"shift_edge": st.floats(-300, 300), "fill_holes": st.floats(-1, 1e13),
                               "remove_specks": st.floats(-1, 10), "refine": st.booleans()}),
        st.dictionaries(st.text(max_size=8), MSGPACK_VALUES, max_size=3),
        HOSTILE_SCALARS,
    ))))
    output = draw(weighted((4, st.sampled_from([MISSING, None, {}])),
                           (3, st.fixed_dictionaries({"sample_type": st.sampled_from(["u8", "u16", "f32"])})),
                           (1, st.fixed_dictionaries({"sample_type": st.sampled_from(["f16", "u32", None, 8])}) | HOSTILE_SCALARS)))
    header = {"v": 2, "token": token, "op": "remove", "model": model, "image": image, "options": options, "output": output}
    return Probe("remove", header, data=data, id_kind=draw(_ids()))


def _ids() -> st.SearchStrategy[str]:
    return _either(st.sampled_from(["int", "str"]), st.sampled_from(["big", "neg", "long", "float", "bool", "nil", "list", "bin", "missing"]))


@st.composite
def envelope_probes(draw: st.DrawFn, token: str) -> Probe:
    v = draw(_either(st.just(2), st.sampled_from([MISSING, 0, 1, -1, 2**64 - 1, "2", None, [2], b"\x02"])))
    sent = draw(_either(st.just(token), st.one_of(
        st.just(MISSING), st.text(max_size=50), st.sampled_from([token[:-1], token + "=", token[::-1], " " + token,
                                                                  token.encode(), None, 0, [token]]))))
    ops = [op for op in OPS if op != "shutdown" or sent != token]  # a valid shutdown would end the run
    op = draw(_either(st.sampled_from(ops), st.one_of(st.text(max_size=12), st.sampled_from([None, 3, ["hello"], "Hello"]))))
    header = {"v": v, "token": sent, "op": op}
    if op == "pull":
        header["model"] = draw(st.sampled_from(["u2netp", None, MISSING, "nope", "/etc/passwd", 3, "x" * 200]))
    if op == "cancel":
        header["target"] = draw(st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=10), MSGPACK_VALUES))
    if draw(st.integers(0, 3)) == 0:
        header.update(draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("id", "v", "token", "op")),
                                           MSGPACK_VALUES, max_size=3)))
    data = draw(weighted((4, st.just([])), (1, st.lists(st.binary(max_size=40), min_size=1, max_size=3))))
    mangle = draw(weighted((6, st.none()), (1, st.tuples(st.just("truncate"), st.floats(0, 0.99))),
                           (1, st.tuples(st.just("append"), st.binary(min_size=1, max_size=8)))))
    return Probe("envelope", header, data=data, id_kind=draw(_ids()), mangle=mangle)


def probes(token: str) -> st.SearchStrategy[Probe]:
    """The message generator: random bytes, wrong shapes, hostile envelopes and remove requests, oversize frames."""
    random_bytes = st.builds(lambda b, d: Probe("random", raw0=b, data=d), st.binary(max_size=200),
                             st.lists(st.binary(max_size=50), max_size=3))
    shapes = st.builds(lambda v, d: Probe("shape", raw0=msgpack.packb(v, use_bin_type=True), data=d),
                       MSGPACK_VALUES, st.lists(st.binary(max_size=20), max_size=2))
    oversize = st.builds(lambda n: Probe("oversize", {"v": 2, "token": token, "op": "hello"}, data=[bytes(CAP + n)]),
                         st.integers(1, 4096))
    return weighted((40, random_bytes), (40, shapes), (100, envelope_probes(token)), (100, remove_probes(token)),
                    (1, oversize))


# ----------------------------------------------------------------------------------------------- harness
def describe(frames: list[bytes], token: str) -> str:
    """A message in a form fit for a failure report: the header decoded (id left out, token abbreviated)."""
    try:
        header = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    except Exception:
        header = None
    if isinstance(header, dict):
        shown = repr({k: ("<token>" if v == token else v) for k, v in header.items() if k != "id"})
    else:
        shown = repr(frames[0][:80])
    return f"{shown[:400]} + {len(frames) - 1} data frame(s) of {[len(f) for f in frames[1:4]]} bytes"


def _brief(answer: Any) -> str:
    """An answer in a few words: its type, and the code and message of an error."""
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return f"{answer['error'].get('code')} ({str(answer['error'].get('message'))[:120]})"
    if isinstance(answer, dict) and answer.get("type") in ("reply", "progress"):
        return f"a {answer['type']} about id {answer.get('id')!r}"
    return repr(answer)[:200]


def _stops_the_daemon(frame0: bytes, token: str) -> bool:
    """A valid shutdown would end the run; the generator avoids them, this makes sure."""
    try:
        h = msgpack.unpackb(frame0, raw=False, strict_map_key=False)
    except Exception:
        return False
    return isinstance(h, dict) and h.get("op") == "shutdown" and h.get("token") == token and h.get("v") == 2


class Harness:
    """Sends probes one at a time over one DEALER connection and checks each answer against the oracle."""

    def __init__(self, daemon: RunningDaemon, keep_going: bool = False) -> None:
        self.daemon = daemon
        self.keep_going = keep_going  # record wrong answers and carry on (as long as the daemon lives)
        self.failures: list[str] = []
        self.ctx = zmq.Context()
        self.sock = self._dealer()
        self.ids = Ids()
        self.sent = 0
        self.finals = 0
        self.outcomes: Counter = Counter()
        self.kinds: Counter = Counter()

    def _dealer(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        authenticate(s, self.daemon.token)
        s.connect(self.daemon.endpoint)
        return s

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()

    def alive(self) -> None:
        assert self.daemon.proc.poll() is None, f"the daemon died (status {self.daemon.proc.returncode}):\n{self.daemon.log()[-3000:]}"

    def run(self, probe: Probe) -> None:
        try:
            self._run(probe)
        except AssertionError as exc:
            if not self.keep_going or self.daemon.proc.poll() is not None:
                raise
            self.failures.append(str(exc).splitlines()[0])

    def _run(self, probe: Probe) -> None:
        frames = render(probe, self.ids)
        want = expect(frames, self.daemon.token)
        if _stops_the_daemon(frames[0], self.daemon.token):
            return
        self.sent += 1
        self.kinds[probe.kind] += 1
        if "drop" in want.outcomes:
            self._dropped(frames)
        else:
            self.sock.send_multipart(frames)
            self._answer(frames, want)
        self.alive()

    def _recv(self, sock: zmq.Socket, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while not sock.poll(500):
            self.alive()
            assert time.monotonic() < deadline, "no answer within %g s" % timeout
        return sock.recv_multipart()

    def _answer(self, frames: list[bytes], want: Expect) -> None:
        while True:
            reply = self._recv(self.sock, 120.0)
            header = msgpack.unpackb(reply[0], raw=False)
            about = f"{describe(frames, self.daemon.token)} got {_brief(header)}"
            assert isinstance(header, dict) and header.get("v") == 2, about
            assert header.get("id") in want.echo, f"wrong id: {about}; expected one of {want.echo}"
            if header["type"] == "progress":
                assert header["stage"] in STAGES and reply[1:] == [], about
                assert header["fraction"] is None or 0.0 <= header["fraction"] <= 1.0, about
                continue
            self.finals += 1
            if header["type"] == "error":
                code = header["error"]["code"]
                assert code in CODES and isinstance(header["error"]["message"], str) and header["error"]["message"], about
                assert reply[1:] == [], about
                if code == "unsupported_version":
                    assert header["protocol"] == 2, about
                outcome = code
            else:
                assert header["type"] == "reply", about
                outcome = "reply"
                if want.mask is not None:
                    w, h, size = want.mask
                    assert header["mask"]["width"] == w and header["mask"]["height"] == h, about
                    assert len(reply[1]) == w * h * size and len(reply) in ((2, 3) if want.colours_ok else (2,)), about
            assert outcome in want.outcomes, f"{about}; the protocol allows {sorted(want.outcomes)}"
            self.outcomes[outcome] += 1
            return

    def _dropped(self, frames: list[bytes]) -> None:
        """A frame over the cap: the daemon closes that connection and answers nothing."""
        sock = self._dealer()
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            sock.send_multipart(frames)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            deadline = time.monotonic() + 60
            while True:
                events = dict(poller.poll(500))
                assert sock not in events, f"an oversized message was answered: {sock.recv_multipart()[0]!r}"
                if monitor in events:
                    break
                self.alive()
                assert time.monotonic() < deadline, "an oversized message neither answered nor dropped"
            self.outcomes["drop"] += 1
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    def drain(self) -> None:
        """Anything still arriving after the last answer is a second final answer to some message."""
        assert not self.sock.poll(1000), f"an extra answer: {self.sock.recv_multipart()[0][:300]!r}"
        assert self.finals == self.sent - self.outcomes["drop"]


def fuzz(harness: Harness, n: int, seed: Optional[int] = None) -> None:
    """Send n generated messages (derandomized unless a seed is given, so CI runs are repeatable)."""

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              derandomize=seed is None, suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(probes(harness.daemon.token))
    def one(probe: Probe) -> None:
        harness.run(probe)

    if seed is not None:
        one = hypothesis_seed(seed)(one)
    one()


@dataclass
class Figures:
    sent: int
    outcomes: Counter
    rss_before: int
    rss_after: int
    hwm_before: int
    hwm_after: int
    seconds: float

    def report(self) -> str:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items(), key=lambda kv: -kv[1]))
        return (f"{self.sent} messages in {self.seconds:.1f} s; answers: {codes}\n"
                f"daemon RSS {self.rss_before / 1024:.1f} -> {self.rss_after / 1024:.1f} MiB "
                f"({100 * (self.rss_after / self.rss_before - 1):+.2f} %), peak {self.hwm_before / 1024:.1f} -> "
                f"{self.hwm_after / 1024:.1f} MiB")


def measured_run(harness: Harness, n: int, seed: Optional[int] = None) -> Figures:
    """Warm up (every named case once), then n generated messages between two RSS readings."""
    keep_going, harness.keep_going = harness.keep_going, True
    for probe in corpus(harness.daemon.token):  # wrong answers here are the named-case test's to report
        harness.run(probe)
    harness.keep_going = keep_going
    pid = harness.daemon.pid
    rss0, hwm0 = vm_kib(pid, "VmRSS"), vm_kib(pid, "VmHWM")
    sent0, outcomes0 = harness.sent, Counter(harness.outcomes)
    started = time.monotonic()
    fuzz(harness, n, seed)
    harness.drain()
    return Figures(harness.sent - sent0, harness.outcomes - outcomes0, rss0, vm_kib(pid, "VmRSS"), hwm0,
                   vm_kib(pid, "VmHWM"), time.monotonic() - started)


# ----------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory, model_cache) -> Iterator[RunningDaemon]:
    root = tmp_path_factory.mktemp("fuzz")
    dirs = {"BGMASK_RUNTIME_DIR": str(root / "run"), "BGMASK_CONFIG_DIR": str(root / "config"),
            "BGMASK_CACHE_DIR": str(model_cache)}
    d = start_daemon(dirs, "--default-model", "u2netp", "--max-message-bytes", str(CAP))
    yield d
    assert d.stop() == 0


@pytest.fixture
def harness(fuzz_daemon: RunningDaemon) -> Iterator[Harness]:
    h = Harness(fuzz_daemon)
    yield h
    h.close()


@pytest.mark.parametrize("probe", corpus("t" * 43), ids=lambda p: p.kind)
def test_the_oracle_agrees_with_the_hand_written_answers(probe: Probe) -> None:
    assert expect(render(probe, Ids()), "t" * 43).outcomes == probe.want


def test_every_named_hostile_message_gets_its_documented_answer(harness: Harness) -> None:
    named = corpus(harness.daemon.token)
    harness.keep_going = True  # report every case that is answered wrongly, not just the first
    for probe in named:
        harness.run(probe)
    assert not harness.failures, "\n".join(harness.failures)
    harness.drain()
    assert harness.sent == len(named) and harness.outcomes["drop"] == 3
    assert harness.outcomes["unauthorized"] == 27 and harness.outcomes["unsupported_version"] == 10


def test_generated_messages_are_each_answered_once_and_memory_stays_flat(harness: Harness) -> None:
    figures = measured_run(harness, 2000)
    print("\n" + figures.report())
    assert figures.sent >= 2000
    assert figures.outcomes["reply"] > 0 and figures.outcomes["bad_image"] > 0 and figures.outcomes["unauthorized"] > 0
    assert "internal" not in figures.outcomes
    assert figures.rss_after < 1.05 * figures.rss_before, figures.report()
    # lying headers claim up to CAP (16 MiB) each: none of it may be allocated, so the peak stays put
    assert figures.hwm_after < 1.05 * figures.hwm_before, figures.report()
