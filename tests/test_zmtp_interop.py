"""The client's built-in ZMTP and msgpack code against the real thing: libzmq (pyzmq ROUTER and friends)
and the msgpack package, plus hand-made peers for what libzmq never does (half a frame, a PING, an HTTP
server). The pyzmq transport faces the same peers, so both paths are held to the same errors."""

from __future__ import annotations

import http.server
import math
import socket
import struct
import threading
from types import ModuleType
from typing import Any, Callable, Iterator, List

import msgpack
import pytest
import zmq
import zmq.auth.thread
from hypothesis import given, settings
from hypothesis import strategies as st

import client_suite

bc: ModuleType = client_suite.load_client()
TRANSPORTS = ["builtin", "pyzmq"]
DEALERS = {"builtin": bc._ZmtpDealer, "pyzmq": bc._PyzmqDealer}


# --------------------------------------------------------------------------------------- real libzmq peers

TOKEN = "t0ken"


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A context whose PLAIN servers accept the user bgmask with TOKEN, judged by pyzmq's own ZAP handler
    (libzmq 4.3 ends every PLAIN handshake when no handler answers)."""
    context = zmq.Context()
    auth = zmq.auth.thread.ThreadAuthenticator(context)
    auth.start()
    auth.configure_plain(domain="*", passwords={"bgmask": TOKEN})
    yield context
    auth.stop()
    context.destroy(linger=0)


def bound(ctx: zmq.Context, kind: int, **options: int) -> tuple:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, "tcp://127.0.0.1:%d" % port


def recv_message(dealer: Any, timeout: float = 10.0) -> List[Any]:
    for _ in range(int(timeout / 0.1)):
        message = dealer.recv(0.1)
        if message is not None:
            return message
    raise AssertionError("no message within %g s" % timeout)


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that differ at every offset within a frame and between frames (cheap for hundreds of MB)."""
    block = bytes((i * 31 + seed) % 251 for i in range(251 * 16))
    return (block * (n // len(block) + 1))[:n]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_multipart_messages_both_ways_with_a_pyzmq_router(ctx: zmq.Context, transport: str) -> None:
    router, endpoint = bound(ctx, zmq.ROUTER, PLAIN_SERVER=1)
    dealer = DEALERS[transport](endpoint, 10.0, 1 << 24, token=TOKEN)
    try:
        sizes = [0, 1, 255, 256, 65535, 65536, 65537, 1_000_000]  # short/long frame boundary, copy/no-copy boundary
        frames = [pattern(n, seed) for seed, n in enumerate(sizes)]
        dealer.send([memoryview(f) for f in frames])
        assert router.poll(10_000)
        ident, *received = router.recv_multipart()
        assert received == frames
        router.send_multipart([ident] + frames[::-1])
        assert [bytes(f) for f in recv_message(dealer)] == frames[::-1]
        router.send_multipart([ident, b"single"])
        assert [bytes(f) for f in recv_message(dealer)] == [b"single"]
    finally:
        dealer.close()


def test_a_frame_over_256_mb_round_trips_through_libzmq(ctx: zmq.Context) -> None:
    router, endpoint = bound(ctx, zmq.ROUTER, PLAIN_SERVER=1)
    size = 300 * 1024 * 1024 + 7
    big = pattern(size, 3)

    def echo() -> None:
        if router.poll(120_000):
            router.send_multipart(router.recv_multipart(copy=False), copy=False)

    thread = threading.Thread(target=echo)
    thread.start()
    dealer = bc._ZmtpDealer(endpoint, 60.0, 1 << 30, token=TOKEN)
    try:
        dealer.send([b"header", memoryview(big)])
        header, payload = recv_message(dealer, 120.0)
        assert bytes(header) == b"header" and len(payload) == size and payload == big
    finally:
        dealer.close()
        thread.join()


def test_builtin_dealer_answers_libzmq_heartbeats(ctx: zmq.Context) -> None:
    """A ROUTER with heartbeats drops a peer that does not PONG within the timeout; ours must stay connected."""
    router, endpoint = bound(ctx, zmq.ROUTER, PLAIN_SERVER=1, HEARTBEAT_IVL=100, HEARTBEAT_TIMEOUT=300)
    dealer = bc._ZmtpDealer(endpoint, 10.0, token=TOKEN)
    try:
        dealer.send([b"hi"])
        assert router.poll(10_000)
        ident, _ = router.recv_multipart()
        for _ in range(15):  # 1.5 s: several PINGs, each longer unanswered than the timeout allows
            assert dealer.recv(0.1) is None
        router.send_multipart([ident, b"still there"])
        assert [bytes(f) for f in recv_message(dealer)] == [b"still there"]
    finally:
        dealer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_zmq_socket_that_is_not_a_router_is_a_protocol_error(ctx: zmq.Context, transport: str) -> None:
    _, endpoint = bound(ctx, zmq.PUB)
    client = bc.Client(endpoint=endpoint, token="t", timeout=3.0, autostart=False, transport=transport)
    with pytest.raises(bc.BgmaskError) as err:
        client.hello()
    assert err.value.code == "protocol_error"


def test_builtin_dealer_insists_on_a_router(ctx: zmq.Context) -> None:
    _, endpoint = bound(ctx, zmq.DEALER, PLAIN_SERVER=1)
    with pytest.raises(bc.BgmaskError) as err:
        bc._ZmtpDealer(endpoint, 3.0, token=TOKEN)
    assert err.value.code == "protocol_error" and "DEALER" in err.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nothing_listening_is_not_running(transport: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = bc.Client(endpoint="tcp://127.0.0.1:%d" % port, token="t", timeout=3.0, autostart=False,
                       transport=transport)
    with pytest.raises(bc.BgmaskError) as err:
        client.hello()
    assert err.value.code == "not_running"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_wrong_token_is_refused_in_the_handshake_by_libzmq(ctx: zmq.Context, transport: str) -> None:
    router, endpoint = bound(ctx, zmq.ROUTER, PLAIN_SERVER=1)
    with pytest.raises(bc.BgmaskError) as err:
        DEALERS[transport](endpoint, 5.0, token=TOKEN + "x")
    assert err.value.code == "unauthorized" and "token" in err.value.message
    assert not router.poll(200), "a frame got through a refused handshake"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_null_handshake_router_is_an_old_daemon_to_update(ctx: zmq.Context, transport: str) -> None:
    """A daemon of protocol 1 (NULL mechanism): the new client says what to do instead of hanging."""
    _, endpoint = bound(ctx, zmq.ROUTER)
    with pytest.raises(bc.BgmaskError) as err:
        DEALERS[transport](endpoint, 5.0, token=TOKEN)
    assert err.value.code == "protocol_error" and "update bgmask" in err.value.message
    assert "NULL" in err.value.message or transport == "pyzmq"  # libzmq's event may say less when both ends hang up


def test_an_old_null_client_fails_the_handshake_against_a_plain_router(ctx: zmq.Context) -> None:
    """What a protocol-1 client meets: libzmq ends the handshake at the greeting's mechanism, no frame passes."""
    router, endpoint = bound(ctx, zmq.ROUTER, PLAIN_SERVER=1)
    old = ctx.socket(zmq.DEALER)
    monitor = old.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    try:
        old.connect(endpoint)
        old.send(b"hello from protocol 1")
        assert monitor.poll(5000), "the mismatch was not reported to the old client"
        event = monitor.recv_multipart()[0]
        assert struct.unpack("=I", event[2:6])[0] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        assert not router.poll(200)
    finally:
        old.disable_monitor()
        monitor.close(0)
        old.close(0)


# --------------------------------------------------------------------------------------- hand-made peers

GREETING = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 1]) + b"PLAIN".ljust(20, b"\0") + b"\1" + bytes(31)


def command(name: bytes, body: bytes) -> bytes:
    data = bytes([len(name)]) + name + body
    return bytes([0x04, len(data)]) + data


READY_ROUTER = command(b"READY", b"\x0bSocket-Type" + struct.pack(">I", 6) + b"ROUTER")


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def read_frame(conn: socket.socket) -> tuple:
    flags = recv_exact(conn, 1)[0]
    size = struct.unpack(">Q", recv_exact(conn, 8))[0] if flags & 0x02 else recv_exact(conn, 1)[0]
    return flags, recv_exact(conn, size)


def zmtp_handshake(conn: socket.socket, token: bytes = b"t") -> None:
    """Greet as a PLAIN server ROUTER (RFC 24): HELLO with the token, WELCOME, INITIATE from a DEALER, READY."""
    conn.sendall(GREETING)
    greeting = recv_exact(conn, 64)
    assert greeting[:1] == b"\xff" and greeting[12:32].rstrip(b"\0") == b"PLAIN" and greeting[32] == 0
    flags, body = read_frame(conn)
    assert flags & 0x04 and body == b"\x05HELLO" + b"\x06bgmask" + bytes([len(token)]) + token
    conn.sendall(command(b"WELCOME", b""))
    flags, body = read_frame(conn)
    assert flags & 0x04 and body.startswith(b"\x08INITIATE") and b"DEALER" in body
    conn.sendall(READY_ROUTER)


class RawPeer:
    """One TCP connection served by `script` on a thread; what the script saw is kept in .seen."""

    def __init__(self, script: Callable[[socket.socket, list], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = "tcp://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.seen: list = []
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script: Callable[[socket.socket, list], None]) -> None:
        conn, _ = self.listener.accept()
        with conn:
            try:
                script(conn, self.seen)
            except (ConnectionError, AssertionError) as exc:
                self.seen.append(exc)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_peer_closing_mid_message_is_connection_lost(transport: str) -> None:
    def script(conn: socket.socket, seen: list) -> None:
        zmtp_handshake(conn)
        seen.append(read_frame(conn))  # the client's hello request
        conn.sendall(struct.pack(">BQ", 0x02, 1_000_000) + b"x" * 1000)  # half a frame, then hang up

    peer = RawPeer(script)
    try:
        client = bc.Client(endpoint=peer.endpoint, token="t", timeout=10.0, autostart=False, transport=transport)
        with pytest.raises(bc.BgmaskError) as err:
            client.hello()
        assert err.value.code == "connection_lost"
        flags, body = peer.seen[0]
        assert msgpack.unpackb(body)["op"] == "hello"
    finally:
        peer.close()


def test_builtin_dealer_pongs_with_the_ping_context() -> None:
    def script(conn: socket.socket, seen: list) -> None:
        zmtp_handshake(conn)
        conn.sendall(command(b"PING", b"\x00\x0a" + b"ctx-1234"))
        seen.append(read_frame(conn))
        conn.sendall(b"\x00\x05after")
        seen.append(read_frame(conn))

    peer = RawPeer(script)
    dealer = bc._ZmtpDealer(peer.endpoint, 10.0, token="t")
    try:
        assert [bytes(f) for f in recv_message(dealer)] == [b"after"]
        dealer.send([b"bye"])
        peer.thread.join(10)
        assert peer.seen == [(0x04, b"\x04PONG" + b"ctx-1234"), (0x00, b"bye")]
    finally:
        dealer.close()
        peer.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_http_server_is_a_protocol_error(transport: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = bc.Client(endpoint="tcp://127.0.0.1:%d" % server.server_address[1], token="t", timeout=1.5,
                           autostart=False, transport=transport)
        with pytest.raises(bc.BgmaskError) as err:
            client.hello()
        assert err.value.code == "protocol_error"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_peer_that_answers_in_another_protocol_is_a_protocol_error(transport: str) -> None:
    def script(conn: socket.socket, seen: list) -> None:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    peer = RawPeer(script)
    try:
        client = bc.Client(endpoint=peer.endpoint, token="t", timeout=5.0, autostart=False, transport=transport)
        with pytest.raises(bc.BgmaskError) as err:
            client.hello()
        assert err.value.code == "protocol_error"
    finally:
        peer.close()


def test_a_router_that_does_not_speak_msgpack_is_a_protocol_error() -> None:
    def script(conn: socket.socket, seen: list) -> None:
        zmtp_handshake(conn)
        read_frame(conn)
        conn.sendall(b"\x00\x03\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
        recv_exact(conn, 1)

    peer = RawPeer(script)
    try:
        client = bc.Client(endpoint=peer.endpoint, token="t", timeout=5.0, autostart=False, transport="builtin")
        with pytest.raises(bc.BgmaskError) as err:
            client.hello()
        assert err.value.code == "protocol_error"
    finally:
        peer.close()


# --------------------------------------------------------------------------------------- msgpack subset

EDGE_INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
             -1, -31, -32, -33, -127, -128, -129, -32767, -32768, -32769, -2**31, -2**31 - 1, -2**63]
EDGE_LENGTHS = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536]
EDGE_VALUES: List[Any] = (
    [None, True, False, 0.0, -0.0, 1.5, -2.25e-300, 1.7976931348623157e308, math.inf, -math.inf]
    + EDGE_INTS
    + ["é" * n if n < 1000 else "x" * n for n in EDGE_LENGTHS]
    + [bytes(n) for n in EDGE_LENGTHS]
    + [list(range(n)) for n in (0, 15, 16, 65536)]
    + [{str(i): i for i in range(n)} for n in (0, 15, 16, 65536)]
    + [{"image": {"width": 6000, "height": 4000, "linear": False}, "model": None, "stride": [1, [2, [3, {"x": b""}]]]}]
)


@pytest.mark.parametrize("value", EDGE_VALUES, ids=lambda v: type(v).__name__ + str(len(v) if hasattr(v, "__len__") else v))
def test_every_type_round_trips_against_the_msgpack_package(value: Any) -> None:
    packed = bc._packb(value)
    assert packed == msgpack.packb(value, use_bin_type=True), "not the encoding msgpack itself would choose"
    assert msgpack.unpackb(packed, raw=False, strict_map_key=False) == value
    assert bc._unpackb(msgpack.packb(value, use_bin_type=True)) == value


def test_nan_and_float32_decode_like_msgpack() -> None:
    assert math.isnan(bc._unpackb(msgpack.packb(math.nan)))
    for x in (0.5, -3.25, 1e-3, 3.4e38):
        packed = msgpack.packb(x, use_single_float=True)
        assert packed[0] == 0xCA and bc._unpackb(packed) == msgpack.unpackb(packed)


def test_tuples_and_buffers_pack_as_arrays_and_bin() -> None:
    assert msgpack.unpackb(bc._packb((1, (2, 3)))) == [1, [2, 3]]
    assert msgpack.unpackb(bc._packb(bytearray(b"ab"))) == b"ab"
    assert msgpack.unpackb(bc._packb(memoryview(b"\x00" * 300))) == b"\x00" * 300


def test_unpackable_values_are_refused() -> None:
    for value in (2**64, -2**63 - 1, object(), {1.5j: 1}):
        with pytest.raises((TypeError, ValueError, OverflowError)):
            bc._packb(value)
    nested: Any = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(ValueError):
        bc._packb(nested)


HOSTILE = {
    "empty": b"",
    "truncated int": b"\xcd\x01",
    "truncated str": b"\xa5abc",
    "str32 claims 4 GB": b"\xdb\xff\xff\xff\xff" + b"x" * 10,
    "array32 claims 4 G items": b"\xdd\xff\xff\xff\xff\xc0",
    "map32 claims more pairs than bytes": b"\xdf\x00\x00\x00\x03\xc0\xc0\xc0\xc0",
    "bin16 longer than data": b"\xc5\x01\x00" + b"\x00" * 100,
    "never-used byte 0xc1": b"\xc1",
    "ext type": b"\xd4\x01\x00",
    "ext8": b"\xc7\x01\x05\x00",
    "invalid utf-8": b"\xa2\xff\xfe",
    "stray bytes": b"\xc0\xc0",
    "array as map key": b"\x81\x90\xc0",
    "map as map key": b"\x81\x80\xc0",
    "nesting bomb": b"\x91" * 100_000 + b"\xc0",
    "map nesting bomb": b"\x81\xa1k" * 10_000 + b"\xc0",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_msgpack_is_refused_cleanly(name: str) -> None:
    with pytest.raises(ValueError):
        bc._unpackb(HOSTILE[name])


def test_every_prefix_of_a_valid_header_is_refused() -> None:
    packed = msgpack.packb({"v": 2, "id": 7, "type": "reply", "mask": {"width": 6000, "sample_type": "u16"},
                            "timings": {"total": 1.25}, "data": b"\x00" * 300, "list": [1, -70000, None]})
    for end in range(len(packed)):
        with pytest.raises(ValueError):
            bc._unpackb(packed[:end])


scalars = (st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
           | st.floats(allow_nan=False) | st.text() | st.binary())
values = st.recursive(scalars, lambda children: st.lists(children) | st.dictionaries(st.text(), children),
                      max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(values)
def test_property_builtin_and_msgpack_agree_both_ways(value: Any) -> None:
    packed = bc._packb(value)
    assert packed == msgpack.packb(value, use_bin_type=True)
    assert msgpack.unpackb(packed, raw=False) == value
    assert bc._unpackb(msgpack.packb(value, use_bin_type=True)) == value


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_property_random_bytes_decode_or_fail_with_a_value_error(data: bytes) -> None:
    try:
        ours = bc._unpackb(data)
    except ValueError:
        return
    assert ours == msgpack.unpackb(data, raw=False, strict_map_key=False)
