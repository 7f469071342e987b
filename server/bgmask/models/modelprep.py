"""Rewrite a matting model once into the form ONNX Runtime's CPU provider runs fastest, and cache it.

The daemon runs the CPU provider on this copy (SessionPool; GPU providers get the shipped file, where fp16
pays). Why each rewrite pays on CPU (measured with bench/speed.py --experiments):

- fp16 -> fp32: ORT has no fp16 convolution on most CPUs, so for an fp16 model (the imgly IS-Net file) it
  wraps every Conv in Cast nodes, keeps Concat/Resize in fp16, and the fp16 islands break its NCHWc layout
  chains into Reorder nodes. With fp32 weights and types the whole network stays in NCHWc.
- one output: U2-Net and IS-Net files export every side output; ORT runs every node of the graph whatever
  outputs are asked for, so the side heads (IS-Net: five convs, five Resize to 1024x1024, five sigmoids)
  cost time unless they are removed from the file.
- Resize `pytorch_half_pixel` -> `half_pixel`: the two modes differ only for an output length of 1 (never
  the case in these U-shaped decoders, and checked by `verify`), and ORT's NCHWc layout pass only takes
  `half_pixel`, so U2-Net's 38 upsamples otherwise run in plain NCHW between Reorder nodes.

The ONNX protobuf is edited directly (the wire format is small and stable) so that no `onnx` package is
needed at runtime. Anything this module does not understand (external data, subgraphs, sparse tensors,
functions) raises Unsupported and the caller keeps the original file."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from bgmask import paths

VERSION = 1  # bump when the rewrite changes: cached files of another version are rebuilt
FLOAT, FLOAT16 = 1, 10
_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5

Field = tuple  # (number, wire type, value): value is int for varint/fixed, bytes-like or list[Field] for _LEN
Buffer = Union[bytes, memoryview]


class Unsupported(ValueError):
    """The model uses a feature this rewriter does not handle; use the original file."""


# ------------------------------------------------------------------------------------------ wire format
def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _put_varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # negative int64 fields are ten-byte two's complement varints
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _parse(buf: Buffer) -> list[Field]:
    """One message level: its fields in order, length-delimited values as zero-copy memoryviews."""
    view = memoryview(buf)
    fields: list[Field] = []
    pos, end = 0, len(view)
    while pos < end:
        key, pos = _varint(view, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(view, pos)
        elif wire == _LEN:
            n, pos = _varint(view, pos)
            value, pos = view[pos:pos + n], pos + n
        elif wire == _I64:
            value, pos = int.from_bytes(view[pos:pos + 8], "little"), pos + 8
        elif wire == _I32:
            value, pos = int.from_bytes(view[pos:pos + 4], "little"), pos + 4
        else:
            raise Unsupported(f"protobuf wire type {wire} does not occur in ONNX files")
        fields.append((number, wire, value))
    if pos != end:
        raise Unsupported("truncated protobuf message")
    return fields


def _emit(fields: list[Field], out: list[Buffer]) -> int:
    """Append the encoding of `fields` to `out` (as pieces, so big blobs are never copied twice); returns its size."""
    size = 0
    for number, wire, value in fields:
        key = _put_varint((number << 3) | wire)
        if wire == _VARINT:
            piece: list[Buffer] = [key, _put_varint(value)]
        elif wire == _I64:
            piece = [key, value.to_bytes(8, "little")]
        elif wire == _I32:
            piece = [key, value.to_bytes(4, "little")]
        elif isinstance(value, list):
            inner: list[Buffer] = []
            n = _emit(value, inner)
            piece = [key, _put_varint(n), *inner]
        else:
            piece = [key, _put_varint(len(value)), value]
        out.extend(piece)
        size += sum(len(p) for p in piece)
    return size


def _text(value: Buffer) -> str:
    return bytes(value).decode("utf-8")


def _get(fields: list[Field], number: int, default: Any = None) -> Any:
    for f in fields:
        if f[0] == number:
            return f[2]
    return default


# ------------------------------------------------------------------------------------------ ONNX messages
# Field numbers from onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, TypeProto).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_G_NODE, _G_INIT, _G_SPARSE, _G_INPUT, _G_OUTPUT, _G_VALUE_INFO = 1, 5, 15, 11, 12, 13
_N_INPUT, _N_OUTPUT, _N_OP, _N_ATTR = 1, 2, 4, 5
_A_NAME, _A_I, _A_S, _A_T, _A_G, _A_TENSORS, _A_GRAPHS, _A_SPARSE, _A_SPARSES = 1, 3, 4, 5, 6, 10, 11, 22, 23
_T_TYPE, _T_INT32, _T_NAME, _T_RAW, _T_LOCATION = 2, 5, 8, 9, 14
_VI_NAME, _VI_TYPE = 1, 2
_TYPE_TENSOR, _TYPE_SEQUENCE, _TYPE_MAP, _TYPE_SPARSE, _TYPE_OPTIONAL = 1, 4, 5, 8, 9
_DTYPE_ATTRS = {"to", "dtype"}  # Cast.to, RandomNormal.dtype, EyeLike.dtype, ...


def _tensor_fp32(fields: list[Field]) -> list[Field]:
    """An fp16 TensorProto as fp32 raw data; other tensors unchanged."""
    if _get(fields, _T_TYPE) != FLOAT16:
        return fields
    if _get(fields, _T_LOCATION, 0) != 0:
        raise Unsupported("fp16 tensors stored as external data")
    raw = _get(fields, _T_RAW)
    if raw is not None:
        half = np.frombuffer(raw, dtype="<f2")
    else:  # fp16 bit patterns in int32_data, packed or one varint each
        bits: list[int] = []
        for number, wire, value in fields:
            if number == _T_INT32:
                if wire == _LEN:
                    pos, view = 0, memoryview(value)
                    while pos < len(view):
                        v, pos = _varint(view, pos)
                        bits.append(v)
                else:
                    bits.append(value)
        half = np.asarray(bits, dtype=np.uint16).view("<f2")
    kept = [f for f in fields if f[0] not in (_T_TYPE, _T_INT32, _T_RAW)]
    return [(_T_TYPE, _VARINT, FLOAT), *kept, (_T_RAW, _LEN, half.astype("<f4").tobytes())]


def _type_fp32(fields: list[Field]) -> list[Field]:
    """A TypeProto with every fp16 element type (also inside sequences, maps, optionals) made fp32."""
    out: list[Field] = []
    for number, wire, value in fields:
        if wire == _LEN and number in (_TYPE_TENSOR, _TYPE_SPARSE):
            inner = [(n, w, FLOAT if (n == 1 and v == FLOAT16) else v) for n, w, v in _parse(value)]
            out.append((number, wire, inner))
        elif wire == _LEN and number in (_TYPE_SEQUENCE, _TYPE_OPTIONAL):
            out.append((number, wire, [(n, w, _type_fp32(_parse(v)) if n == 1 else v) for n, w, v in _parse(value)]))
        elif wire == _LEN and number == _TYPE_MAP:
            out.append((number, wire, [(n, w, _type_fp32(_parse(v)) if n == 2 else v) for n, w, v in _parse(value)]))
        else:
            out.append((number, wire, value))
    return out


def _value_info_fp32(fields: list[Field]) -> list[Field]:
    return [(n, w, _type_fp32(_parse(v)) if n == _VI_TYPE else v) for n, w, v in fields]


def _attribute(fields: list[Field], op: str, stats: dict[str, int]) -> list[Field]:
    name = _text(_get(fields, _A_NAME, b""))
    out: list[Field] = []
    for number, wire, value in fields:
        if number in (_A_G, _A_GRAPHS, _A_SPARSE, _A_SPARSES):
            raise Unsupported(f"{op} node with a subgraph or sparse tensor attribute")
        if number == _A_T:
            value = _tensor_fp32(_parse(value))
        elif number == _A_TENSORS:
            value = _tensor_fp32(_parse(value))
        elif number == _A_I and name in _DTYPE_ATTRS and value == FLOAT16:
            value = FLOAT
            stats["casts"] += 1
        elif number == _A_S and op == "Resize" and name == "coordinate_transformation_mode" and bytes(value) == b"pytorch_half_pixel":
            value = b"half_pixel"
            stats["resizes"] += 1
        out.append((number, wire, value))
    return out


class _Node:
    def __init__(self, fields: list[Field]) -> None:
        self.fields = fields
        self.op = _text(_get(fields, _N_OP, b""))
        self.inputs = [_text(v) for n, _, v in fields if n == _N_INPUT]
        self.outputs = [_text(v) for n, _, v in fields if n == _N_OUTPUT]


def _named(fields: list[Field], number: int) -> str:
    return _text(_get(fields, number, b""))


def rewrite(data: Buffer, keep_output: Optional[str] = None) -> tuple[bytes, dict[str, Any]]:
    """The model bytes rewritten for CPU (fp32, one output, NCHWc-friendly Resize) and what was changed."""
    try:
        return _rewrite(data, keep_output)
    except Unsupported:
        raise
    except (IndexError, ValueError, UnicodeDecodeError) as exc:  # truncated or not protobuf at all
        raise Unsupported(f"not a readable ONNX model ({exc})") from None


def _rewrite(data: Buffer, keep_output: Optional[str]) -> tuple[bytes, dict[str, Any]]:
    model = _parse(data)
    if any(n == _MODEL_FUNCTIONS for n, _, _ in model):
        raise Unsupported("model-local functions")
    graph_bytes = _get(model, _MODEL_GRAPH)
    if graph_bytes is None:
        raise Unsupported("no graph")
    graph = _parse(graph_bytes)
    if any(n == _G_SPARSE for n, _, _ in graph):
        raise Unsupported("sparse initializers")
    outputs = [_parse(v) for n, _, v in graph if n == _G_OUTPUT]
    if not outputs:
        raise Unsupported("no graph outputs")
    names = [_named(o, _VI_NAME) for o in outputs]
    keep = keep_output if keep_output is not None else names[0]
    if keep not in names:
        raise Unsupported(f"no output named {keep!r}")

    nodes = [_Node(_parse(v)) for n, _, v in graph if n == _G_NODE]
    producer = {out: node for node in nodes for out in node.outputs if out}
    live: set[int] = set()
    needed = {keep}
    stack = [keep]
    while stack:  # the file's node order need not be topological, so walk names, not positions
        node = producer.get(stack.pop())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        for name in node.inputs:
            if name and name not in needed:
                needed.add(name)
                stack.append(name)

    stats = {"casts": 0, "resizes": 0, "fp16_tensors": 0, "nodes_removed": len(nodes) - len(live),
             "outputs_removed": len(names) - 1, "initializers_removed": 0}
    produced = {out for node in nodes if id(node) in live for out in node.outputs}
    new_graph: list[Field] = []
    for number, wire, value in graph:
        if number == _G_NODE:
            continue  # re-added below, live ones only, in the original order
        if number == _G_INIT:
            tensor = _parse(value)
            if _named(tensor, _T_NAME) not in needed:
                stats["initializers_removed"] += 1
                continue
            if _get(tensor, _T_TYPE) == FLOAT16:
                stats["fp16_tensors"] += 1
            value = _tensor_fp32(tensor)
        elif number == _G_OUTPUT:
            info = _parse(value)
            if _named(info, _VI_NAME) != keep:
                continue
            value = _value_info_fp32(info)
        elif number == _G_INPUT:
            info = _parse(value)
            if _named(info, _VI_NAME) not in needed:
                continue  # an initializer listed as input (IR < 4) that was removed, or an unused input
            value = _value_info_fp32(info)
        elif number == _G_VALUE_INFO:
            info = _parse(value)
            if _named(info, _VI_NAME) not in produced:
                continue
            value = _value_info_fp32(info)
        new_graph.append((number, wire, value))
    for node in nodes:
        if id(node) in live:
            fields = [(n, w, _attribute(_parse(v), node.op, stats) if n == _N_ATTR else v) for n, w, v in node.fields]
            new_graph.append((_G_NODE, _LEN, fields))
    new_model = [(n, w, new_graph if n == _MODEL_GRAPH else v) for n, w, v in model]
    pieces: list[Buffer] = []
    _emit(new_model, pieces)
    return b"".join(pieces), stats


def same_outputs(original: Path, rewritten: Path, shape: tuple[int, ...], output: Optional[str] = None,
                 tolerance: float = 0.5 / 255) -> bool:
    """Whether the original's `output` (default its first) and the rewritten file's only output agree on one
    deterministic input, after the daemon's min-max normalisation: the rewrite may change rounding, nothing
    else. The daemon checks every model this way before it runs the copy (an imported model's Resize could
    produce a length-1 axis, where the mode change would matter)."""
    import onnxruntime as ort

    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    outs = []
    for path, name in ((original, output), (rewritten, None)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        y = session.run([name or session.get_outputs()[0].name], {session.get_inputs()[0].name: x})[0]
        y = np.asarray(y, dtype=np.float64)
        outs.append((y - y.min()) / max(float(y.max() - y.min()), 1e-12))
    return outs[0].shape == outs[1].shape and float(np.abs(outs[0] - outs[1]).max()) <= tolerance


def identity_model() -> bytes:
    """A one-node ONNX model, float[1] `x` -> Identity -> `y`: the cheapest run there is (see
    sessions.release_arena)."""
    def value(name: bytes) -> list[Field]:
        shape = [(1, _LEN, [(1, _VARINT, 1)])]  # one dim, dim_value 1
        return [(_VI_NAME, _LEN, name), (_VI_TYPE, _LEN, [(_TYPE_TENSOR, _LEN, [(1, _VARINT, FLOAT), (2, _LEN, shape)])])]

    node = [(_N_INPUT, _LEN, b"x"), (_N_OUTPUT, _LEN, b"y"), (_N_OP, _LEN, b"Identity")]
    graph = [(_G_NODE, _LEN, node), (2, _LEN, b"identity"), (_G_INPUT, _LEN, value(b"x")), (_G_OUTPUT, _LEN, value(b"y"))]
    model = [(1, _VARINT, 7), (8, _LEN, [(2, _VARINT, 13)]), (_MODEL_GRAPH, _LEN, graph)]  # IR 7, opset 13
    pieces: list[Buffer] = []
    _emit(model, pieces)
    return b"".join(pieces)


# ------------------------------------------------------------------------------------------ the cached file
def cache_path(name: str) -> Path:
    """Where the daemon keeps the CPU copy of catalog model `name` (never beside an imported model's file)."""
    return paths.cache_dir() / "prepared" / f"{name}.cpu{VERSION}.onnx"


def _stamp(src: Path, keep_output: Optional[str]) -> dict[str, Any]:
    st = src.stat()
    return {"version": VERSION, "source": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "output": keep_output}


def _digest(path: Path) -> str:
    """SHA-256 of a file, read in blocks (an IS-Net copy is 170 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _part(path: Path) -> Path:
    """A hidden in-progress name beside `path`, private to this process and thread."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _part(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def prepare(src: Path, dst: Path, keep_output: Optional[str] = None,
            verify: Optional[Callable[[Path, Path], bool]] = None, log: Callable[[str], None] = lambda _: None) -> Path:
    """`dst`, the CPU-ready copy of `src` (built once, rebuilt when `src` changes), or `src` itself when the
    rewrite does not apply, cannot be written, or `verify(original, rewritten)` rejects it (remembered, so it
    is not retried at every load). keep_output: the output the caller reads (default the first). The copy's
    SHA-256 is recorded when it is written and checked at every load: a copy changed on disk (a flipped bit
    gives silently wrong masks) is rebuilt, and the log says why. A stamp without a SHA-256 (written by a bgmask
    before 2026-12) is not a damaged copy: the copy is kept and its SHA-256 recorded when a fresh rewrite gives
    the same bytes (one log line), else it is rebuilt with the usual log line."""
    stamp_file = dst.with_suffix(".json")
    want = _stamp(src, keep_output)
    try:
        done = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        done = {}
    on_disk: Optional[str] = None
    older_stamp = False
    if {k: done.get(k) for k in want} == want and (not done.get("prepared") or dst.exists()):
        if not done.get("prepared"):
            return src
        try:
            on_disk = _digest(dst)
        except OSError:
            pass
        if on_disk is not None and done.get("sha256") == on_disk:
            return dst
        older_stamp = "sha256" not in done  # recorded before digests were: compared with a fresh rewrite below
        if not older_stamp:
            log(f"{dst} does not match the SHA-256 recorded when it was written (changed or damaged on disk);"
                " rebuilding it from the downloaded model")
    tmp = _part(dst)
    prepared = False
    digest: Optional[str] = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            data, stats = rewrite(src.read_bytes(), keep_output)
        except Unsupported as exc:
            log(f"{src.name} is used as it is ({exc})")
        else:
            digest = hashlib.sha256(data).hexdigest()
            if older_stamp and digest == on_disk:  # what this bgmask would write: keep it, record its digest
                del data
                _write_atomic(stamp_file, json.dumps(dict(want, prepared=True, sha256=digest)).encode())
                log(f"{dst.name}: recorded the SHA-256 of a copy prepared by an older bgmask")
                return dst
            tmp.write_bytes(data)
            del data
            prepared = verify is None or verify(src, tmp)
            log(f"{src.name}: {stats}" + ("" if prepared else "; the rewritten model's output differs, keeping the original"))
            if prepared:
                os.replace(tmp, dst)
        _write_atomic(stamp_file, json.dumps(dict(want, prepared=prepared, sha256=digest if prepared else None)).encode())
    except OSError as exc:  # a read-only or full cache: run the original, try again next load
        log(f"{src.name} is used as it is: could not write {dst} ({exc})")
        prepared = False
    finally:
        tmp.unlink(missing_ok=True)
    return dst if prepared else src


def forget(dst: Path) -> None:
    """Drop a prepared copy ONNX Runtime could not load, and its stamp, so the next load rebuilds it."""
    dst.unlink(missing_ok=True)
    dst.with_suffix(".json").unlink(missing_ok=True)
