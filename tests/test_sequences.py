"""Frame sequences (docs/protocol.md, "Frame sequences") against a real daemon with U2-Netp: consistent masks
with temporal on, exactly the lone masks with it off, order and field errors, cancel between frames, and the
daemon's sequence state freed when a sequence ends."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import pytest

from conftest import REPO, RunningDaemon
from test_daemon_protocol import Raw, mask_of, photo

sys.path.insert(0, str(REPO / "plugins" / "common"))
import bgmask_client  # noqa: E402

from bgmask.daemon import sequences  # noqa: E402


@pytest.fixture
def raw(daemon: RunningDaemon):
    c = Raw(daemon.endpoint, daemon.token)
    yield c
    c.close()


@pytest.fixture
def client(daemon: RunningDaemon):
    with bgmask_client.Client(daemon.endpoint, daemon.token, timeout=120, autostart=False) as c:
        yield c


def noisy_frames(n: int, size: tuple[int, int] = (320, 320), seed: int = 0) -> tuple[list[bytes], int, int]:
    rgb, w, h = photo("astronaut.jpg", size)
    rng = np.random.default_rng(seed)
    return [np.clip(rgb + rng.normal(0, 3.0, rgb.shape), 0, 255).astype(np.uint8).tobytes() for _ in range(n)], w, h


def send_frame(raw: Raw, pixels: bytes, w: int, h: int, **sequence: Any) -> int:
    return raw.send("remove", pixels, model="u2netp", sequence=sequence,
                    image={"width": w, "height": h, "channels": 3, "sample_type": "u8"})


def finals(raw: Raw, ids: list[int], within: float = 120.0) -> dict[int, tuple[dict, list[bytes]]]:
    """The final messages of requests `ids` (progress skipped; a frame stuck waiting still sends those)."""
    out: dict[int, tuple[dict, list[bytes]]] = {}
    deadline = time.monotonic() + within
    while len(out) < len(ids):
        assert time.monotonic() < deadline, f"no final message for {sorted(set(ids) - set(out))} in {within} s"
        header, data = raw.recv()
        if header["type"] != "progress" and header["id"] in ids:
            out[header["id"]] = (header, data)
    return out


def flicker(masks: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(a.astype(np.float32) - b).mean() / 255.0 for a, b in zip(masks, masks[1:])]))


def live_sequences(raw: Raw) -> int:
    return raw.call("status")[0]["sequences"]


def test_a_still_sequence_gets_consistent_masks_of_the_right_size(client: bgmask_client.Client) -> None:
    frames, w, h = noisy_frames(5)
    progress: list[tuple[int, str]] = []
    on = client.remove_frames(frames, w, h, 3, "u8", model="u2netp",
                              on_progress=lambda i, stage, _f: progress.append((i, stage)))
    off = client.remove_frames(frames, w, h, 3, "u8", model="u2netp", temporal=False)
    on_masks = [np.frombuffer(r.mask, np.uint8).reshape(h, w) for r in on]
    off_masks = [np.frombuffer(r.mask, np.uint8).reshape(h, w) for r in off]
    assert len(on_masks) == 5
    for m in on_masks:  # a real mask: the subject high, the background low
        assert m.max() == 255 and m.min() == 0 and np.median(m[144:240, 64:160]) > 200 and np.median(m[:26, :26]) < 50
    assert flicker(on_masks) < 0.5 * flicker(off_masks)  # measured 0.3x
    assert flicker(on_masks) < 3e-3
    for a, b in zip(on_masks, off_masks):  # the same subject as frame-by-frame masks
        assert np.logical_and(a >= 128, b >= 128).sum() / np.logical_or(a >= 128, b >= 128).sum() > 0.95
    assert {i for i, stage in progress if stage == "refining"} == set(range(5))  # progress for every frame


@pytest.mark.parametrize("temporal", [True, False])
def test_the_next_frame_is_inferred_while_the_previous_one_is_refined(raw: Raw, temporal: bool) -> None:
    # 6 MP frames: the refinement, temporal step and reply of frame k take long enough to be seen overlapping
    # frame k + 1's inference (one inference at a time, as for lone requests)
    rgb, w, h = photo("chelsea.jpg", (3000, 2000))
    ids = [send_frame(raw, rgb.tobytes(), w, h, id="p", index=k, final=k == 2, temporal=temporal) for k in range(3)]
    order: list[tuple[int, str]] = []  # (frame, what) as the messages arrive
    while sum(what in ("reply", "error") for _, what in order) < 3:
        header, _ = raw.recv(timeout=300)
        order.append((ids.index(header["id"]), header.get("stage", header["type"])))
    assert [what for _, what in order if what in ("reply", "error")] == ["reply"] * 3
    for k in (1, 2):  # frame k starts its inference once frame k - 1's is over, before frame k - 1's mask is sent
        assert order.index((k - 1, "refining")) < order.index((k, "inferring")) < order.index((k - 1, "reply"))


def test_temporal_off_gives_exactly_the_masks_of_lone_requests(raw: Raw) -> None:
    frames, w, h = noisy_frames(3, (200, 150), seed=1)
    ids = [send_frame(raw, f, w, h, id="off", index=k, final=k == 2, temporal=False) for k, f in enumerate(frames)]
    got = finals(raw, ids)
    for rid, pixels in zip(ids, frames):
        lone = raw.remove(pixels, w, h, 3)
        assert got[rid][0]["type"] == "reply"
        assert np.array_equal(mask_of(*got[rid]), mask_of(*lone[:2]))


def test_sequence_state_is_freed_on_the_final_frame_and_on_a_restart(raw: Raw) -> None:
    frames, w, h = noisy_frames(2, (96, 96))
    before = live_sequences(raw)
    finals(raw, [send_frame(raw, frames[0], w, h, id="s", index=0)])
    assert live_sequences(raw) == before + 1
    finals(raw, [send_frame(raw, frames[0], w, h, id="s", index=0)])  # frame 0 again: replaces it
    assert live_sequences(raw) == before + 1
    header = finals(raw, [send_frame(raw, frames[1], w, h, id="s", index=1, final=True)])
    assert [h_["type"] for h_, _ in header.values()] == ["reply"]
    assert live_sequences(raw) == before


def test_cancel_between_frames_ends_the_sequence_and_frees_it(raw: Raw) -> None:
    rgb, w, h = photo("chelsea.jpg", (1500, 1000))
    ids = [send_frame(raw, rgb.tobytes(), w, h, id="c", index=k) for k in range(3)]
    first = finals(raw, ids[:1])[ids[0]][0]
    cancel = raw.send("cancel", target=ids[1])
    got = finals(raw, ids[1:] + [cancel])
    assert first["type"] == "reply" and got[cancel][0]["cancelled"] is True
    assert got[ids[1]][0]["error"]["code"] == "cancelled"
    assert got[ids[2]][0]["error"]["code"] == "cancelled"  # the later frame is not computed
    late = finals(raw, [send_frame(raw, rgb.tobytes(), w, h, id="c", index=3)])
    assert next(iter(late.values()))[0]["error"]["code"] == "bad_request"
    assert live_sequences(raw) == 0


def test_client_cancel_stops_between_frames_and_the_client_stays_usable(client: bgmask_client.Client) -> None:
    frames, w, h = noisy_frames(6, (160, 160))
    seen: set[int] = set()

    def progress(index: int, stage: str, _fraction: Any) -> None:
        seen.add(index)
        if index == 2:
            client.cancel()

    with pytest.raises(bgmask_client.BgmaskError) as err:
        client.remove_frames(frames, w, h, 3, "u8", model="u2netp", on_progress=progress)
    assert err.value.code == "cancelled"
    assert max(seen) <= 3  # no frame past the two in flight was sent
    assert client.status()["sequences"] == 0
    assert len(client.remove(frames[0], w, h, 3, "u8", model="u2netp")) == w * h


@pytest.mark.parametrize("sequence", [
    "seq", {"index": 0}, {"id": True, "index": 0}, {"id": "", "index": 0}, {"id": 1.5, "index": 0},
    {"id": "a", "index": -1}, {"id": "a", "index": "0"}, {"id": "a", "index": 0, "final": "yes"},
    {"id": "a", "index": 0, "temporal": 1}, {"id": "a", "index": 0, "fps": 24},
])
def test_malformed_sequence_fields_are_bad_requests(raw: Raw, sequence: Any) -> None:
    frames, w, h = noisy_frames(1, (64, 64))
    header = raw.call("remove", frames[0], model="u2netp", sequence=sequence,
                      image={"width": w, "height": h, "channels": 3, "sample_type": "u8"})[0]
    assert header["type"] == "error" and header["error"]["code"] == "bad_request"
    assert "sequence" in header["error"]["message"]
    assert live_sequences(raw) == 0


def test_frames_out_of_order_after_the_final_or_with_another_temporal_are_refused(raw: Raw) -> None:
    frames, w, h = noisy_frames(1, (64, 64))
    f = frames[0]

    def code(**sequence: Any) -> str:
        header = finals(raw, [send_frame(raw, f, w, h, **sequence)])
        found = next(iter(header.values()))[0]
        return found["error"]["code"] if found["type"] == "error" else "ok"

    assert code(id="never", index=1) == "bad_request"
    assert code(id="o", index=0) == "ok"
    assert code(id="o", index=2) == "bad_request"  # a gap
    assert code(id="o", index=1, temporal=False) == "bad_request"
    assert code(id="o", index=1) == "ok"  # the refused frames left the sequence as it was
    assert code(id="o", index=2, final=True) == "ok"
    assert code(id="o", index=3) == "bad_request"  # after the final frame
    assert live_sequences(raw) == 0


def test_the_daemon_holds_a_bounded_number_of_sequences(raw: Raw) -> None:
    frames, w, h = noisy_frames(1, (48, 48))
    codes = []
    for k in range(sequences.MAX_SEQUENCES + 1):  # one at a time: the job queue's own limit stays out of it
        header = next(iter(finals(raw, [send_frame(raw, frames[0], w, h, id=f"b{k}", index=0)]).values()))[0]
        codes.append(header.get("error", {}).get("code", "ok"))
    assert codes == ["ok"] * sequences.MAX_SEQUENCES + ["busy"]
    assert live_sequences(raw) == sequences.MAX_SEQUENCES
    finals(raw, [send_frame(raw, frames[0], w, h, id=f"b{k}", index=1, final=True) for k in range(sequences.MAX_SEQUENCES)])
    assert live_sequences(raw) == 0


def test_idle_sequences_are_dropped_and_running_ones_kept() -> None:
    table = sequences.SequenceTable(limit=4, idle_s=60.0)
    idle = table.admit(b"a", sequences.SequenceField("idle", 0, False, True))
    table.finish(idle, 0, ok=True)
    busy = table.admit(b"a", sequences.SequenceField("busy", 0, False, True))  # a frame still running
    table.drop_idle(idle.touched + 30)
    assert len(table) == 2
    table.drop_idle(max(idle.touched, busy.touched) + 61)
    assert len(table) == 1 and idle.dropped is not None and busy.dropped is None
    with pytest.raises(Exception) as err:
        table.admit(b"a", sequences.SequenceField("idle", 1, False, True))
    assert getattr(err.value, "code", None) == "bad_request"


def test_a_restarted_sequence_outlives_the_last_frame_of_the_one_it_replaced() -> None:
    table = sequences.SequenceTable()
    old = table.admit(b"a", sequences.SequenceField("r", 0, True, False))  # a one-frame sequence, still running
    table.admit(b"a", sequences.SequenceField("r", 0, False, False))  # frame 0 again: a new sequence
    table.finish(old, 0, ok=True)  # the old frame finishes after all
    assert len(table) == 1
    assert table.admit(b"a", sequences.SequenceField("r", 1, True, False)).expected == 2
