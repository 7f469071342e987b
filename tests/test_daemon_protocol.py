"""Protocol v1 against a real daemon, spoken with pyzmq + msgpack directly (independent of our client)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import msgpack
import numpy as np
import pytest
import zmq

from conftest import RunningDaemon, authenticate, load_rgb, start_daemon

SAMPLE = {"u8": np.uint8, "u16": np.dtype("<u2"), "f16": np.dtype("<f2"), "f32": np.dtype("<f4")}


class Raw:
    """A DEALER socket speaking the protocol by hand."""

    def __init__(self, endpoint: str, token: Optional[str], handshake: Optional[str] = None) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        authenticate(self.sock, handshake if handshake is not None else token or "")
        self.sock.connect(endpoint)
        self.token = token
        self.next_id = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, op: str, *data: Any, **fields: Any) -> int:
        self.next_id += 1
        header = {"v": 2, "id": self.next_id, "op": op, **fields}
        if self.token is not None and "token" not in fields:
            header["token"] = self.token
        self.sock.send_multipart([msgpack.packb(header), *data])
        return self.next_id

    def recv(self, timeout: float = 60.0) -> tuple[dict, list[bytes]]:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no answer from the daemon")
        frames = self.sock.recv_multipart()
        return msgpack.unpackb(frames[0]), frames[1:]

    def final(self, rid: Optional[int] = None, timeout: float = 60.0) -> tuple[dict, list[bytes], list[dict]]:
        """Collect progress messages until the final reply/error (for `rid` if given)."""
        progress = []
        while True:
            header, data = self.recv(timeout)
            if rid is not None and header.get("id") != rid:
                continue
            if header["type"] == "progress":
                progress.append(header)
                continue
            return header, data, progress

    def call(self, op: str, *data: Any, **fields: Any) -> tuple[dict, list[bytes], list[dict]]:
        return self.final(self.send(op, *data, **fields))

    def remove(self, pixels: bytes, width: int, height: int, channels: int, sample_type: str = "u8",
               out: str = "u8", model: str = "u2netp", **image: Any) -> tuple[dict, list[bytes], list[dict]]:
        return self.call("remove", pixels, model=model, output={"sample_type": out},
                         image={"width": width, "height": height, "channels": channels, "sample_type": sample_type, **image})


@pytest.fixture
def raw(daemon: RunningDaemon):
    c = Raw(daemon.endpoint, daemon.token)
    yield c
    c.close()


def mask_of(header: dict, data: list[bytes]) -> np.ndarray:
    m = header["mask"]
    return np.frombuffer(data[0], dtype=SAMPLE[m["sample_type"]]).reshape(m["height"], m["width"])


def photo(name: str = "astronaut.jpg", size: Optional[tuple[int, int]] = None) -> tuple[np.ndarray, int, int]:
    data, w, h = load_rgb(name, size)
    return np.frombuffer(data, np.uint8).reshape(h, w, 3), w, h


# ------------------------------------------------------------------ handshake and envelope
def test_hello_reports_version_limits_and_provider(raw: Raw) -> None:
    header, data, _ = raw.call("hello")
    assert header["type"] == "reply" and header["id"] == 1 and data == []
    assert header["protocol"] == 2 and header["provider"] == "CPUExecutionProvider" and header["device"] == "cpu"
    assert header["max_message_bytes"] > 0 and "remove" in header["capabilities"]
    assert header["default_model"] == "u2netp"


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_requests_without_the_token_are_refused_and_do_no_work(daemon: RunningDaemon, token: Optional[str]) -> None:
    c = Raw(daemon.endpoint, None, handshake=daemon.token)  # a token holder's buggy header
    try:
        fields = {} if token is None else {"token": token}
        rid = c.send("remove", b"\0" * 12, model="u2netp", image={"width": 2, "height": 2, "channels": 3, "sample_type": "u8"}, **fields)
        header, data, progress = c.final(rid)
        assert header["error"]["code"] == "unauthorized" and data == [] and progress == []
        assert "token" in header["error"]["message"]
    finally:
        c.close()


def test_version_mismatch_is_a_clear_error(raw: Raw) -> None:
    raw.sock.send_multipart([msgpack.packb({"v": 3, "id": 9, "op": "hello", "token": raw.token})])
    header, _ = raw.recv()
    assert header["type"] == "error" and header["error"]["code"] == "unsupported_version"
    assert header["protocol"] == 2 and header["id"] == 9


@pytest.mark.parametrize("frame0", [b"", b"\xc1", b"\x93\x01\x02\x03", msgpack.packb("hello"), msgpack.packb({1: 2})])
def test_garbage_headers_get_bad_request(raw: Raw, frame0: bytes) -> None:
    raw.sock.send_multipart([frame0])
    header, _ = raw.recv()
    assert header["type"] == "error" and header["error"]["code"] == "bad_request" and header["id"] is None
    assert raw.call("hello")[0]["type"] == "reply"  # still serving


def test_unknown_op_and_unknown_model(raw: Raw) -> None:
    assert raw.call("explode")[0]["error"]["code"] == "unknown_op"
    header, _, _ = raw.remove(b"\0" * 12, 2, 2, 3, model="no-such-model")
    assert header["error"]["code"] == "unknown_model" and "u2netp" in header["error"]["message"]


@pytest.mark.parametrize("image, frames, code", [
    ({"width": 0, "height": 4, "channels": 3, "sample_type": "u8"}, [b""], "bad_image"),
    ({"width": -3, "height": 4, "channels": 3, "sample_type": "u8"}, [b""], "bad_image"),
    ({"width": 4, "height": 4, "channels": 5, "sample_type": "u8"}, [b"\0" * 80], "bad_image"),
    ({"width": 4, "height": 4, "channels": 3, "sample_type": "u32"}, [b"\0" * 192], "bad_image"),
    ({"width": 4, "height": 4, "channels": 3, "sample_type": "u8"}, [b"\0" * 47], "bad_image"),   # truncated
    ({"width": 4, "height": 4, "channels": 3, "sample_type": "u8"}, [b"\0" * 49], "bad_image"),   # too long
    ({"width": 4, "height": 4, "channels": 3, "sample_type": "u8"}, [], "bad_image"),             # frame missing
    ({"width": 4, "height": 4, "channels": 3, "sample_type": "u8"}, [b"\0" * 48, b"x"], "bad_image"),  # extra frame
    ({"width": 4, "height": 4, "channels": 3, "sample_type": "u8", "stride": 5}, [b"\0" * 48], "bad_image"),
    ({"width": "4", "height": 4, "channels": 3, "sample_type": "u8"}, [b"\0" * 48], "bad_image"),
    ({"width": 100000, "height": 100000, "channels": 4, "sample_type": "f32"}, [b"\0" * 64], "too_large"),
])
def test_bad_images_get_their_error_and_the_daemon_keeps_serving(raw: Raw, image: dict, frames: list, code: str) -> None:
    header, data, _ = raw.call("remove", *frames, model="u2netp", image=image)
    assert header["type"] == "error" and header["error"]["code"] == code, header
    assert data == [] and header["error"]["message"].endswith(".")
    assert raw.call("hello")[0]["type"] == "reply"


def test_ops_without_data_refuse_extra_frames(raw: Raw) -> None:
    assert raw.call("status", b"extra")[0]["error"]["code"] == "bad_request"


# ------------------------------------------------------------------ masks
@pytest.mark.parametrize("width, height", [(1, 1), (7, 3), (3, 7), (1, 500)])
def test_mask_has_exactly_the_input_size(raw: Raw, width: int, height: int) -> None:
    rng = np.random.default_rng(width * 1000 + height)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    header, data, _ = raw.remove(pixels.tobytes(), width, height, 4)
    assert header["type"] == "reply", header
    assert header["mask"] == {"width": width, "height": height, "sample_type": "u8"}
    assert len(data) == 1 and len(data[0]) == width * height


def test_large_6000x4000_mask(raw: Raw) -> None:
    rgb, w, h = photo("chelsea.jpg", (6000, 4000))
    header, data, _ = raw.remove(rgb.tobytes(), w, h, 3)
    mask = mask_of(header, data)
    assert mask.shape == (4000, 6000)
    assert header["timings"]["total"] > 0 and header["provider"] == "CPUExecutionProvider"
    soft = np.count_nonzero((mask > 5) & (mask < 250))
    assert soft > 0, "a full-resolution mask of a photo has soft edge pixels"


def _encode(rgb: np.ndarray, channels: int, sample_type: str) -> bytes:
    f = rgb.astype(np.float32) / 255.0
    gray = (f @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    colour = f if channels >= 3 else gray
    if channels in (2, 4):
        colour = np.concatenate([colour, np.ones_like(gray)], axis=2)
    if sample_type == "u8":
        return np.round(colour * 255).astype(np.uint8).tobytes()
    if sample_type == "u16":
        return np.round(colour * 65535).astype("<u2").tobytes()
    return colour.astype(SAMPLE[sample_type]).tobytes()


@pytest.mark.parametrize("sample_type", ["u8", "u16", "f16", "f32"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_every_channel_count_and_sample_type_gives_the_same_subject(raw: Raw, channels: int, sample_type: str) -> None:
    rgb, w, h = photo("astronaut.jpg", (256, 256))
    header, data, _ = raw.remove(_encode(rgb, channels, sample_type), w, h, channels, sample_type)
    assert header["type"] == "reply", header
    mask = mask_of(header, data).astype(np.float32) / 255
    reference = mask_of(*raw.remove(_encode(rgb, 1 if channels < 3 else 3, "u8"), w, h, 1 if channels < 3 else 3)[:2])
    # same picture in another precision or layout -> nearly the same mask
    assert np.mean(np.abs(mask - reference / 255.0)) < 0.02


@pytest.mark.parametrize("name, subject_box", [
    ("astronaut.jpg", (0.45, 0.75, 0.2, 0.5)),  # y0, y1, x0, x1 as fractions: her suit
    ("chelsea.jpg", (0.35, 0.8, 0.35, 0.65)),     # the cat's face
])
def test_real_subject_is_high_and_background_low(raw: Raw, name: str, subject_box: tuple) -> None:
    rgb, w, h = photo(name)
    mask = mask_of(*raw.remove(rgb.tobytes(), w, h, 3, out="f32")[:2])
    y0, y1, x0, x1 = (int(subject_box[0] * h), int(subject_box[1] * h), int(subject_box[2] * w), int(subject_box[3] * w))
    assert mask.dtype == np.dtype("<f4") and 0.0 <= mask.min() and mask.max() <= 1.0
    assert np.median(mask[y0:y1, x0:x1]) > 0.8
    corner = max(2, min(w, h) // 12)
    corners = [mask[:corner, :corner], mask[:corner, -corner:]]
    assert max(float(np.median(c)) for c in corners) < 0.2


def test_output_sample_types_agree_within_quantisation(raw: Raw) -> None:
    rgb, w, h = photo("chelsea.jpg")
    masks = {t: mask_of(*raw.remove(rgb.tobytes(), w, h, 3, out=t)[:2]).astype(np.float64) for t in ("u8", "u16", "f32")}
    assert np.max(np.abs(masks["u8"] / 255 - masks["f32"])) <= 0.5 / 255 + 1e-6
    assert np.max(np.abs(masks["u16"] / 65535 - masks["f32"])) <= 0.5 / 65535 + 1e-6


def test_fully_transparent_pixels_stay_zero(raw: Raw) -> None:
    rgb, w, h = photo("astronaut.jpg", (200, 200))
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    rgba[80:120, 80:120, 3] = 0  # a transparent hole in the subject
    mask = mask_of(*raw.remove(rgba.tobytes(), w, h, 4)[:2])
    assert np.all(mask[80:120, 80:120] == 0)
    assert mask[60:140, 60:140].max() > 200


def test_row_stride_padding_is_honoured(raw: Raw) -> None:
    rgb, w, h = photo("chelsea.jpg", (301, 200))
    padded = np.zeros((h, w * 3 + 13), np.uint8)
    padded[:, : w * 3] = rgb.reshape(h, w * 3)
    packed_mask = mask_of(*raw.remove(rgb.tobytes(), w, h, 3)[:2])
    padded_mask = mask_of(*raw.remove(padded.tobytes(), w, h, 3, stride=w * 3 + 13)[:2])
    assert np.array_equal(packed_mask, padded_mask)


def test_linear_input_is_encoded_for_the_model(raw: Raw) -> None:
    rgb, w, h = photo("astronaut.jpg", (256, 256))
    srgb = rgb.astype(np.float32) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype("<f4")
    as_srgb = mask_of(*raw.remove(srgb.astype("<f4").tobytes(), w, h, 3, "f32")[:2]).astype(np.float32) / 255
    as_linear = mask_of(*raw.remove(linear.tobytes(), w, h, 3, "f32", linear=True)[:2]).astype(np.float32) / 255
    misread = mask_of(*raw.remove(linear.tobytes(), w, h, 3, "f32", linear=False)[:2]).astype(np.float32) / 255
    # declared linear -> the model sees the same picture; the same bytes read as sRGB would look dark and differ
    assert np.mean(np.abs(as_srgb - as_linear)) < 0.5 * np.mean(np.abs(as_srgb - misread))
    assert np.mean(np.abs(as_srgb - as_linear)) < 0.05


def test_progress_streams_stages_before_the_reply(raw: Raw) -> None:
    rgb, w, h = photo("chelsea.jpg")
    header, _, progress = raw.remove(rgb.tobytes(), w, h, 3)
    stages = [p["stage"] for p in progress]
    assert header["type"] == "reply"
    assert stages[0] == "queued" and "inferring" in stages and "refining" in stages
    assert all(p["id"] == header["id"] for p in progress)


# ------------------------------------------------------------------ concurrency, cancel, busy
def test_two_clients_at_once_each_get_their_own_mask(daemon: RunningDaemon) -> None:
    results: dict[str, Any] = {}

    def work(name: str, size: tuple[int, int]) -> None:
        c = Raw(daemon.endpoint, daemon.token)
        try:
            rgb, w, h = photo(name, size)
            results[name] = [mask_of(*c.remove(rgb.tobytes(), w, h, 3)[:2]).shape for _ in range(3)]
        finally:
            c.close()

    threads = [threading.Thread(target=work, args=("astronaut.jpg", (320, 240))),
               threading.Thread(target=work, args=("chelsea.jpg", (451, 300)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {"astronaut.jpg": [(240, 320)] * 3, "chelsea.jpg": [(300, 451)] * 3}


def test_cancel_a_queued_request(raw: Raw) -> None:
    rgb, w, h = photo("chelsea.jpg", (3000, 2000))
    image = {"width": w, "height": h, "channels": 3, "sample_type": "u8"}
    first = raw.send("remove", rgb.tobytes(), model="u2netp", image=image)
    second = raw.send("remove", rgb.tobytes(), model="u2netp", image=image)
    cancel = raw.send("cancel", target=second)
    finals: dict[int, dict] = {}
    while len(finals) < 3:
        header, _ = raw.recv()
        if header["type"] != "progress":
            finals[header["id"]] = header
    assert finals[cancel]["cancelled"] is True
    assert finals[second]["error"]["code"] == "cancelled"
    assert finals[first]["type"] == "reply"


def test_cancel_unknown_target_says_so(raw: Raw) -> None:
    assert raw.call("cancel", target=12345)[0]["cancelled"] is False


# ------------------------------------------------------------------ lifecycle (own daemons)
def test_runtime_file_is_private_and_removed_on_sigterm(isolated_dirs: dict) -> None:
    d = start_daemon(isolated_dirs, "--default-model", "u2netp", "--preload-delay", "-1")
    record = json.loads(d.runtime_file.read_text())
    assert stat.S_IMODE(d.runtime_file.stat().st_mode) == 0o600
    assert record["pid"] == d.pid and record["protocol"] == 2 and record["endpoint"].startswith("tcp://127.0.0.1:")
    assert len(record["token"]) >= 32
    assert d.stop() == 0
    assert not d.runtime_file.exists()
    again = start_daemon(isolated_dirs, "--default-model", "u2netp", "--preload-delay", "-1")
    try:
        assert json.loads(again.runtime_file.read_text())["token"] != record["token"]
    finally:
        again.stop()


def test_second_daemon_exits_and_says_why(isolated_dirs: dict) -> None:
    d = start_daemon(isolated_dirs, "--default-model", "u2netp", "--preload-delay", "-1")
    try:
        from conftest import base_env

        second = subprocess.run([sys.executable, "-m", "bgmask", "serve"], env=base_env(isolated_dirs),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 3
        assert "already running" in second.stderr and str(d.pid) in second.stderr
        assert json.loads(d.runtime_file.read_text())["pid"] == d.pid
    finally:
        d.stop()


def test_stale_runtime_file_is_replaced(isolated_dirs: dict) -> None:
    runtime_file = Path(isolated_dirs["BGMASK_RUNTIME_DIR"]) / "daemon.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runtime_file.write_text(json.dumps({"endpoint": "tcp://127.0.0.1:1", "token": "x", "pid": dead.pid, "protocol": 2}))
    d = start_daemon(isolated_dirs, "--default-model", "u2netp", "--preload-delay", "-1")
    try:
        assert json.loads(runtime_file.read_text())["pid"] == d.pid
    finally:
        d.stop()


def test_shutdown_answers_waiting_clients_then_exits(isolated_dirs: dict) -> None:
    d = start_daemon(isolated_dirs, "--default-model", "u2netp", "--preload-delay", "-1")
    c = Raw(d.endpoint, d.token)
    try:
        rgb, w, h = photo("chelsea.jpg", (2000, 1400))
        image = {"width": w, "height": h, "channels": 3, "sample_type": "u8"}
        running = c.send("remove", rgb.tobytes(), model="u2netp", image=image)
        waiting = c.send("remove", rgb.tobytes(), model="u2netp", image=image)
        stop = c.send("shutdown")
        finals: dict[int, dict] = {}
        while len(finals) < 3:
            header, _ = c.recv()
            if header["type"] != "progress":
                finals[header["id"]] = header
        assert finals[stop]["type"] == "reply"
        assert finals[running]["type"] == "reply" or finals[running]["error"]["code"] == "cancelled"
        assert finals[waiting]["type"] == "error" and finals[waiting]["error"]["code"] == "cancelled"
        assert d.proc.wait(30) == 0
        assert not d.runtime_file.exists()
    finally:
        c.close()
        d.stop()


def test_busy_when_the_queue_is_full_and_oversized_frames_are_dropped(isolated_dirs: dict) -> None:
    d = start_daemon(isolated_dirs, "--default-model", "u2netp", "--queue-limit", "1", "--max-message-bytes", "2000000")
    c = Raw(d.endpoint, d.token)
    try:
        rgb, w, h = photo("chelsea.jpg", (800, 600))
        image = {"width": w, "height": h, "channels": 3, "sample_type": "u8"}
        ids = [c.send("remove", rgb.tobytes(), model="u2netp", image=image) for _ in range(4)]
        codes = {}
        while len(codes) < 4:
            header, _ = c.recv()
            if header["type"] != "progress":
                codes[header["id"]] = header.get("error", {}).get("code", "ok")
        assert codes[ids[0]] == "ok" and "busy" in codes.values()
        # declared too large -> too_large; an actual frame over the cap -> connection dropped, daemon unharmed
        big = {"width": 2000, "height": 1000, "channels": 4, "sample_type": "u8"}
        assert c.call("remove", b"\0" * 16, image=big)[0]["error"]["code"] == "too_large"
        c.sock.send_multipart([msgpack.packb({"v": 2, "id": 99, "op": "hello", "token": d.token}), b"\0" * 3_000_000])
        fresh = Raw(d.endpoint, d.token)
        try:
            assert fresh.call("hello")[0]["type"] == "reply"
        finally:
            fresh.close()
        assert d.proc.poll() is None
    finally:
        c.close()
        d.stop()


def test_pull_reports_the_verified_file(raw: Raw) -> None:
    header, data, _ = raw.call("pull", model="u2netp")
    assert header["type"] == "reply" and data == []
    assert header["sha256"] == "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
    assert header["size"] == 4574861 and Path(header["path"]).name == "u2netp.onnx" and header["source"]
    assert raw.call("pull", model="../../etc/passwd")[0]["error"]["code"] == "unknown_model"


def test_sandboxed_editors_get_a_private_copy_of_the_runtime_file(isolated_dirs: dict, tmp_path: Path) -> None:
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    (home / ".var" / "app" / "org.gimp.GIMP").mkdir(parents=True)
    xdg.mkdir(mode=0o700)
    d = start_daemon(dict(isolated_dirs, HOME=str(home), XDG_RUNTIME_DIR=str(xdg)), "--preload-delay", "-1")
    copy = xdg / "app" / "org.gimp.GIMP" / "bgmask" / "daemon.json"
    try:
        assert json.loads(copy.read_text()) == json.loads(d.runtime_file.read_text())
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert not (xdg / "app" / "org.kde.krita").exists(), "no copy for an editor that is not installed"
    finally:
        d.stop()
    assert not copy.exists()


# ------------------------------------------------------------------ options (issue 7) through the daemon
def test_region_mask_is_zero_outside_and_follows_the_subject_inside(raw: Raw) -> None:
    rgb, w, h = photo("chelsea.jpg")
    region = [100, 60, 250, 200]
    header, data, _ = raw.call("remove", rgb.tobytes(), model="u2netp", options={"region": region, "padding": 0.1},
                               image={"width": w, "height": h, "channels": 3, "sample_type": "u8"})
    mask = mask_of(header, data)
    assert mask.shape == (h, w)
    inside = np.zeros_like(mask, dtype=bool)
    inside[60:260, 100:350] = True
    assert mask[~inside].max() == 0
    assert mask[inside].max() == 255 and np.count_nonzero((mask[inside] > 10) & (mask[inside] < 245)) > 0


def test_options_change_the_mask_as_documented(raw: Raw) -> None:
    rgb, w, h = photo("chelsea.jpg")
    image = {"width": w, "height": h, "channels": 3, "sample_type": "u8"}

    def mask(**options: object) -> np.ndarray:
        header, data, _ = raw.call("remove", rgb.tobytes(), model="u2netp", image=image, options=options,
                                   output={"sample_type": "f32"})
        assert header["type"] == "reply", header
        return mask_of(header, data)

    plain, grown, hard = mask(), mask(shift_edge=5.0), mask(hardness=1.0)
    assert np.count_nonzero(grown >= 0.5) > np.count_nonzero(plain >= 0.5)
    soft = lambda m: np.count_nonzero((m > 0.05) & (m < 0.95))  # noqa: E731
    assert 0 < soft(hard) < soft(plain), "hardness steepens the edge but keeps it soft"


@pytest.mark.parametrize("options", [{"hardness": 2}, {"feather": -1}, {"shift_edge": "5"}, {"region": [0, 0, 0, 5]},
                                     {"region": [5000, 0, 10, 10]}, {"sharpen": True}, {"refine": 1},
                                     {"quality": "ultra"}])
def test_bad_options_are_bad_requests(raw: Raw, options: dict) -> None:
    header, _, _ = raw.call("remove", b"\0" * 48, model="u2netp", options=options,
                            image={"width": 4, "height": 4, "channels": 3, "sample_type": "u8"})
    assert header["error"]["code"] == "bad_request"


@pytest.mark.parametrize("channels, sample_type", [(3, "u8"), (4, "u16"), (1, "f32")])
def test_decontaminated_colours_come_back_in_the_input_precision(raw: Raw, channels: int, sample_type: str) -> None:
    rgb, w, h = photo("chelsea.jpg", (226, 150))
    header, data, _ = raw.call("remove", _encode(rgb, channels, sample_type), model="u2netp",
                               options={"decontaminate": True}, output={"sample_type": "f32"},
                               image={"width": w, "height": h, "channels": channels, "sample_type": sample_type})
    assert header["type"] == "reply" and len(data) == 2
    colour_channels = 3 if channels >= 3 else 1
    colours = np.frombuffer(data[1], dtype=SAMPLE[sample_type]).reshape(h, w, colour_channels)
    original = np.frombuffer(_encode(rgb, channels, sample_type), dtype=SAMPLE[sample_type]).reshape(h, w, channels)
    alpha = mask_of(header, data)
    solid = alpha >= 1.0
    assert np.array_equal(colours[solid], original[..., :colour_channels][solid]), "opaque pixels keep their colour"
