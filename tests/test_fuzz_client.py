"""The stdlib client's own ZMTP and msgpack decoder against a hostile "daemon" (issue 9).

GIMP's and Krita's Pythons have no pyzmq, so plugins/common/bgmask_client.py parses everything the daemon
sends itself. Whatever a peer on the daemon's port sends, a call must end in the client's own BgmaskError
(or a correct result), within a bounded time, and never allocate according to a length nobody checked.
The peer below is a plain TCP server that speaks as much ZMTP as each generated script wants it to."""

from __future__ import annotations

import json
import math
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Optional

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bgmask.client.loader import client_source, load_client
from test_fuzz_daemon import weighted

TIMEOUT = 0.3  # the client's inactivity timeout in these tests: every silence costs this much
HUNG = 15.0  # a call still running after this long counts as hung
TOKEN = "t" * 43

GREETING = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"PLAIN".ljust(20, b"\0") + b"\0" + bytes(31)
MORE, LONG, COMMAND = 0x01, 0x02, 0x04


def frame(body: bytes, flags: int = 0) -> bytes:
    """One ZMTP frame, short or long form as its size needs."""
    if len(body) < 256:
        return bytes([flags, len(body)]) + body
    return bytes([flags | LONG]) + struct.pack(">Q", len(body)) + body


def message(*parts: bytes) -> bytes:
    return b"".join(frame(p, MORE if i < len(parts) - 1 else 0) for i, p in enumerate(parts))


def command(name: bytes, body: bytes = b"") -> bytes:
    return frame(bytes([len(name)]) + name + body, COMMAND)


def ready(socket_type: bytes = b"ROUTER") -> bytes:
    return command(b"READY", b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type)


WELCOME = command(b"WELCOME")  # the PLAIN server's answer to HELLO; sent ahead, the client reads it in turn


def lying_frame(size: int, sent: bytes = b"", flags: int = 0) -> bytes:
    """A long frame header that claims `size` bytes, followed by only `sent` of them."""
    return bytes([flags | LONG]) + struct.pack(">Q", size) + sent


class Peer:
    """The server end of one connection, as a script drives it."""

    def __init__(self, conn: socket.socket, released: threading.Event) -> None:
        self.conn = conn
        self.conn.settimeout(5.0)
        self.buf = b""
        self.released = released  # set when the test is done with this peer

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def greeting(self) -> None:
        self._read(64)

    def request(self) -> list[bytes]:
        """The client's next message (its READY command and other commands skipped)."""
        parts = []
        while True:
            flags = self._read(1)[0]
            size = struct.unpack(">Q", self._read(8))[0] if flags & LONG else self._read(1)[0]
            body = self._read(size)
            if flags & COMMAND:
                continue
            parts.append(body)
            if not flags & MORE:
                return parts

    def request_id(self) -> Any:
        return msgpack.unpackb(self.request()[0], raw=False).get("id")

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)


class HostileDaemon:
    """A TCP listener on loopback whose one connection is handled by `script(peer)`. After the script the
    connection stays open (silent) until the test is done, unless the script closed it."""

    def __init__(self, script: Callable[[Peer], Optional[str]]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(HUNG)
        self.endpoint = "tcp://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.release = threading.Event()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            if self.script(Peer(conn, self.release)) != "close":
                self.release.wait(HUNG)
        except (EOFError, OSError):
            pass  # the client gave up first: fine
        except BaseException as exc:  # a bug in the script itself
            self.error = exc
        finally:
            conn.close()

    def close(self) -> None:
        self.release.set()
        self.listener.close()
        self.thread.join(HUNG)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "HostileDaemon":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.fixture(scope="module")
def bc() -> ModuleType:
    return load_client()


@dataclass
class Outcome:
    result: Any = None
    error: Optional[BaseException] = None
    progress: list = field(default_factory=list)


def call(bc: ModuleType, endpoint: str, timeout: float = TIMEOUT) -> Outcome:
    """A remove of a 2x2 RGB image through the built-in transport, on a thread that must finish."""
    out = Outcome()

    def run() -> None:
        client = bc.Client(endpoint=endpoint, token=TOKEN, timeout=timeout, autostart=False, transport="builtin")
        try:
            out.result = client.remove(bytes(12), 2, 2, 3, "u8", on_progress=lambda s, f: out.progress.append((s, f)))
        except BaseException as exc:  # everything is recorded; the test decides what was allowed
            out.error = exc
        finally:
            client.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(HUNG)
    assert not t.is_alive(), "the client call hung"
    return out


def assert_own_error(bc: ModuleType, out: Outcome) -> None:
    """The call failed with the client's own error type (or succeeded with a correctly sized mask)."""
    if out.error is None:
        assert isinstance(out.result, bytes) and len(out.result) == 4
    else:
        assert isinstance(out.error, bc.BgmaskError), repr(out.error)
        assert isinstance(out.error.code, str) and out.error.code and isinstance(out.error.message, str)


def hello_reply(rid: Any, **fields: Any) -> bytes:
    return message(msgpack.packb({"v": 2, "id": rid, "type": "reply", "protocol": 2, "max_pixels": 1000,
                                  "max_message_bytes": 1 << 20, **fields}))


def handshake(peer: Peer) -> None:
    peer.send(GREETING + WELCOME + ready())
    peer.greeting()


# ------------------------------------------------------------------------------------ msgpack decoder
PACKABLE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=10), inner, max_size=20),
    max_leaves=40,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also holds for NaN floats (msgpack float32 and float64 NaNs decode the same on both sides)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(value=PACKABLE)
def test_decoder_reads_what_msgpack_writes_and_writes_the_same_bytes(bc: ModuleType, value: Any) -> None:
    packed = msgpack.packb(value, use_bin_type=True)
    assert same(bc._unpackb(packed), value)
    assert bc._packb(value) == packed


def _mutations() -> st.SearchStrategy[bytes]:
    """Valid encodings with bytes flipped, cut or inserted, and plain random bytes."""
    def mutate(data: bytes, where: int, how: int, junk: bytes) -> bytes:
        i = where % (len(data) + 1)
        return [data[:i] + junk + data[i:], data[:i], data[:i] + bytes([(data[i] if i < len(data) else 0) ^ 0xFF]) + data[i + 1:]][how]
    return st.one_of(
        st.binary(max_size=300),
        st.builds(mutate, PACKABLE.map(lambda v: msgpack.packb(v, use_bin_type=True)), st.integers(0, 10**6),
                  st.integers(0, 2), st.binary(min_size=1, max_size=9)),
    )


@settings(max_examples=800, deadline=None, derandomize=True, database=None)
@given(data=_mutations())
def test_decoder_refuses_garbage_with_its_own_error_and_agrees_with_msgpack(bc: ModuleType, data: bytes) -> None:
    try:
        reference = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        reference = BaseException
    try:
        ours = bc._unpackb(data)
    except bc._MsgpackError:
        ours = BaseException
    if ours is not BaseException:
        assert reference is not BaseException and same(ours, reference)


@pytest.mark.parametrize("data", [
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdc\xff\xff" + b"\xc0" * 10, b"\xde\xff\xff\xc0",
    b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xffabc", b"\xc5\xff\xff", b"\x91" * 200_000, b"\x81\xc0" * 100_000,
    b"\x9f" + b"\xdd\xff\xff\xff\xff" * 15,
], ids=["array32", "map32", "array16", "map16", "bin32", "str32", "bin16", "deep", "deep-map", "nested-lies"])
def test_lying_lengths_are_refused_without_allocating(bc: ModuleType, data: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(bc._MsgpackError):
            bc._unpackb(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data) + 256 * 1024  # a copy of the input and some bookkeeping, nothing the lengths asked for


# ------------------------------------------------------------------------------------ hostile peers
def _zmtp_noise() -> st.SearchStrategy[bytes]:
    """Wire-level trouble: lying and impossible frame headers, odd commands, random bytes."""
    return st.one_of(
        st.binary(min_size=1, max_size=80),
        st.builds(lying_frame, st.sampled_from([2**63, 2**64 - 1, 2**40, (1 << 24) + 1, 1 << 24, 70000, 1000]),
                  st.binary(max_size=64), st.sampled_from([0, MORE, COMMAND])),
        st.builds(lambda f, b: bytes([f, len(b)]) + b, st.sampled_from([0x08, 0x10, 0x80, 0xFF, COMMAND | MORE]),
                  st.binary(max_size=20)),
        st.just(bytes([COMMAND, 0])),
        st.builds(command, st.sampled_from([b"PING", b"PONG", b"ERROR", b"READY", b"SUBSCRIBE", b""]), st.binary(max_size=30)),
        st.builds(lambda n: bytes([COMMAND, n]) + bytes([255]), st.integers(1, 5)),
    )


def _headers() -> st.SearchStrategy[Callable[[Any], bytes]]:
    """Frame 0 of a daemon message, given the id of the client's request."""
    ids = st.sampled_from(["same", "same", "same", "other", "none", "list"])
    values = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=20),
                       st.binary(max_size=20), st.lists(st.integers(-(2**63), 2**63), max_size=3),
                       st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63), max_size=3))
    kinds = weighted((4, st.sampled_from(["reply", "error", "progress"])), (1, values))
    extras = st.fixed_dictionaries({}, optional={
        "error": st.one_of(st.fixed_dictionaries({"code": st.one_of(st.text(max_size=12), values), "message": values}), values),
        "stage": values, "fraction": st.one_of(st.floats(), values), "max_pixels": values, "max_message_bytes": values,
        "protocol": values, "mask": values,
    })
    envelope = weighted((3, st.fixed_dictionaries({"v": weighted((4, st.just(1)), (1, values)), "type": kinds})), (1, st.just({})))
    fields = st.builds(lambda base, extra: {**base, **extra}, envelope, extras)

    def build(which: str, extra: dict) -> Callable[[Any], bytes]:
        def make(rid: Any) -> bytes:
            chosen = {"same": rid, "other": (rid if isinstance(rid, int) else 0) + 1000, "none": None, "list": [rid]}[which]
            return msgpack.packb({"id": chosen, **extra}, use_bin_type=True)
        return make

    raw = st.one_of(st.binary(max_size=60), st.sampled_from([b"\xdf\xff\xff\xff\xff", b"\x91" * 500, b"\xc1", b""]))
    return weighted((3, st.builds(build, ids, fields)), (1, raw.map(lambda b: (lambda rid: b))))


def _answers() -> st.SearchStrategy[Callable[[Any], bytes]]:
    """What the peer sends after reading one request: messages and wire noise."""
    def messages(header: Callable[[Any], bytes], data: list[bytes]) -> Callable[[Any], bytes]:
        return lambda rid: message(header(rid), *data)
    one = weighted(
        (3, st.builds(messages, _headers(), st.lists(st.one_of(st.binary(max_size=8), st.just(bytes(4))), max_size=2))),
        (1, _zmtp_noise().map(lambda b: (lambda rid: b))),
    )
    return st.lists(one, min_size=0, max_size=4).map(lambda items: (lambda rid: b"".join(i(rid) for i in items)))


@dataclass
class Script:
    """One hostile conversation: greeting, READY, the answer to hello, the answer to remove, and how it ends."""

    greeting: bytes
    ready: bytes
    hello: Optional[Callable[[Any], bytes]]  # None: a correct hello reply
    answer: Callable[[Any], bytes]
    ending: str  # "close" or "silence"

    def __call__(self, peer: Peer) -> Optional[str]:
        peer.send(self.greeting)
        if self.greeting != GREETING:
            return self.ending
        peer.greeting()
        peer.send(WELCOME + self.ready)
        if self.ready != ready():
            return self.ending
        rid = peer.request_id()
        peer.send(self.hello(rid) if self.hello is not None else hello_reply(rid))
        if self.hello is not None:
            return self.ending
        peer.send(self.answer(peer.request_id()))
        return self.ending


def scripts() -> st.SearchStrategy[Script]:
    greetings = weighted((8, st.just(GREETING)), (1, st.one_of(
        st.binary(max_size=80), st.builds(lambda n: GREETING[:n], st.integers(0, 63)),
        st.sampled_from([GREETING.replace(b"PLAIN", b"CURVE"), GREETING.replace(b"PLAIN", b"NULL\0"), GREETING[:10] + b"\x02" + GREETING[11:],
                         b"\xff" + bytes(8) + b"\x7e" + GREETING[10:], b"HTTP/1.1 400 Bad Request\r\n\r\n"]))))
    readies = weighted((8, st.just(ready())), (1, st.one_of(
        st.sampled_from([ready(b"DEALER"), ready(b"PUB"), ready(b""), command(b"READY"),
                         command(b"READY", b"\x0bSocket-Type\xff\xff\xff\xffROUTER"), command(b"READY", b"\x40Socket-Type"),
                         command(b"ERROR", b"\x05nope!"), command(b"ERROR"), frame(b"not a command")]),
        _zmtp_noise())))
    hellos = weighted((4, st.none()), (1, _answers()))
    return st.builds(Script, greetings, readies, hellos, _answers(), st.sampled_from(["close", "close", "close", "silence"]))


@settings(max_examples=250, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(script=scripts())
def test_any_peer_behaviour_ends_in_the_clients_own_error(bc: ModuleType, script: Script) -> None:
    with HostileDaemon(script) as peer:
        out = call(bc, peer.endpoint)
    assert_own_error(bc, out)


@pytest.mark.parametrize("stage", ["ready", "hello", "remove"])
@pytest.mark.parametrize("size", [2**64 - 1, 2**63, 2**40, (1 << 24) + 1])
def test_frames_longer_than_the_client_accepts_are_refused_at_once(bc: ModuleType, stage: str, size: int) -> None:
    def script(peer: Peer) -> None:
        peer.send(GREETING)
        peer.greeting()
        if stage == "ready":
            peer.send(lying_frame(size, flags=COMMAND))
            return
        peer.send(WELCOME + ready())
        if stage == "hello":
            peer.send(lying_frame(size))
            return
        peer.send(hello_reply(peer.request_id()))
        peer.request()
        peer.send(lying_frame(size))

    with HostileDaemon(script) as peer:
        out = call(bc, peer.endpoint, timeout=30.0)  # a long timeout: the refusal must not wait for it
    assert isinstance(out.error, bc.BgmaskError) and out.error.code == "protocol_error", repr(out.error)


@pytest.mark.parametrize("ending, code", [("close", "connection_lost"), ("silence", "timeout")])
def test_a_message_cut_short_is_reported(bc: ModuleType, ending: str, code: str) -> None:
    def script(peer: Peer) -> str:
        handshake(peer)
        peer.send(hello_reply(peer.request_id()))
        rid = peer.request_id()
        peer.send(frame(msgpack.packb({"v": 2, "id": rid, "type": "reply"}), MORE) + lying_frame(70000, bytes(1000)))
        return ending

    with HostileDaemon(script) as peer:
        out = call(bc, peer.endpoint)
    assert isinstance(out.error, bc.BgmaskError) and out.error.code == code, repr(out.error)


@pytest.mark.parametrize("value", ["abc", float("inf"), float("nan"), [1], {"n": 1}, -1, 2**64 - 1, 1e300, True, None])
def test_hostile_limits_in_hello_give_the_clients_own_error_or_a_result(bc: ModuleType, value: Any) -> None:
    def script(peer: Peer) -> None:
        handshake(peer)
        peer.send(hello_reply(peer.request_id(), max_pixels=value, max_message_bytes=value))
        rid = peer.request_id()
        peer.send(message(msgpack.packb({"v": 2, "id": rid, "type": "reply", "mask": {"width": 2, "height": 2}}), bytes(4)))

    with HostileDaemon(script) as peer:
        out = call(bc, peer.endpoint)
    assert_own_error(bc, out)


@pytest.mark.parametrize("fraction", ["abc", [0.5], {"f": 1}, b"\x01", 2**64 - 1, float("nan"), -5.0, True])
def test_hostile_progress_gives_the_clients_own_error_or_a_result(bc: ModuleType, fraction: Any) -> None:
    def script(peer: Peer) -> None:
        handshake(peer)
        peer.send(hello_reply(peer.request_id()))
        rid = peer.request_id()
        peer.send(message(msgpack.packb({"v": 2, "id": rid, "type": "progress", "stage": ["x"], "fraction": fraction})))
        peer.send(message(msgpack.packb({"v": 2, "id": rid, "type": "reply"}), bytes(4)))

    with HostileDaemon(script) as peer:
        out = call(bc, peer.endpoint)
    assert_own_error(bc, out)
    for stage, f in out.progress:  # what reaches the plugin's callback is well-typed
        assert isinstance(stage, str) and (f is None or (isinstance(f, float) and 0.0 <= f <= 1.0))


def _flood(rid_offset: Optional[int]) -> Callable[[Peer], None]:
    """After hello, send something every 50 ms that is not about the request: ZMTP PINGs (rid_offset None) or
    progress for another request id."""
    def script(peer: Peer) -> None:
        handshake(peer)
        peer.send(hello_reply(peer.request_id()))
        rid = peer.request_id()
        while not peer.released.is_set():
            if rid_offset is None:
                peer.send(command(b"PING", b"\x00\x00"))
            else:
                peer.send(message(msgpack.packb({"v": 2, "id": rid + rid_offset, "type": "progress", "stage": "queued",
                                                 "fraction": None})))
            time.sleep(0.05)
    return script


@pytest.mark.parametrize("rid_offset", [None, 1000], ids=["ping-flood", "other-request"])
def test_traffic_about_nothing_we_asked_cannot_keep_a_call_waiting(bc: ModuleType, rid_offset: Optional[int]) -> None:
    """The timeout is an inactivity timeout: only news about our own request counts as activity."""
    with HostileDaemon(_flood(rid_offset)) as peer:
        out = call(bc, peer.endpoint, timeout=1.0)
    assert isinstance(out.error, bc.BgmaskError) and out.error.code == "timeout", repr(out.error)


CHILD = """
import importlib.util, json, resource, sys
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
spec = importlib.util.spec_from_file_location("bgmask_client", sys.argv[1])
bc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)
client = bc.Client(endpoint=sys.argv[2], token="t" * 43, timeout=2.0, autostart=False, transport="builtin")
try:
    client.remove(bytes(12), 2, 2, 3, "u8")
    print(json.dumps({"type": "result"}))
except BaseException as exc:
    print(json.dumps({"type": type(exc).__name__, "code": getattr(exc, "code", None)}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS bounds the child's memory on Linux")
@pytest.mark.parametrize("max_pixels", [1000, 2**40], ids=["sane-hello", "boastful-hello"])
def test_a_frame_length_is_never_allocated_before_it_is_checked(max_pixels: int) -> None:
    """A reply frame that claims 6 GiB for the mask of a 2x2 image, in a process allowed 1 GiB: whatever hello
    said about the daemon's limits, the claim must be refused (or the bytes awaited), not allocated."""
    def script(peer: Peer) -> str:
        handshake(peer)
        peer.send(hello_reply(peer.request_id(), max_pixels=max_pixels))
        rid = peer.request_id()
        peer.send(frame(msgpack.packb({"v": 2, "id": rid, "type": "reply"}), MORE) + lying_frame(6 << 30, bytes(100)))
        return "close"

    with HostileDaemon(script) as peer:
        done = subprocess.run([sys.executable, "-c", CHILD, str(client_source()), peer.endpoint, str(1 << 30)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["type"] == "BgmaskError" and result["code"] in ("protocol_error", "connection_lost"), result
