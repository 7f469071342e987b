"""bgmask_client: the one client file that the GIMP and Krita plugins (and the `bgmask` CLI) share.

Standard library only, Python 3.8+: editors bundle their own Python, so nothing can be installed for it.
With pyzmq and msgpack importable it uses them; otherwise it speaks ZMTP 3 (PLAIN mechanism with the daemon's
token as password, DEALER, TCP) and the msgpack subset of the bgmask protocol itself (docs/protocol.md). Both
paths behave the same.

    client = Client()                      # finds (or starts) the per-user daemon on first use
    mask = client.remove(pixels, width, height, channels=4, sample_type="u8")

Threads: a Client is meant for one thread at a time (calls on one Client are serialised by a lock), and
every call blocks, so run it on a worker thread, not the editor's UI thread. `Client.cancel()` is the one
method meant to be called from another thread: it cancels the remove in flight on that Client.

Errors: every failure is a `BgmaskError` with `.code` and `.message` (a sentence for the user). Codes are
the daemon's (bad_request, unsupported_version, unauthorized, unknown_op, unknown_model, bad_image,
too_large, busy, cancelled, model_unavailable, device_unavailable, inference_failed, shutting_down,
internal) plus these raised by the client itself:

    not_running      no daemon answers and none could be started (the message says what to run)
    timeout          the daemon sent nothing for `timeout` seconds (inactivity: a live daemon reports
                     progress at least every second), or stopped in the middle of a message
    connection_lost  the connection closed under a request (daemon killed or crashed)
    protocol_error   the peer is not a bgmask daemon: no ZMTP greeting, not a ROUTER, not msgpack, or a daemon
                     older than protocol 2 (NULL handshake; the message says to update it)
    unauthorized     (also a daemon code) the daemon refused the token in the ZMTP PLAIN handshake
    unsupported_version  (also a daemon code) daemon.json names a daemon of another protocol version
    too_large        (also a daemon code) a frame exceeds hello's max_message_bytes, or the image exceeds
                     max_pixels: checked before anything is sent
    bad_image        (also a daemon code) the pixel buffer does not match width/height/channels/stride
    unsafe_runtime_dir  the runtime directory is a symlink, someone else's, or writable by others: it is
                     never used (the message names it and says what to do)
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

try:
    import msgpack as _msgpack
    import zmq as _zmq
except ImportError:  # the editors' Pythons: use the built-in ZMTP and msgpack code below
    _zmq = None
    _msgpack = None

__all__ = ["BgmaskError", "Client", "RemoveResult", "runtime_dir", "config_dir", "HAVE_PYZMQ", "context_box",
           "decontaminated_pixels", "ForwardFrameProgress"]

APP = "bgmask"
PROTOCOL = 2
HAVE_PYZMQ = _zmq is not None

# Client-side error codes (the daemon's codes arrive as they are).
NOT_RUNNING = "not_running"
TIMEOUT = "timeout"
CONNECTION_LOST = "connection_lost"
PROTOCOL_ERROR = "protocol_error"
TOO_LARGE = "too_large"
BAD_IMAGE = "bad_image"
CANCELLED = "cancelled"
UNAUTHORIZED = "unauthorized"
UNSUPPORTED_VERSION = "unsupported_version"
UNSAFE_RUNTIME_DIR = "unsafe_runtime_dir"

SAMPLE_SIZES = {"u8": 1, "u16": 2, "f16": 2, "f32": 4}
CHANNEL_NAMES = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}
MASK_SAMPLE_SIZES = {"u8": 1, "u16": 2, "f32": 4}

_POLL_S = 0.1  # how often a waiting call looks at its cancel flag / callable
_START_TIMEOUT_S = 60.0  # at least this long for an auto-started daemon to come up (imports onnxruntime)
_SMALL_REPLY_CAP = 1 << 24  # largest frame accepted in replies that carry no image data (hello, models, ...)


class BgmaskError(Exception):
    """A failure with a stable code (see the module docstring) and a sentence meant for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return "%s [%s]" % (self.message, self.code)


class RemoveResult(NamedTuple):
    """Everything a remove answered: the mask bytes, the reply header and any further data frames."""

    mask: bytes
    header: Dict[str, Any]
    extra: List[bytes]


class ForwardFrameProgress:
    """Wraps a plug-in's progress callback for remove_frames, so that a progress bar never runs backwards.
    Two frames are in flight, so their messages interleave ((0, inferring), (1, queued), (0, refining)):
    this passes on the frame the daemon works on, and drops the next frame's queue wait and the previous
    frame's last messages."""

    def __init__(self, report: Callable[[int, str, Optional[float]], None]) -> None:
        self._report = report
        self._index = 0

    def __call__(self, index: int, stage: str, fraction: Optional[float]) -> None:
        if index < self._index or (index > self._index and stage == "queued"):
            return
        self._index = index
        self._report(index, stage, fraction)


# ---------------------------------------------------------------------------------------------------
# msgpack subset: nil, bool, int, float, str, bin, array, map. Packing matches msgpack.packb byte for
# byte (smallest encoding, str8/bin types, float64); unpacking treats its input as hostile.

_MAX_DEPTH = 64


class _MsgpackError(ValueError):
    pass


def _packb(obj: Any) -> bytes:
    out = bytearray()
    _pack_into(out, obj, 0)
    return bytes(out)


def _pack_len(out: bytearray, n: int, fix: int, fix_max: int, codes: Tuple[Optional[int], int, int]) -> None:
    """Write a str/bin/array/map length with the smallest header (codes: 8-, 16-, 32-bit variants)."""
    if fix >= 0 and n <= fix_max:
        out.append(fix | n)
    elif codes[0] is not None and n < 0x100:
        out += struct.pack(">BB", codes[0], n)
    elif n < 0x10000:
        out += struct.pack(">BH", codes[1], n)
    elif n < 0x100000000:
        out += struct.pack(">BI", codes[2], n)
    else:
        raise _MsgpackError("object too long for msgpack (%d)" % n)


def _pack_into(out: bytearray, obj: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _MsgpackError("object nested too deeply to pack")
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _pack_int(out, obj)
    elif isinstance(obj, float):
        out += struct.pack(">Bd", 0xCB, obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        _pack_len(out, len(data), 0xA0, 31, (0xD9, 0xDA, 0xDB))
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = memoryview(obj).cast("B") if isinstance(obj, memoryview) else obj
        _pack_len(out, len(data), -1, 0, (0xC4, 0xC5, 0xC6))
        out += data
    elif isinstance(obj, (list, tuple)):
        _pack_len(out, len(obj), 0x90, 15, (None, 0xDC, 0xDD))
        for item in obj:
            _pack_into(out, item, depth + 1)
    elif isinstance(obj, dict):
        _pack_len(out, len(obj), 0x80, 15, (None, 0xDE, 0xDF))
        for key, value in obj.items():
            _pack_into(out, key, depth + 1)
            _pack_into(out, value, depth + 1)
    else:
        raise TypeError("cannot pack %s in a bgmask message" % type(obj).__name__)


def _pack_int(out: bytearray, n: int) -> None:
    if 0 <= n < 0x80 or -32 <= n < 0:
        out += struct.pack(">b" if n < 0 else ">B", n)
    elif n >= 0:
        for limit, fmt, code in ((0x100, ">BB", 0xCC), (0x10000, ">BH", 0xCD),
                                 (0x100000000, ">BI", 0xCE), (1 << 64, ">BQ", 0xCF)):
            if n < limit:
                out += struct.pack(fmt, code, n)
                return
        raise OverflowError("integer %d does not fit msgpack's 64 bits" % n)
    else:
        for limit, fmt, code in ((0x80, ">Bb", 0xD0), (0x8000, ">Bh", 0xD1),
                                 (0x80000000, ">Bi", 0xD2), (1 << 63, ">Bq", 0xD3)):
            if n >= -limit:
                out += struct.pack(fmt, code, n)
                return
        raise OverflowError("integer %d does not fit msgpack's 64 bits" % n)


# code -> (struct format, size) for fixed-size scalars
_SCALARS = {
    0xCA: (">f", 4), 0xCB: (">d", 8),
    0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
    0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
}
# code -> (kind, struct format of the length, size of the length)
_SIZED = {
    0xD9: ("str", ">B", 1), 0xDA: ("str", ">H", 2), 0xDB: ("str", ">I", 4),
    0xC4: ("bin", ">B", 1), 0xC5: ("bin", ">H", 2), 0xC6: ("bin", ">I", 4),
    0xDC: ("array", ">H", 2), 0xDD: ("array", ">I", 4),
    0xDE: ("map", ">H", 2), 0xDF: ("map", ">I", 4),
}


def _unpackb(data: Any) -> Any:
    """Decode one msgpack object that must fill `data` exactly; raises _MsgpackError on anything else."""
    buf = bytes(data)
    obj, pos = _unpack_at(buf, 0, 0)
    if pos != len(buf):
        raise _MsgpackError("%d stray bytes after the msgpack object" % (len(buf) - pos))
    return obj


def _unpack_at(buf: bytes, pos: int, depth: int) -> Tuple[Any, int]:
    if depth > _MAX_DEPTH:
        raise _MsgpackError("msgpack nested more than %d levels" % _MAX_DEPTH)
    if pos >= len(buf):
        raise _MsgpackError("msgpack data ends early")
    code = buf[pos]
    pos += 1
    if code <= 0x7F:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if code <= 0x8F:
        return _unpack_container("map", code & 0x0F, buf, pos, depth)
    if code <= 0x9F:
        return _unpack_container("array", code & 0x0F, buf, pos, depth)
    if code <= 0xBF:
        return _unpack_bytes("str", code & 0x1F, buf, pos)
    if code == 0xC0:
        return None, pos
    if code == 0xC2:
        return False, pos
    if code == 0xC3:
        return True, pos
    if code in _SCALARS:
        fmt, size = _SCALARS[code]
        if len(buf) - pos < size:
            raise _MsgpackError("msgpack data ends inside a number")
        return struct.unpack_from(fmt, buf, pos)[0], pos + size
    if code in _SIZED:
        kind, fmt, size = _SIZED[code]
        if len(buf) - pos < size:
            raise _MsgpackError("msgpack data ends inside a length")
        n = struct.unpack_from(fmt, buf, pos)[0]
        pos += size
        if kind in ("str", "bin"):
            return _unpack_bytes(kind, n, buf, pos)
        return _unpack_container(kind, n, buf, pos, depth)
    raise _MsgpackError("msgpack type 0x%02x is not used by the bgmask protocol" % code)


def _unpack_bytes(kind: str, n: int, buf: bytes, pos: int) -> Tuple[Any, int]:
    if len(buf) - pos < n:
        raise _MsgpackError("msgpack %s claims %d bytes but only %d remain" % (kind, n, len(buf) - pos))
    raw = buf[pos:pos + n]
    if kind == "bin":
        return raw, pos + n
    try:
        return raw.decode("utf-8"), pos + n
    except UnicodeDecodeError:
        raise _MsgpackError("msgpack str is not valid UTF-8") from None


def _unpack_container(kind: str, n: int, buf: bytes, pos: int, depth: int) -> Tuple[Any, int]:
    # Every element takes at least one byte, so a claim larger than what is left is a lie: refuse it before
    # building anything.
    if (2 * n if kind == "map" else n) > len(buf) - pos:
        raise _MsgpackError("msgpack %s claims %d entries but only %d bytes remain" % (kind, n, len(buf) - pos))
    if kind == "array":
        items = []
        for _ in range(n):
            item, pos = _unpack_at(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    mapping = {}
    for _ in range(n):
        key, pos = _unpack_at(buf, pos, depth + 1)
        if isinstance(key, (list, dict)):
            raise _MsgpackError("msgpack map key is a %s" % type(key).__name__)
        mapping[key], pos = _unpack_at(buf, pos, depth + 1)
    return mapping, pos


# ---------------------------------------------------------------------------------------------------
# Built-in ZMTP 3 DEALER over TCP (rfc.zeromq.org/spec/23, /24 and /37), PLAIN mechanism as the client.

_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
_GREETING = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 1]) + b"PLAIN".ljust(20, b"\0") + b"\0" + bytes(31)
PLAIN_USERNAME = b"bgmask"  # the daemon checks only the password (its token); the name says who we are
_METADATA = b"\x0bSocket-Type\x00\x00\x00\x06DEALER\x08Identity\x00\x00\x00\x00"
_BIG = 1 << 16  # frames above this are received into their own buffer and sent without copying
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)  # a closed peer must not SIGPIPE the editor (Krita)


def _plain_password(token: str) -> bytes:
    """The token as a ZMTP PLAIN password (at most 255 bytes on the wire)."""
    password = token.encode("utf-8")
    if len(password) > 255:
        raise BgmaskError(UNAUTHORIZED, "the token is %d bytes long; a bgmask token has at most 255" % len(password))
    return password


def _not_a_daemon(endpoint: str, why: str) -> str:
    """What to tell the user when the peer does not complete the PLAIN handshake of protocol 2: an older
    bgmask daemon (protocol 1 used ZeroMQ's NULL handshake) looks exactly like that."""
    return ("%s %s: it is not a bgmask daemon of protocol %d. If it is an older bgmask daemon, update bgmask where"
            " it runs (pip install -U bgmask), then restart the daemon (`bgmask stop`, then `bgmask serve`)"
            % (endpoint, why, PROTOCOL))


def _parse_tcp(endpoint: str) -> Tuple[str, int]:
    if not endpoint.startswith("tcp://"):
        raise BgmaskError(NOT_RUNNING, "endpoint %r is not tcp://HOST:PORT; the bgmask daemon only listens on TCP"
                          % endpoint)
    host, _, port = endpoint[6:].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit():
        raise BgmaskError(NOT_RUNNING, "endpoint %r is not tcp://HOST:PORT" % endpoint)
    return host, int(port)


def _command(name: bytes, body: bytes = b"") -> bytes:
    data = bytes([len(name)]) + name + body
    if len(data) < 256:
        return bytes([_COMMAND, len(data)]) + data
    return struct.pack(">BQ", _COMMAND | _LONG, len(data)) + data


def _ready_properties(body: bytes) -> Dict[str, bytes]:
    """Parse the name/value list of a READY command; anything malformed is a protocol error."""
    props = {}
    pos = 0
    while pos < len(body):
        n = body[pos]
        name = body[pos + 1:pos + 1 + n]
        pos += 1 + n
        if len(name) != n or pos + 4 > len(body):
            raise BgmaskError(PROTOCOL_ERROR, "the peer sent a malformed ZMTP READY command")
        size = struct.unpack_from(">I", body, pos)[0]
        pos += 4
        if pos + size > len(body):
            raise BgmaskError(PROTOCOL_ERROR, "the peer sent a malformed ZMTP READY command")
        props[name.decode("latin-1").lower()] = body[pos:pos + size]
        pos += size
    return props


class _FrameSource(io.RawIOBase):
    """The rest of one long frame as a raw stream: the bytes already buffered, then the socket's."""

    def __init__(self, sock: socket.socket, head: bytearray) -> None:
        super().__init__()
        self._sock = sock
        self._head = memoryview(head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head.nbytes:
            n = min(len(buffer), self._head.nbytes)
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._sock.recv_into(buffer)


class _ZmtpDealer:
    """A ZeroMQ DEALER connection in plain Python: one TCP socket, blocking calls with timeouts."""

    def __init__(self, endpoint: str, timeout: float, max_frame: int = _SMALL_REPLY_CAP, token: str = "") -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_frame = max_frame
        self._password = _plain_password(token)
        self._buf = bytearray()
        self._pos = 0
        host, port = _parse_tcp(endpoint)
        try:
            self._sock = socket.create_connection((host, port), timeout=min(timeout, 10.0))
        except OSError as exc:
            raise BgmaskError(NOT_RUNNING, "nothing answers at %s (%s)" % (endpoint, exc.strerror or exc)) from None
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sys.platform == "darwin":  # macOS has no MSG_NOSIGNAL; SO_NOSIGPIPE is 0x1022 there
                self._sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_NOSIGPIPE", 0x1022), 1)
            self._handshake()
        except BaseException:
            self._sock.close()
            raise

    # -- handshake ----------------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._greet()
        except BgmaskError as exc:  # a ZMTP peer answers at once; silence or a hang-up means something else
            if exc.code == TIMEOUT:
                raise BgmaskError(PROTOCOL_ERROR, "%s accepted the connection but did not complete a ZeroMQ handshake"
                                  " within %g s; it is not a bgmask daemon, or the daemon is frozen"
                                  % (self.endpoint, self.timeout)) from None
            if exc.code == CONNECTION_LOST:
                raise BgmaskError(PROTOCOL_ERROR, "%s closed the connection during the ZeroMQ handshake; is it a"
                                  " bgmask daemon?" % self.endpoint) from None
            raise

    def _greet(self) -> None:
        # Signature and major version first; the rest (our mechanism) once the peer's greeting has arrived. libzmq
        # sends its whole greeting as soon as it has our major version, and a peer that ends the handshake with
        # our unread bytes in its buffer resets the connection, which would drop its greeting before we read it.
        self._send_all(memoryview(_GREETING[:11]))
        signature = self._read_exact(10)
        if signature[0] != 0xFF or not signature[9] & 0x01:
            raise BgmaskError(PROTOCOL_ERROR, "%s is not a ZeroMQ peer (it answered %r); is it a bgmask daemon?"
                              % (self.endpoint, signature))
        rest = self._read_exact(54)
        if rest[0] < 3:
            raise BgmaskError(PROTOCOL_ERROR, "%s speaks ZMTP %d; bgmask needs ZMTP 3" % (self.endpoint, rest[0]))
        mechanism = bytes(rest[2:22]).rstrip(b"\0")
        if mechanism != b"PLAIN":  # (libzmq always sends as-server 0, so that byte says nothing)
            raise BgmaskError(PROTOCOL_ERROR, _not_a_daemon(self.endpoint, "uses ZeroMQ's %s handshake, not PLAIN"
                                                            % mechanism.decode("latin-1")))
        self._send_all(memoryview(_GREETING[11:]))
        # RFC 24: HELLO carries the user name and password, WELCOME (or ERROR) answers once the daemon's ZAP
        # handler has judged them; only then are INITIATE/READY (the socket metadata) exchanged.
        self._send_all(memoryview(_command(b"HELLO", bytes([len(PLAIN_USERNAME)]) + PLAIN_USERNAME
                                           + bytes([len(self._password)]) + self._password)))
        self._expect(b"WELCOME")
        self._send_all(memoryview(_command(b"INITIATE", _METADATA)))
        body = self._expect(b"READY")
        socket_type = _ready_properties(body).get("socket-type", b"")
        if socket_type != b"ROUTER":
            raise BgmaskError(PROTOCOL_ERROR, "%s is a ZeroMQ %s socket, not the bgmask daemon's ROUTER"
                              % (self.endpoint, socket_type.decode("latin-1") or "unknown"))

    def _expect(self, wanted: bytes) -> bytes:
        """The body of the handshake command `wanted`; an ERROR command says why the daemon refused us."""
        flags, body = self._read_frame()
        name = bytes(body[1:1 + body[0]]) if flags & _COMMAND and body else b""
        if flags & _COMMAND and body[:5] == b"^RROR":  # libzmq 4.3's ERROR: "\x05ERROR" in C is "\x5e" "RROR"
            body, name = b"\x05E" + body[1:], b"ERROR"
        if name == b"ERROR":
            reason = bytes(body[7:7 + body[6]]).decode("utf-8", "replace") if len(body) > 6 else ""
            if reason.startswith("400"):  # the ZAP handler's verdict: wrong password
                raise _token_refused(self.endpoint)
            raise BgmaskError(PROTOCOL_ERROR, "%s refused the ZeroMQ handshake: %s" % (self.endpoint, reason))
        if name != wanted:
            raise BgmaskError(PROTOCOL_ERROR, "%s did not send a ZMTP %s command" % (self.endpoint, wanted.decode()))
        return bytes(body[1 + len(wanted):])

    # -- sending ------------------------------------------------------------------------------------

    def send(self, frames: Sequence[Any]) -> None:
        """Send one multi-part message; big frames go straight from the caller's buffer to the socket."""
        pending = bytearray()
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            view = memoryview(frame).cast("B")
            more = _MORE if i < last else 0
            if view.nbytes < 256:
                pending += struct.pack(">BB", more, view.nbytes)
            else:
                pending += struct.pack(">BQ", more | _LONG, view.nbytes)
            if view.nbytes <= _BIG:
                pending += view
            else:
                self._send_all(memoryview(pending))
                pending = bytearray()
                self._send_all(view)
        if pending:
            self._send_all(memoryview(pending))

    def _send_all(self, view: memoryview) -> None:
        # socket.sendall's timeout covers the whole call; a loop of send() keeps it an inactivity timeout.
        self._sock.settimeout(self.timeout)
        try:
            while view.nbytes:
                sent = self._sock.send(view, _SEND_FLAGS)
                view = view[sent:]
        except socket.timeout:
            raise BgmaskError(TIMEOUT, "the bgmask daemon at %s stopped taking data for %g s"
                              % (self.endpoint, self.timeout)) from None
        except OSError as exc:
            raise BgmaskError(CONNECTION_LOST, "the connection to the bgmask daemon at %s was lost (%s)"
                              % (self.endpoint, exc.strerror or exc)) from None

    # -- receiving ----------------------------------------------------------------------------------

    def recv(self, wait: float) -> Optional[List[Any]]:
        """The next message, or None if none started within `wait` seconds; PINGs are answered on the way."""
        deadline = time.monotonic() + wait
        parts: List[Any] = []
        while True:  # commands do not count as a message: a PING flood must not hold the caller here
            if not parts and self._pos == len(self._buf):
                left = deadline - time.monotonic()
                if left <= 0 or not self._fill(left):
                    return None
            flags, body = self._read_frame()
            if flags & _COMMAND:
                self._on_command(body)
                continue
            parts.append(body)
            if not flags & _MORE:
                return parts

    def _on_command(self, body: Any) -> None:
        name = bytes(body[1:1 + body[0]]) if body else b""
        if name == b"PING":  # body: name, 2-byte TTL, up to 16 bytes of context to echo back
            self._send_all(memoryview(_command(b"PONG", bytes(body[7:23]))))

    def _read_frame(self) -> Tuple[int, Any]:
        flags = self._read_exact(1)[0]
        if flags & ~(_MORE | _LONG | _COMMAND):
            raise BgmaskError(PROTOCOL_ERROR, "%s sent a ZMTP frame with unknown flags 0x%02x"
                              % (self.endpoint, flags))
        size = struct.unpack(">Q", self._read_exact(8))[0] if flags & _LONG else self._read_exact(1)[0]
        if size > self.max_frame:
            raise BgmaskError(PROTOCOL_ERROR, "%s sent a %d-byte frame, more than the %d this client accepts"
                              % (self.endpoint, size, self.max_frame))
        if flags & _COMMAND and (flags & _MORE or size == 0):
            raise BgmaskError(PROTOCOL_ERROR, "%s sent a malformed ZMTP command" % self.endpoint)
        return flags, self._read_exact(size)

    def _fill(self, wait: float) -> bool:
        """Append what the socket has to the read buffer, waiting at most `wait`; False if nothing came."""
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._sock.settimeout(wait)
        try:
            data = self._sock.recv(_BIG)
        except socket.timeout:
            return False
        except OSError as exc:
            raise BgmaskError(CONNECTION_LOST, "the connection to the bgmask daemon at %s was lost (%s)"
                              % (self.endpoint, exc.strerror or exc)) from None
        if not data:
            raise BgmaskError(CONNECTION_LOST, "the bgmask daemon at %s closed the connection" % self.endpoint)
        self._buf += data
        return True

    def _read_exact(self, n: int) -> Any:
        """n bytes from the stream, as bytes."""
        available = len(self._buf) - self._pos
        if n > _BIG and n > available:
            source = _FrameSource(self._sock, self._buf[self._pos:])
            self._buf = bytearray()
            self._pos = 0
            self._sock.settimeout(self.timeout)
            # A BufferedReader of buffer size 1 reads a long frame straight into the bytes object it returns
            # (looping over short reads): no zero-filled buffer and no copy into bytes afterwards (for a 24 MB
            # mask, 4-5 ms of the caller's CPU here). It never reads past the frame.
            try:
                out = io.BufferedReader(source, buffer_size=1).read(n)
            except socket.timeout:
                raise BgmaskError(TIMEOUT, "the bgmask daemon at %s stopped sending for %g s in the middle of a"
                                  " message" % (self.endpoint, self.timeout)) from None
            except OSError as exc:
                raise BgmaskError(CONNECTION_LOST, "the connection to the bgmask daemon at %s was lost (%s)"
                                  % (self.endpoint, exc.strerror or exc)) from None
            if out is None or len(out) < n:
                raise BgmaskError(CONNECTION_LOST, "the bgmask daemon at %s closed the connection in the middle of"
                                  " a message" % self.endpoint)
            return out
        while len(self._buf) - self._pos < n:
            if not self._fill(self.timeout):
                raise BgmaskError(TIMEOUT, "the bgmask daemon at %s stopped sending for %g s in the middle of a"
                                  " message" % (self.endpoint, self.timeout))
        out = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        return out

    def close(self) -> None:
        self._sock.close()


# ---------------------------------------------------------------------------------------------------
# pyzmq DEALER with the same interface; a socket monitor turns libzmq's silent reconnects into the same
# errors the built-in transport raises (refused, handshake failure, connection lost). It uses the
# process-wide context: terminating a private one from a garbage-collected, never-closed Client can block
# forever on a socket whose own finaliser has not run yet. Each monitor gets a random inproc name of its
# own: pyzmq's default names it after the socket's file descriptor, which a just-closed socket may still hold
# bound while the number is reused (a Client opened in another thread then failed with "Address already in
# use"), and a counter would repeat in every copy of this file a process loads (each plug-in loads its own).


class _PyzmqDealer:
    def __init__(self, endpoint: str, timeout: float, max_frame: int = _SMALL_REPLY_CAP, token: str = "") -> None:
        zmq = _zmq
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_frame = max_frame  # libzmq allocates frames itself; kept for interface parity
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        self._sock.setsockopt(zmq.HANDSHAKE_IVL, int(timeout * 1000))
        self._sock.setsockopt(zmq.PLAIN_USERNAME, PLAIN_USERNAME)
        self._sock.setsockopt(zmq.PLAIN_PASSWORD, _plain_password(token))
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH,
            addr="inproc://bgmask-client-monitor-" + os.urandom(12).hex())
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._connected = False
        self._ready = False
        try:
            _parse_tcp(endpoint)
            self._sock.connect(endpoint)
            deadline = time.monotonic() + timeout
            while not self._ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    if self._connected:
                        raise BgmaskError(PROTOCOL_ERROR, "%s accepted the connection but did not complete a ZeroMQ"
                                          " handshake within %g s; it is not a bgmask daemon, or the daemon is"
                                          " frozen" % (endpoint, timeout))
                    raise BgmaskError(NOT_RUNNING, "nothing answers at %s" % endpoint)
                if self._monitor.poll(int(left * 1000) + 1):
                    self._on_event()
        except BaseException:
            self.close()
            raise

    def _on_event(self) -> None:
        zmq = _zmq
        frames = self._monitor.recv_multipart()
        event = struct.unpack("=H", frames[0][:2])[0]
        if event == zmq.EVENT_CONNECTED:
            self._connected = True
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._ready = True
        elif event == zmq.EVENT_CONNECT_RETRIED and not self._connected:
            raise BgmaskError(NOT_RUNNING, "nothing answers at %s (connection refused)" % self.endpoint)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise _token_refused(self.endpoint)
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            mismatch = struct.unpack("=I", frames[0][2:6])[0] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
            raise BgmaskError(PROTOCOL_ERROR, _not_a_daemon(self.endpoint, "uses another ZeroMQ handshake than PLAIN"
                                                            if mismatch else "failed the ZeroMQ PLAIN handshake"))
        elif event == zmq.EVENT_DISCONNECTED:
            if self._ready:
                raise BgmaskError(CONNECTION_LOST, "the bgmask daemon at %s closed the connection" % self.endpoint)
            raise BgmaskError(PROTOCOL_ERROR, "%s closed the connection during the ZeroMQ handshake; is it a"
                              " bgmask daemon?" % self.endpoint)

    def send(self, frames: Sequence[Any]) -> None:
        try:
            self._sock.send_multipart(frames, copy=False)
        except _zmq.Again:
            raise BgmaskError(TIMEOUT, "the bgmask daemon at %s stopped taking data for %g s"
                              % (self.endpoint, self.timeout)) from None

    def recv(self, wait: float) -> Optional[List[Any]]:
        events = dict(self._poller.poll(int(wait * 1000)))
        if self._sock in events:  # a message that arrived before a disconnect is still delivered
            return self._sock.recv_multipart()
        if self._monitor in events:
            self._on_event()
        return None

    def close(self) -> None:
        try:
            self._sock.disable_monitor()
        except _zmq.ZMQError:
            pass
        self._monitor.close(0)
        self._sock.close(0)


def _token_refused(endpoint: str) -> BgmaskError:
    """What both transports raise when the daemon's ZAP handler rejects the token (ZMTP ERROR 400)."""
    return BgmaskError(UNAUTHORIZED, "the bgmask daemon at %s refused this client's token in the ZeroMQ handshake"
                       " (the daemon was restarted, or the token is not its own)" % endpoint)


def _connect(transport: str, endpoint: str, timeout: float, token: str) -> Any:
    return (_PyzmqDealer if transport == "pyzmq" else _ZmtpDealer)(endpoint, timeout, token=token)


# ---------------------------------------------------------------------------------------------------
# Per-user directories, computed like platformdirs 4 (user_runtime_dir / user_config_dir with
# appauthor=False) without importing it, so the plugins find what the daemon wrote; the daemon takes its
# runtime directory from here too (bgmask.paths), so both sides trust exactly the same directory.

def _xdg(name: str) -> Optional[str]:
    value = os.environ.get(name, "")
    return value if posixpath.isabs(value) else None


def _expand_user(path: str) -> str:
    home = os.environ.get("HOME")
    if sys.platform != "win32" and home is not None and not posixpath.isabs(home):
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir.rstrip("/") + path[1:] or "/"
    return os.path.expanduser(path)


def _geteuid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else os.getuid()


# Why a directory may not hold the token and the daemon's endpoint (a reason code of _dir_problem).
_SYMLINK, _NOT_DIR, _FOREIGN, _OTHERS_WRITE, _NOT_0700 = "symlink", "not_dir", "foreign", "others_write", "not_0700"


def _dir_problem(path: str, follow_links: bool = False) -> Optional[str]:
    """None when `path` is a real directory (no symlink unless `follow_links`: then its target is judged), owned by
    this user, mode 0700; else the reason code. Raises OSError (FileNotFoundError) when it cannot be examined.
    Windows keeps these folders private through the profile's ACLs: only the symlink and directory checks apply."""
    info = os.stat(path) if follow_links else os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return _SYMLINK
    if not stat.S_ISDIR(info.st_mode):
        return _NOT_DIR
    if sys.platform == "win32":
        return None
    if info.st_uid != _geteuid():
        return _FOREIGN
    if info.st_mode & 0o022:
        return _OTHERS_WRITE
    return _NOT_0700 if info.st_mode & 0o777 != 0o700 else None


def _runtime_dir_problem(path: str, missing_ok: bool) -> bool:
    """XDG's rule for a runtime dir ($XDG_RUNTIME_DIR, /run/user/<uid>): _dir_problem finds nothing."""
    try:
        return _dir_problem(path) is not None
    except FileNotFoundError:
        return not missing_ok
    except OSError:
        return True


def _problem_sentence(reason: str, path: str, follow_links: bool) -> str:
    info = os.stat(path) if follow_links else os.lstat(path)
    return {_SYMLINK: "it is a symbolic link", _NOT_DIR: "it is not a directory",
            _FOREIGN: "it belongs to user id %d, not to you (%d)" % (info.st_uid, _geteuid()),
            _OTHERS_WRITE: "others can write to it (mode %03o)" % stat.S_IMODE(info.st_mode)}[reason]


def private_dir(path: str, create: bool = True, tighten: bool = False, follow_links: bool = False,
                variable: Optional[str] = "BGMASK_RUNTIME_DIR") -> str:
    """`path`, checked before anything in it is trusted: created 0700 where missing (when `create`), tightened
    to 0700 when it is ours but readable by others, refused with an `unsafe_runtime_dir` error naming it when
    another user could have planted it or could change what is in it. A missing dir is fine when not `create`.
    `tighten` also makes our own group-writable dir 0700 instead of refusing it, and `follow_links` judges the
    target of a symlink instead of refusing it (the config dir, which a umask of 002 creates 0775 and dotfile
    managers such as GNU stow link; never the runtime dir, where a planted daemon.json would be trusted).
    `variable` is the environment variable the refusal tells the user to set instead."""
    try:
        if create:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        why = _dir_problem(path, follow_links)
        if why == _NOT_0700 or (why == _OTHERS_WRITE and tighten):
            os.chmod(path, 0o700)
            why = None
        sentence = None if why is None else _problem_sentence(why, path, follow_links)
    except FileNotFoundError:
        if create:
            raise BgmaskError(UNSAFE_RUNTIME_DIR, "cannot create the bgmask directory %s" % path) from None
        return path
    except OSError as exc:
        sentence = "it cannot be used (%s)" % (exc.strerror or exc)
    if sentence is not None:
        instead = ", or set %s to a private directory of yours" % variable if variable else ""
        raise BgmaskError(UNSAFE_RUNTIME_DIR, "the bgmask directory %s is not safe to use: %s. Remove it (or make it"
                          " yours with mode 0700)%s; nothing was sent or written there." % (path, sentence, instead))
    return path


def private_runtime_dir(create: bool = True) -> str:
    """runtime_dir() through private_dir(): the only way the client (and the daemon) trusts it."""
    return private_dir(runtime_dir(), create)


def open_private(path: str, flags: int) -> int:
    """os.open that never follows a symbolic link (O_NOFOLLOW where the OS has it: a planted link to a file of
    the user's must not be written through) and creates files readable by the user only."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)


def _runtime_parent_problem(path: str) -> bool:
    """True if a parent of `path` could be swapped by another user (world-writable without sticky bit)."""
    shared = False
    parts = path.rstrip("/").split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i]) or "/"
        try:
            if shared and os.lstat(parent).st_uid not in (0, _geteuid()):
                return True
            mode = os.stat(parent).st_mode
        except OSError:
            return False
        shared = bool(mode & stat.S_IWOTH)
        if shared and not mode & stat.S_ISVTX:
            return True
    return False


def _win_local_appdata() -> str:
    override = os.environ.get("WIN_PD_OVERRIDE_LOCAL_APPDATA", "").strip()
    if _win_fully_qualified(override):
        return override
    try:
        return _win_known_folder("{F1B32785-6FBA-4FCF-9D55-7B8E7F157091}")  # FOLDERID_LocalAppData
    except (OSError, AttributeError, ValueError, ImportError):
        value = os.environ.get("LOCALAPPDATA")
        if not value:
            raise BgmaskError(NOT_RUNNING, "cannot find the Local AppData folder (LOCALAPPDATA is not set)") from None
        return value


def _win_fully_qualified(path: str) -> bool:
    import ntpath

    drive, tail = ntpath.splitdrive(path.replace("/", "\\"))
    if drive.startswith("\\\\"):  # UNC: \\server\share
        return len([p for p in drive[2:].split("\\") if p]) >= 2
    return bool(drive) and tail.startswith("\\")


def _win_known_folder(guid: str) -> str:
    import ctypes
    from ctypes import wintypes

    class GUID(ctypes.Structure):
        _fields_ = [("Data1", wintypes.DWORD), ("Data2", wintypes.WORD), ("Data3", wintypes.WORD),
                    ("Data4", wintypes.BYTE * 8)]

    folder = GUID()
    if ctypes.windll.ole32.CLSIDFromString(ctypes.c_wchar_p(guid), ctypes.byref(folder)) != 0:
        raise OSError("CLSIDFromString failed")
    path = ctypes.c_wchar_p()
    try:
        if ctypes.windll.shell32.SHGetKnownFolderPath(ctypes.byref(folder), 0x4000, None, ctypes.byref(path)) != 0:
            raise OSError("SHGetKnownFolderPath failed")
        if not path.value:
            raise OSError("SHGetKnownFolderPath gave no path")
        return path.value
    finally:
        ctypes.windll.ole32.CoTaskMemFree(path)


def runtime_dir() -> str:
    """Where the daemon writes daemon.json (endpoint, token, pid): $BGMASK_RUNTIME_DIR, else platformdirs'
    choice where that is private to the user ($XDG_RUNTIME_DIR, /run/user/<uid>, the macOS and Windows per-user
    folders), else <cache>/bgmask/run (never a shared temp dir). Use private_runtime_dir() to trust it."""
    if os.environ.get("BGMASK_RUNTIME_DIR"):
        return os.environ["BGMASK_RUNTIME_DIR"]
    if sys.platform == "win32":
        return os.path.join(os.path.normpath(os.path.join(_win_local_appdata(), "Temp")), APP)
    xdg = _xdg("XDG_RUNTIME_DIR")
    if sys.platform == "darwin":
        if xdg and not _runtime_dir_problem(xdg, missing_ok=True):
            return os.path.join(xdg, APP)
        return os.path.join(_expand_user("~/Library/Caches/TemporaryItems"), APP)
    if xdg and not (_runtime_dir_problem(xdg, missing_ok=True) or _runtime_parent_problem(xdg)):
        return os.path.join(xdg, APP)
    if sys.platform.startswith("openbsd"):
        base = "/tmp/run/user/%d" % _geteuid()
    elif sys.platform.startswith(("freebsd", "netbsd")):
        base = "/var/run/user/%d" % _geteuid()
    else:
        base = "/run/user/%d" % _geteuid()
    if _runtime_dir_problem(base, missing_ok=False):
        # Not a shared temp dir, where another user could create ours first: a folder in the user's own cache.
        return os.path.join(_xdg("XDG_CACHE_HOME") or _expand_user("~/.cache"), APP, "run")
    return os.path.join(base, APP)


def config_dir() -> str:
    """Where `bgmask serve` / `bgmask install` record config.json: $BGMASK_CONFIG_DIR or platformdirs' choice."""
    if os.environ.get("BGMASK_CONFIG_DIR"):
        return os.environ["BGMASK_CONFIG_DIR"]
    if sys.platform == "win32":
        return os.path.join(os.path.normpath(_win_local_appdata()), APP)
    xdg = _xdg("XDG_CONFIG_HOME")
    if xdg:
        return os.path.join(xdg, APP)
    if sys.platform == "darwin":
        return os.path.join(_expand_user("~/Library/Application Support"), APP)
    return os.path.join(_expand_user("~/.config"), APP)


# ---------------------------------------------------------------------------------------------------
# Discovery and auto-start.

def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.GetLastError() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_runtime_file() -> Optional[Dict[str, Any]]:
    """The live daemon's runtime file, or None when it is missing, unreadable or left by a dead daemon."""
    path = os.path.join(private_runtime_dir(create=False), "daemon.json")
    try:
        with os.fdopen(open_private(path, os.O_RDONLY), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not (isinstance(info, dict) and isinstance(info.get("endpoint"), str) and isinstance(info.get("token"), str)
            and isinstance(info.get("pid"), int) and pid_alive(info["pid"])):
        return None
    return info


def _daemon_command() -> List[str]:
    path = os.path.join(config_dir(), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            command = json.load(f).get("daemon_command")
    except (OSError, ValueError, AttributeError):
        command = None
    if not (isinstance(command, list) and command and all(isinstance(part, str) for part in command)):
        raise BgmaskError(NOT_RUNNING, "the bgmask daemon is not running and %s does not say how to start it:"
                          " run `bgmask install` once, or run `bgmask serve` in a terminal" % path)
    return command


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with os.fdopen(open_private(path, os.O_RDONLY), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


class _SpawnLock:
    """An exclusive lock on <runtime dir>/spawn.lock, so two plugins asking at once start one daemon."""

    def __init__(self, path: str, deadline: float) -> None:
        self.path = path
        self.deadline = deadline

    def __enter__(self) -> "_SpawnLock":
        try:
            self.fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise BgmaskError(NOT_RUNNING, "cannot open %s (%s): remove it, or run `bgmask serve` in a terminal"
                              % (self.path, exc.strerror or exc)) from None
        while True:
            try:
                self._lock(True)
                return self
            except OSError:
                if time.monotonic() > self.deadline:
                    os.close(self.fd)
                    raise BgmaskError(NOT_RUNNING, "another program has been starting the bgmask daemon for too"
                                      " long (%s is locked); run `bgmask serve` in a terminal" % self.path) from None
                time.sleep(0.05)

    def __exit__(self, *exc: Any) -> None:
        try:
            self._lock(False)
        finally:
            os.close(self.fd)

    def _lock(self, acquire: bool) -> None:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(self.fd, 0, os.SEEK_SET)
            msvcrt.locking(self.fd, msvcrt.LK_NBLCK if acquire else msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(self.fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if acquire else fcntl.LOCK_UN)


def _detached() -> Dict[str, Any]:
    """Popen arguments that let the daemon outlive the editor and never open a console window."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | 0x08000000}  # CREATE_NO_WINDOW
    return {"start_new_session": True}


# ---------------------------------------------------------------------------------------------------
# The client.

class Client:
    """A connection to the per-user bgmask daemon, opened (and the daemon started) on first use.

    endpoint/token default to $BGMASK_ENDPOINT/$BGMASK_TOKEN, else the daemon's runtime file; with an
    explicit endpoint nothing is auto-started. `timeout` is an inactivity timeout in seconds. transport
    is "auto" (pyzmq when pyzmq and msgpack import, else built-in), "pyzmq" or "builtin".
    """

    def __init__(self, endpoint: Optional[str] = None, token: Optional[str] = None, timeout: float = 30.0,
                 autostart: bool = True, transport: str = "auto") -> None:
        if transport not in ("auto", "pyzmq", "builtin"):
            raise ValueError("transport must be 'auto', 'pyzmq' or 'builtin', not %r" % (transport,))
        if transport == "pyzmq" and not HAVE_PYZMQ:
            raise ImportError("transport 'pyzmq' needs the pyzmq and msgpack packages")
        self.transport = transport if transport != "auto" else ("pyzmq" if HAVE_PYZMQ else "builtin")
        self.timeout = float(timeout)
        self.autostart = autostart
        self.endpoint = endpoint or os.environ.get("BGMASK_ENDPOINT") or None
        self._explicit = self.endpoint is not None
        self._token_arg = token if token is not None else os.environ.get("BGMASK_TOKEN")
        self._token: Optional[str] = None
        self._conn: Any = None
        self._hello: Dict[str, Any] = {}
        self._ids = 0
        self._heard = False  # whether the daemon has sent anything about the request in flight
        self._fresh = False  # whether the connection was opened for the call now running
        self._lock = threading.RLock()
        self._cancel = threading.Event()
        self._pack = _msgpack.packb if self.transport == "pyzmq" else _packb
        self._unpack = (lambda data: _msgpack.unpackb(data, raw=False)) if self.transport == "pyzmq" else _unpackb

    # -- public API ---------------------------------------------------------------------------------

    def hello(self) -> Dict[str, Any]:
        """protocol, version, capabilities, max_message_bytes, max_pixels, provider, device, default_model."""
        return self._call("hello", {})[0]

    def status(self) -> Dict[str, Any]:
        return self._call("status", {})[0]

    def models(self) -> List[Dict[str, Any]]:
        return self._call("models", {})[0]["models"]

    def pull(self, model: str, on_progress: Optional[Callable[[str, Optional[float]], None]] = None) -> Dict[str, Any]:
        """Download `model` into the daemon's cache (progress stage "downloading")."""
        return self._call("pull", {"model": model}, on_progress=on_progress)[0]

    def shutdown(self) -> None:
        """Ask the daemon to finish its running job and exit."""
        try:
            self._call("shutdown", {})
        finally:
            self.close()

    def cancel(self) -> None:
        """Cancel the remove in flight on this client; safe to call from any thread."""
        self._cancel.set()

    def remove(self, pixels: Any, width: int, height: int, channels: int, sample_type: str, linear: bool = False,
               model: Optional[str] = None, options: Optional[Dict[str, Any]] = None, out_sample_type: str = "u8",
               stride: Optional[int] = None, on_progress: Optional[Callable[[str, Optional[float]], None]] = None,
               cancel: Optional[Callable[[], bool]] = None) -> bytes:
        """The soft mask of `pixels`: height rows of width samples of out_sample_type, 1.0/max = foreground."""
        return self.remove_full(pixels, width, height, channels, sample_type, linear, model, options,
                                out_sample_type, stride, on_progress, cancel).mask

    def remove_full(self, pixels: Any, width: int, height: int, channels: int, sample_type: str,
                    linear: bool = False, model: Optional[str] = None, options: Optional[Dict[str, Any]] = None,
                    out_sample_type: str = "u8", stride: Optional[int] = None,
                    on_progress: Optional[Callable[[str, Optional[float]], None]] = None,
                    cancel: Optional[Callable[[], bool]] = None) -> RemoveResult:
        """Like remove(), also returning the reply header (model, timings, ...) and any extra data frames."""
        view = _check_image(pixels, width, height, channels, sample_type, stride)
        fields = _remove_fields(width, height, channels, sample_type, linear, model, options, out_sample_type, stride)
        self._cancel.clear()
        with self._lock:
            self._connection()
            self._check_limits(view, width, height)
            header, frames = self._call("remove", fields, [view], on_progress, cancel, _reply_cap(width, height))
        return self._mask_result(header, frames, width * height, out_sample_type)

    def remove_frames(self, frames: Iterable[Any], width: int, height: int, channels: int, sample_type: str,
                      linear: bool = False, model: Optional[str] = None, options: Optional[Dict[str, Any]] = None,
                      out_sample_type: str = "u8", stride: Optional[int] = None, temporal: bool = True,
                      on_progress: Optional[Callable[[int, str, Optional[float]], None]] = None,
                      cancel: Optional[Callable[[], bool]] = None) -> List[RemoveResult]:
        """The masks of an animation's or clip's frames (each `pixels` as for remove(), all the same size),
        in order, as one sequence (docs/protocol.md): frame k + 1 is sent while frame k is computed, and with
        `temporal` the masks of a still or slowly moving scene stay consistent instead of flickering.
        `frames` is read lazily (two frames at a time are held); on_progress gets (frame index, stage,
        fraction); cancel() (or the callable) stops it between frames, with `cancelled`."""
        fields = _remove_fields(width, height, channels, sample_type, linear, model, options, out_sample_type, stride)
        self._cancel.clear()
        results: List[RemoveResult] = []
        with self._lock:
            conn = self._connection()
            conn.max_frame = _reply_cap(width, height)
            self._ids += 1
            sequence_id = "seq-%d-%d" % (os.getpid(), self._ids)
            in_flight: Dict[int, int] = {}  # request id -> frame index
            done: Dict[int, RemoveResult] = {}  # frames finished before an earlier one
            source = iter(frames)
            upcoming = next(source, None)
            index = 0
            def stop() -> None:
                if self._cancel.is_set() or (cancel is not None and cancel()):
                    raise BgmaskError(CANCELLED, "the request was cancelled")

            try:
                while upcoming is not None or in_flight:
                    stop()
                    if upcoming is not None and len(in_flight) < 2:
                        view = _check_image(upcoming, width, height, channels, sample_type, stride)
                        self._check_limits(view, width, height)
                        upcoming = next(source, None)
                        sequence = {"id": sequence_id, "index": index, "final": upcoming is None,
                                    "temporal": bool(temporal)}
                        self._ids += 1
                        in_flight[self._ids] = index
                        header = dict(fields, v=PROTOCOL, id=self._ids, token=self._token or "", op="remove",
                                      sequence=sequence)
                        conn.send([self._pack(header), view])
                        index += 1
                        continue
                    rid, header, data = self._next_final(conn, in_flight, on_progress, stop)
                    if header["type"] == "error":
                        del in_flight[rid]
                        raise _error_from(header)
                    reply = {k: v for k, v in header.items() if k not in ("v", "id", "type")}
                    done[in_flight.pop(rid)] = self._mask_result(reply, data, width * height, out_sample_type)
                    while len(results) in done:  # in frame order, whichever order the finals came in
                        results.append(done.pop(len(results)))
            except BgmaskError as exc:
                self._abandon(conn, in_flight, exc)
                raise
            except BaseException:
                self.close()
                raise
            finally:
                self._fresh = False
        return results

    def _check_limits(self, view: memoryview, width: int, height: int) -> None:
        """too_large before sending, against the limits the daemon's hello announced."""
        max_pixels, max_bytes = _limit(self._hello, "max_pixels"), _limit(self._hello, "max_message_bytes")
        if max_pixels is not None and width * height > max_pixels:
            raise BgmaskError(TOO_LARGE, "The image has {:,} pixels; this daemon accepts at most {:,}."
                              .format(width * height, max_pixels))
        if max_bytes is not None and view.nbytes > max_bytes:
            raise BgmaskError(TOO_LARGE, "The image needs {:,} bytes; this daemon accepts at most {:,} per message."
                              .format(view.nbytes, max_bytes))

    def _mask_result(self, header: Dict[str, Any], frames: List[Any], pixels: int, out_sample_type: str) -> RemoveResult:
        size = MASK_SAMPLE_SIZES.get(out_sample_type, 0) * pixels
        if not frames or len(frames[0]) != size:
            self.close()
            raise BgmaskError(PROTOCOL_ERROR, "the daemon's mask has %s bytes, expected %d"
                              % (len(frames[0]) if frames else "no", size))
        return RemoveResult(bytes(frames[0]), header, [bytes(f) for f in frames[1:]])

    def _abandon(self, conn: Any, in_flight: Dict[int, int], exc: BgmaskError) -> None:
        """After a sequence failed or was cancelled: cancel the frames still in flight and read their final
        messages, so the connection stays usable (or drop it where it is not)."""
        if exc.code in (TIMEOUT, CONNECTION_LOST, PROTOCOL_ERROR) or self._conn is not conn:
            self.close()
            return
        try:
            for rid in sorted(in_flight):
                self._send_cancel(conn, rid)
            while in_flight:
                del in_flight[self._next_final(conn, in_flight, None, None)[0]]
        except BgmaskError:
            self.close()

    def _next_final(self, conn: Any, in_flight: Dict[int, int],
                    on_progress: Optional[Callable[[int, str, Optional[float]], None]],
                    poll: Optional[Callable[[], None]]) -> Tuple[int, Dict[str, Any], List[Any]]:
        """(request id, header, data) of the next final message (reply or error: header["type"]) about any of
        the requests in flight (request id -> frame index); their progress goes to on_progress with the frame's
        index. poll() runs between reads (it may send a cancel, or raise)."""
        deadline = time.monotonic() + self.timeout
        while True:
            if poll is not None:
                poll()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BgmaskError(TIMEOUT, "the bgmask daemon at %s sent nothing for %g s; it may be hung (stop it"
                                  " and run `bgmask serve`)" % (conn.endpoint, self.timeout))
            message = conn.recv(min(_POLL_S, left))
            if message is None:
                continue
            header = self._decode(message[0])
            rid = header.get("id")
            if not isinstance(rid, int) or isinstance(rid, bool) or rid not in in_flight:  # ours are ints
                if rid is None and header.get("type") == "error":
                    raise _error_from(header)  # the daemon could not read our request at all
                continue  # the cancel's own reply, or a late answer to an abandoned request: not a sign of life
            deadline = time.monotonic() + self.timeout
            self._heard = True
            kind = header.get("type")
            if kind == "progress":
                stage, fraction = _progress(header)
                if on_progress is not None:
                    on_progress(in_flight[rid], stage, fraction)
                continue
            if kind in ("reply", "error"):
                return rid, header, message[1:]
            raise BgmaskError(PROTOCOL_ERROR, "the daemon sent a message of unknown type %r" % (kind,))

    def close(self) -> None:
        """Drop the connection; the next call reconnects (re-reading the runtime file)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if not self._explicit:
                self.endpoint = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------------

    def _call(self, op: str, fields: Dict[str, Any], frames: Sequence[memoryview] = (),
              on_progress: Optional[Callable[[str, Optional[float]], None]] = None,
              cancel: Optional[Callable[[], bool]] = None,
              reply_cap: int = _SMALL_REPLY_CAP) -> Tuple[Dict[str, Any], List[Any]]:
        with self._lock:
            start = op != "shutdown"  # never start a daemon just to stop it
            while True:
                reused = self._conn is not None and not self._fresh
                try:
                    return self._exchange(self._connection(start), op, fields, frames, on_progress, cancel,
                                          reply_cap)
                except BgmaskError as exc:
                    # A connection kept from an earlier call may lead to a daemon that has since exited (and
                    # maybe been restarted elsewhere). If it failed before the daemon said anything about this
                    # request, find the daemon again and try once more (on a fresh connection: no third try).
                    if not (reused and exc.code == CONNECTION_LOST and not self._heard):
                        raise
                finally:
                    self._fresh = False

    def _exchange(self, conn: Any, op: str, fields: Dict[str, Any], frames: Sequence[memoryview],
                  on_progress: Optional[Callable[[str, Optional[float]], None]],
                  cancel: Optional[Callable[[], bool]],
                  reply_cap: int = _SMALL_REPLY_CAP) -> Tuple[Dict[str, Any], List[Any]]:
        """One request and its final answer; reply_cap bounds what a reply frame may claim (and allocate)."""
        conn.max_frame = reply_cap
        self._ids += 1
        rid = self._ids
        self._heard = False
        header = dict(fields, v=PROTOCOL, id=rid, token=self._token or "", op=op)
        try:
            conn.send([self._pack(header)] + list(frames))
            return self._wait(conn, rid, on_progress, cancel if op == "remove" else None, op == "remove")
        except BgmaskError as exc:
            if exc.code in (TIMEOUT, CONNECTION_LOST, PROTOCOL_ERROR):
                self.close()
            raise
        except BaseException:  # a callback raised, or KeyboardInterrupt: the reply would arrive to nobody
            self.close()
            raise

    def _wait(self, conn: Any, rid: int, on_progress: Optional[Callable[[str, Optional[float]], None]],
              cancel: Optional[Callable[[], bool]], cancellable: bool) -> Tuple[Dict[str, Any], List[Any]]:
        cancel_sent = []

        def poll() -> None:
            if cancellable and not cancel_sent and (self._cancel.is_set() or (cancel is not None and cancel())):
                self._send_cancel(conn, rid)
                cancel_sent.append(rid)

        report = None if on_progress is None else (lambda _index, stage, fraction: on_progress(stage, fraction))
        header, data = self._next_final(conn, {rid: 0}, report, poll)[1:]
        if header["type"] == "error":
            raise _error_from(header)
        if cancel_sent:  # the result was ready before our cancel arrived; the user asked to drop it
            raise BgmaskError(CANCELLED, "the request was cancelled")
        return {k: v for k, v in header.items() if k not in ("v", "id", "type")}, data

    def _send_cancel(self, conn: Any, rid: int) -> None:
        self._ids += 1
        conn.send([self._pack({"v": PROTOCOL, "id": self._ids, "token": self._token or "", "op": "cancel",
                               "target": rid})])

    def _decode(self, frame: Any) -> Dict[str, Any]:
        try:
            header = self._unpack(frame)
        except Exception:
            header = None
        if not isinstance(header, dict):
            raise BgmaskError(PROTOCOL_ERROR, "%s sent a message that is not a msgpack map; is it a bgmask daemon?"
                              % self.endpoint)
        return header

    # -- connecting ---------------------------------------------------------------------------------

    def _connection(self, start: bool = True) -> Any:
        if self._conn is not None:
            return self._conn
        if self._explicit:
            self._open(self.endpoint, self._token_arg)
            return self._conn
        info = _read_runtime_file()
        if info is not None:
            try:
                self._open_recorded(info)
                return self._conn
            except BgmaskError as exc:
                if exc.code != NOT_RUNNING:
                    raise
        if not (self.autostart and start):
            raise BgmaskError(NOT_RUNNING, "the bgmask daemon is not running: run `bgmask serve` in a terminal")
        self._start_daemon()
        return self._conn

    def _open_recorded(self, info: Dict[str, Any]) -> None:
        """Connect to the daemon a runtime file names, after checking it speaks our protocol version."""
        protocol = info.get("protocol")
        if isinstance(protocol, int) and protocol != PROTOCOL:
            raise BgmaskError(UNSUPPORTED_VERSION, "the running bgmask daemon (pid %d) speaks protocol %d, but this"
                              " plug-in speaks protocol %d: update bgmask (pip install -U bgmask, then `bgmask install`)"
                              " and restart the daemon (`bgmask stop`, then `bgmask serve`)"
                              % (info["pid"], protocol, PROTOCOL))
        self._open(info["endpoint"], self._token_arg if self._token_arg is not None else info["token"])

    def _open(self, endpoint: str, token: Optional[str]) -> None:
        """Connect and say hello, which proves a bgmask daemon is there and tells us its limits."""
        conn = _connect(self.transport, endpoint, self.timeout, token or "")
        self.endpoint, self._token, self._hello = endpoint, token, {}
        try:
            self._hello = self._exchange(conn, "hello", {}, (), None, None)[0]
        except BaseException:
            conn.close()
            raise
        self._conn, self._fresh = conn, True

    def _start_daemon(self) -> None:
        rdir = private_runtime_dir()
        deadline = time.monotonic() + max(self.timeout, _START_TIMEOUT_S)
        with _SpawnLock(os.path.join(rdir, "spawn.lock"), deadline):
            info = _read_runtime_file()  # whoever held the lock before us may have started it
            if info is not None:
                try:
                    self._open_recorded(info)
                    return
                except BgmaskError as exc:
                    if exc.code != NOT_RUNNING:
                        raise
            command = _daemon_command()
            log_path = os.path.join(rdir, "daemon.log")
            env = dict(os.environ, BGMASK_LOG_FILE=log_path)  # the daemon rotates it (size-capped)
            try:
                log = os.fdopen(open_private(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")
            except OSError as exc:
                raise BgmaskError(NOT_RUNNING, "cannot open the daemon's log %s (%s): remove it, or run `bgmask serve`"
                                  " in a terminal" % (log_path, exc.strerror or exc)) from None
            try:
                with log:
                    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            close_fds=True, env=env, **_detached())
            except OSError as exc:
                raise BgmaskError(NOT_RUNNING, "could not start the bgmask daemon with %s (%s): run `bgmask install`"
                                  " again, or `bgmask serve` in a terminal" % (command, exc)) from None
            while time.monotonic() < deadline:
                info = _read_runtime_file()
                if info is not None:
                    try:
                        self._open_recorded(info)
                        return
                    except BgmaskError as exc:
                        if exc.code != NOT_RUNNING:
                            raise
                elif proc.poll() is not None:
                    raise BgmaskError(NOT_RUNNING, "the bgmask daemon exited with status %s right after starting"
                                      " (log %s: %s); run `bgmask serve` in a terminal to see why"
                                      % (proc.returncode, log_path, _log_tail(log_path)))
                time.sleep(_POLL_S)
        raise BgmaskError(NOT_RUNNING, "the bgmask daemon did not come up within %g s (log %s: %s); run `bgmask"
                          " serve` in a terminal to see why" % (max(self.timeout, _START_TIMEOUT_S), log_path,
                                                                  _log_tail(log_path)))


Box = Tuple[int, int, int, int]


def _remove_fields(width: int, height: int, channels: int, sample_type: str, linear: bool, model: Optional[str],
                   options: Optional[Dict[str, Any]], out_sample_type: str, stride: Optional[int]) -> Dict[str, Any]:
    """The header fields of a remove request (docs/protocol.md), less the envelope."""
    image = {"width": width, "height": height, "channels": channels, "sample_type": sample_type,
             "linear": bool(linear)}
    if stride is not None:
        image["stride"] = stride
    return {"image": image, "model": model, "options": dict(options or {}), "output": {"sample_type": out_sample_type}}


def _reply_cap(width: int, height: int) -> int:
    """The largest reply frame a remove may get: the mask, and at most a colour frame of 3 f32 channels
    (nothing bigger is ever allocated)."""
    return max(_SMALL_REPLY_CAP, width * height * 12)


def context_box(region: Box, padding: float, bounds: Box) -> Box:
    """The rectangle (x, y, w, h) the daemon's model looks at for the options `region` and `padding`
    (docs/protocol.md), clipped to `bounds` (the image). A plugin with a selection sends only these pixels,
    with `region` made relative to them: the daemon then sees the same context and returns the same mask as
    for the whole layer, and only the part that matters crosses the socket."""
    x, y, w, h = region
    pad = int(round(padding * max(w, h)))  # exactly the daemon's rounding, so that nothing it needs is missing
    bx, by, bw, bh = bounds
    x0, y0 = max(bx, x - pad), max(by, y - pad)
    x1, y1 = min(bx + bw, x + w + pad), min(by + bh, y + h + pad)
    return (x0, y0, x1 - x0, y1 - y0)


def decontaminated_pixels(pixels: Any, colours: Any, channels: int, sample_type: str,
                          order: Sequence[int] = (0, 1, 2, 3)) -> bytes:
    """`pixels` (packed, `channels` samples a pixel) with their colour samples replaced by a remove reply's
    decontaminated colours (frame 2: 3 samples a pixel, 1 for gray), so that a layer made from them keeps
    its own alpha. `order[i]` is where protocol channel i sits in `pixels`, for plugins that keep their
    host's layout (Krita stores B, G, R, A). Pure slice copies: no numpy in the editors' Pythons."""
    size = SAMPLE_SIZES[sample_type]
    colour_channels = 3 if channels >= 3 else 1
    src = memoryview(pixels).cast("B")
    count = src.nbytes // (channels * size)
    colours = memoryview(colours).cast("B")
    if colours.nbytes != count * colour_channels * size:
        raise BgmaskError(PROTOCOL_ERROR, "the daemon's decontaminated colours have %d bytes, expected %d"
                          % (colours.nbytes, count * colour_channels * size))
    out = bytearray(src)
    step, colour_step = channels * size, colour_channels * size
    for channel in range(colour_channels):
        for byte in range(size):
            out[order[channel] * size + byte::step] = colours[channel * size + byte::colour_step]
    return bytes(out)


def _limit(hello: Dict[str, Any], key: str) -> Optional[int]:
    """A size limit from hello, or None when the daemon sent none that makes sense."""
    value = hello.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _progress(header: Dict[str, Any]) -> Tuple[str, Optional[float]]:
    """(stage, fraction) of a progress message, typed for the caller's callback; fraction clamped to [0, 1]."""
    stage, fraction = header.get("stage"), header.get("fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))):
        fraction = float("nan")
    if not isinstance(stage, str) or (fraction is not None and fraction != fraction):
        raise BgmaskError(PROTOCOL_ERROR, "the daemon sent a malformed progress message")
    return stage, None if fraction is None else min(1.0, max(0.0, float(fraction)))


def _error_from(header: Dict[str, Any]) -> BgmaskError:
    error = header.get("error")
    if not (isinstance(error, dict) and isinstance(error.get("code"), str)):
        return BgmaskError(PROTOCOL_ERROR, "the daemon sent an error message without an error code")
    return BgmaskError(error["code"], str(error.get("message", error["code"])))


def _check_image(pixels: Any, width: int, height: int, channels: int, sample_type: str,
                 stride: Optional[int]) -> memoryview:
    """The pixels as flat bytes, after the daemon's own checks in its own words (protocol.parse_image), so a
    malformed request fails before hundreds of megabytes are sent."""
    for key, value in (("width", width), ("height", height), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BgmaskError(BAD_IMAGE, "image.%s must be an integer, got %r." % (key, value))
    if width <= 0 or height <= 0:
        raise BgmaskError(BAD_IMAGE, "The image size %dx%d is not valid; both sides must be positive." % (width, height))
    if channels not in CHANNEL_NAMES:
        raise BgmaskError(BAD_IMAGE, "image.channels must be 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA), got %d."
                          % channels)
    if sample_type not in SAMPLE_SIZES:
        raise BgmaskError(BAD_IMAGE, "image.sample_type must be one of u8, u16, f16, f32, got %r." % (sample_type,))
    row = width * channels * SAMPLE_SIZES[sample_type]
    if stride is None:
        stride = row
    elif isinstance(stride, bool) or not isinstance(stride, int) or stride < row:
        raise BgmaskError(BAD_IMAGE, "image.stride must be an integer of at least %d bytes (width x channels x sample"
                          " size), got %r." % (row, stride))
    try:
        view = memoryview(pixels).cast("B")
    except (TypeError, ValueError) as exc:
        raise BgmaskError(BAD_IMAGE, "The pixels must be a contiguous bytes-like object (%s)." % exc) from None
    if view.nbytes not in (stride * height, stride * (height - 1) + row):
        raise BgmaskError(BAD_IMAGE, "The pixel frame has {:,} bytes, but a {}x{} {} {} image with a {}-byte stride"
                          " needs {:,}.".format(view.nbytes, width, height, CHANNEL_NAMES[channels], sample_type,
                                                stride, stride * height))
    return view
