"""The Krita plugin in real Krita 5.2, 5.3 and 6 (Xvfb, Debian chroots: tests/hostapps_targets.py) against a
real daemon. Every test runs once per Krita version; its id names the exact version (`krita-6.0.4.1`).

Three Krita launches per version: one with Krita's pyzmq and msgpack, running every case of
tests/hostapps/krita_remove_test.py but the animation ones, which get a Krita of their own (see
krita_frames), and one with pyzmq and msgpack hidden (the client's built-in ZMTP path), running a few.
The in-Krita script works the docker and dumps layer and mask pixels; here each mask
is compared with this process's own request to the same daemon for the same pixels, reordered from
Krita's layout independently (numpy), which checks channel order, precision, the linear flag and the
geometry at once. Skipped, with the reason, where the chroot cannot be built (not root, no network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import List

import numpy as np
import pytest

from conftest import EXAMPLES, REPO
from hostapps_targets import KRITAS, Target, record_launch

pytestmark = pytest.mark.hostapp

RUNNER = REPO / "tests" / "hostapps" / "run-krita-test.sh"
TEST_PY = REPO / "tests" / "hostapps" / "krita_remove_test.py"
PHOTOS = [EXAMPLES / "astronaut.jpg", EXAMPLES / "chelsea.jpg"]
MASK = "Background Removal (u2netp)"
PHOTO_RECT = [-40, -30, 512, 512]  # astronaut.jpg, moved out of the 400x300 canvas's top-left corner
# case: numpy sample type, channels, stored B,G,R,A (Krita's integer RGBA), linear (Krita's default profile)
NATIVE = {
    "rgba_u8": ("<u1", 4, True, False), "rgba_u16": ("<u2", 4, True, True),
    "rgba_f16": ("<f2", 4, False, True), "rgba_f32": ("<f4", 4, False, True),
    "graya_u8": ("<u1", 2, False, False), "graya_u16": ("<u2", 2, False, True),
    "graya_f16": ("<f2", 2, False, True), "graya_f32": ("<f4", 2, False, True),
}
CONVERTED = ["cmyka_u8", "laba_u16", "xyza_f32"]
NO_PYZMQ_CASES = ["rgba_u8", "graya_f32", "cancel", "daemon_down"]
FRAMES_CASES = ["frames_keyframes", "frames_playback", "frames_refused"]
SAMPLE_TYPES = {"<u1": "u8", "<u2": "u16", "<f2": "f16", "<f4": "f32"}


def closed_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"  # closed again on leaving the block: nothing listens there


@pytest.fixture(scope="module", params=KRITAS, ids=[t.id for t in KRITAS])
def target(request: pytest.FixtureRequest) -> Target:
    """The Krita under test: module-scoped, so pytest runs all tests of one version before the next."""
    return request.param


def run_krita(out: Path, daemon, target: Target, cases: List[str], label: str, hide_pyzmq: bool = False,
              skip: List[str] = ()) -> SimpleNamespace:
    """One Krita launch running `cases` (all but `skip` when empty); skips when the chroot cannot be built."""
    problem = target.problem()
    if problem:
        pytest.skip(f"real Krita {target.series} unavailable: {problem}")
    env = dict(os.environ, **target.env, BGMASK_ENDPOINT=daemon.endpoint, BGMASK_TOKEN=daemon.token,
               KRITA_TEST_DEAD_ENDPOINT=closed_endpoint(), KRITA_TEST_CASES=",".join(cases),
               KRITA_TEST_SKIP=",".join(skip),
               HOSTAPPS_PASSENV="BGMASK_ENDPOINT BGMASK_TOKEN KRITA_TEST_DEAD_ENDPOINT KRITA_TEST_CASES"
                                " KRITA_TEST_SKIP",
               HOSTAPPS_PYTHON=sys.executable)
    if hide_pyzmq:
        env["HOSTAPPS_HIDE_PYZMQ"] = "1"
    start = time.monotonic()
    proc = subprocess.run(["bash", str(RUNNER), str(TEST_PY), str(out), *map(str, PHOTOS)],
                          env=env, capture_output=True, text=True, timeout=1500)
    record_launch(target, label, time.monotonic() - start)
    result_file = out / "result.json"
    assert result_file.exists(), f"no result from Krita (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(result_file.read_text())
    assert "error" not in result, result["error"]
    return SimpleNamespace(out=out, result=result, cases=result["cases"])


@pytest.fixture(scope="module")
def krita(tmp_path_factory, daemon, target: Target) -> SimpleNamespace:
    return run_krita(tmp_path_factory.mktemp(target.id), daemon, target, [], "all but frames", skip=FRAMES_CASES)


@pytest.fixture(scope="module")
def krita_frames(tmp_path_factory, daemon, target: Target) -> SimpleNamespace:
    """The animation cases in a Krita of their own: 5.3.4.1 and 6.0.4.1 crashed at times while a case built its
    animated document after the twenty-odd cases before it (not in the plugin's code)."""
    return run_krita(tmp_path_factory.mktemp(f"{target.id}-frames"), daemon, target, FRAMES_CASES, "frames")


@pytest.fixture(scope="module")
def krita_no_pyzmq(tmp_path_factory, daemon, target: Target) -> SimpleNamespace:
    return run_krita(tmp_path_factory.mktemp(f"{target.id}-no-pyzmq"), daemon, target, NO_PYZMQ_CASES,
                     "without pyzmq", hide_pyzmq=True)


@pytest.fixture(scope="module")
def client(daemon):
    spec = importlib.util.spec_from_file_location("bgmask_client", REPO / "plugins" / "common" / "bgmask_client.py")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with module.Client(endpoint=daemon.endpoint, token=daemon.token) as client:
        yield client


def case(run: SimpleNamespace, name: str) -> dict:
    if name not in run.cases:  # Krita died before the case finished: say how, from the end of its log
        log = (run.out / "krita.log").read_text(errors="replace") if (run.out / "krita.log").exists() else ""
        pytest.fail(f"Krita {run.result.get('krita')} ended before case {name} was done; its log ends:\n{log[-1500:]}")
    rec = run.cases[name]
    assert "error" not in rec, rec["error"]
    return rec


def dumped(run: SimpleNamespace, name: str, rect) -> np.ndarray:
    return np.frombuffer((run.out / name).read_bytes(), np.uint8).reshape(rect[3], rect[2])


def reference(client, run: SimpleNamespace, name: str, rect, dtype="<u1", channels=4, bgra=True, linear=False,
              **options) -> np.ndarray:
    """This process's own request for the layer pixels Krita dumped (Krita layout -> protocol order here)."""
    pixels = np.frombuffer((run.out / name).read_bytes(), dtype).reshape(rect[3], rect[2], channels)
    if bgra:
        pixels = pixels[..., [2, 1, 0, 3]]
    h, w = pixels.shape[:2]
    mask = client.remove(np.ascontiguousarray(pixels).tobytes(), w, h, channels, SAMPLE_TYPES[dtype],
                         linear=linear, model="u2netp", options=options)
    return np.frombuffer(mask, np.uint8).reshape(h, w)


def test_docker_shows_the_connected_daemon_and_its_models(krita, target: Target):
    # the Krita the chroot holds, and the Qt bindings it gives Python plugins (Krita 6: PyQt6)
    assert krita.result["krita"].startswith(target.series + "."), krita.result["krita"]
    assert krita.result["qt"] == ("PyQt6" if target.series == "6" else "PyQt5")
    assert krita.result["client_transport"] == "pyzmq" and krita.result["import_zmq"] == "ok"
    assert krita.result["status_line"].startswith("Connected to bgmask"), krita.result["status_line"]
    assert "cpu" in krita.result["status_line"] and "u2netp" in krita.result["status_line"]
    assert "u2netp" in krita.result["models_offered"] and "isnet-general-use" in krita.result["models_offered"]
    # Quality: "Daemon default" (sends nothing) until the user picks one
    assert krita.result["quality_offered"] == [["Daemon default", ""], ["Fast", "fast"], ["Balanced", "balanced"],
                                               ["Best", "best"]]
    assert krita.result["quality_chosen"] == ""


@pytest.mark.parametrize("name", list(NATIVE))
def test_each_depth_is_sent_in_its_own_precision_and_gets_the_daemons_mask(krita, client, name):
    dtype, channels, bgra, linear = NATIVE[name]
    rec = case(krita, name)
    assert rec["busy_after_click"] and rec["finished"], rec  # the click returned while the request ran
    assert rec["message"].startswith("Added"), rec["message"]
    # the progress bar followed the daemon's stages (the texts are the docker's names for them)
    assert any(p.startswith(("Waiting in", "Loading", "Finding", "Refining")) for p in rec["progress"]), rec["progress"]
    assert rec["children"] == [[MASK, "transparencymask", "A", "U8"]]
    assert rec["layer_rect"] == rec["layer_rect_after"] == PHOTO_RECT
    assert ("g10" in rec["profile"]) is linear
    mask = dumped(krita, f"{name}.mask", PHOTO_RECT)
    expected = reference(client, krita, f"{name}.layer", PHOTO_RECT, dtype, channels, bgra, linear,
                         refine=rec["refine"])
    assert np.array_equal(mask, expected)
    assert mask[200:300, 200:300].mean() > 200 and mask[:40, -40:].mean() < 60  # the astronaut, not the wall
    assert rec["mask_outside_layer"] == 0
    assert rec["children_after_undo"] == []  # one undo removes the mask


@pytest.mark.parametrize("name", CONVERTED)
def test_other_colour_models_are_converted_for_the_request_only(krita, name):
    rec = case(krita, name)
    assert "was converted to RGBA for the request" in rec["message"], rec["message"]
    assert rec["children"] == [[MASK, "transparencymask", "A", "U8"]]
    assert rec["layer_rect_after"] == PHOTO_RECT
    mask = dumped(krita, f"{name}.mask", PHOTO_RECT).astype(int)
    rgba = dumped(krita, "rgba_u8.mask", PHOTO_RECT).astype(int)
    assert np.abs(mask - rgba).mean() < 3   # the same photo, round-tripped through another colour model
    assert rec["children_after_undo"] == []


def test_mask_survives_undo_redo_and_a_kra_round_trip(krita):
    rec = case(krita, "kra_round_trip")
    assert rec["children_after_undo"] == [] and rec["children_after_redo"] == [MASK]
    assert rec["saved"] and rec["reopened_mask_equal"], rec
    assert rec["reopened_layer_rect"] == PHOTO_RECT


def test_selection_limits_the_request_and_the_mask(krita, client):
    rec = case(krita, "selection")
    rect, (sx, sy, sw, sh) = rec["layer_rect"], rec["selection"]
    assert rect == [60, 50, 451, 300]
    mask = dumped(krita, "selection.mask", rect)
    inside = mask[sy - rect[1]:sy - rect[1] + sh, sx - rect[0]:sx - rect[0] + sw]
    assert inside.max() == 255 and mask.sum() == inside.sum()   # nothing outside the selection
    # Only the selection plus its context was sent, as `region` with the default padding: the mask is what the
    # daemon makes of the whole layer with that region.
    expected = reference(client, krita, "selection.layer", rect, region=[sx - rect[0], sy - rect[1], sw, sh],
                         padding=0.15)
    assert np.array_equal(mask, expected)


def test_mask_options_reach_the_daemon_and_kritarc(krita, client):
    """Every number control set in the docker (shift edge +5 among them): the mask is the daemon's own for
    those options, the subject grew by about 5 px all round, and kritarc holds the choices."""
    rec = case(krita, "mask_options")
    assert rec["message"].startswith("Added"), rec["message"]
    options = rec["options"]
    mask = dumped(krita, "mask_options.mask", PHOTO_RECT)
    assert np.array_equal(mask, reference(client, krita, "rgba_u8.layer", PHOTO_RECT, **options))
    plain = dumped(krita, "rgba_u8.mask", PHOTO_RECT) >= 128
    inner = plain[1:-1, 1:-1] & plain[:-2, 1:-1] & plain[2:, 1:-1] & plain[1:-1, :-2] & plain[1:-1, 2:]
    outline = int(plain[1:-1, 1:-1].sum() - inner.sum())
    assert 0.7 < int((mask >= 128).sum() - plain.sum()) / outline / 5 < 1.4
    assert {key: float(text) for key, text in rec["kritarc"].items()} == options
    assert {key: rec["settings_reloaded"][key] for key in options} == options


def test_decontaminated_colours_become_a_new_layer(krita, client):
    """A copy above the 16-bit linear RGBA layer in its colour space, holding the daemon's decontaminated
    colours (in Krita's B,G,R,A order) and the layer's alpha, with the daemon's mask; the layer untouched;
    one undo removes the copy."""
    rec = case(krita, "decontaminated")
    assert rec["message"].startswith("Added"), rec["message"]
    assert rec["group_children"] == ["subject", "subject (decontaminated)"]
    assert rec["layer_untouched"] and rec["layer_children"] == []
    assert rec["copy_space"][:2] == ["RGBA", "U16"] and "g10" in rec["copy_space"][2]
    assert rec["copy_children"] == [[MASK, "transparencymask"]]
    x, y, w, h = rec["layer_rect"]
    source = np.frombuffer((krita.out / "decontaminated.layer").read_bytes(), "<u2").reshape(h, w, 4)
    rgba = source[..., [2, 1, 0, 3]]
    reply = client.remove_full(np.ascontiguousarray(rgba).tobytes(), w, h, 4, "u16", linear=True, model="u2netp",
                               options={"decontaminate": True})
    colours = np.frombuffer(reply.extra[0], "<u2").reshape(h, w, 3)
    copy = np.frombuffer((krita.out / "decontaminated.copy").read_bytes(), "<u2").reshape(h, w, 4)
    assert np.array_equal(copy, np.dstack([colours[..., ::-1], source[..., 3]]))   # stored B,G,R,A
    assert not np.array_equal(copy, source), "no edge colour changed"
    assert dumped(krita, "decontaminated.mask", rec["layer_rect"]).tobytes() == reply.mask
    assert rec["group_children_after_undo"] == ["subject"]


def test_selection_output_replaces_the_selection_with_the_soft_mask(krita):
    rec = case(krita, "output_selection")
    assert rec["has_selection"] and rec["layer_children"] == []
    new_nodes = [n for n in rec["tree_after"][2] if n not in rec["tree_before"][2]]
    assert [n[1] for n in new_nodes] in ([], ["selectionmask"])   # Krita keeps the global selection as a node
    selection = dumped(krita, "output_selection.mask", PHOTO_RECT)
    assert np.array_equal(selection, dumped(krita, "rgba_u8.mask", PHOTO_RECT))
    assert len(np.unique(selection)) > 100  # soft, not thresholded


def test_new_layer_output_adds_a_masked_copy_above_in_one_undo_step(krita):
    rec = case(krita, "output_layer")
    assert rec["group_children"] == ["subject", "subject (background removed)"]
    assert rec["layer_children"] == [] and rec["copy_pixels_equal"]
    assert rec["copy_children"] == [[MASK, "transparencymask"]]
    assert np.array_equal(dumped(krita, "output_layer.mask", PHOTO_RECT), dumped(krita, "rgba_u8.mask", PHOTO_RECT))
    assert rec["group_children_after_undo"] == ["subject"]


def test_layer_menu_action_does_what_the_button_does(krita):
    rec = case(krita, "menu_action")
    assert rec["in_layer_menu"]
    assert rec["children"] == [[MASK, "transparencymask"]], rec


def test_unsupported_layer_is_refused_and_the_document_untouched(krita):
    rec = case(krita, "unsupported_layer")
    assert "group layer" in rec["message"] and rec["message"].startswith("Error:"), rec["message"]
    assert rec["error_boxes"] and "group layer" in rec["error_boxes"][0]
    assert rec["untouched"], rec["fingerprint"]


def test_model_the_daemon_does_not_know_is_reported_and_the_document_untouched(krita):
    rec = case(krita, "unknown_model")
    assert "[unknown_model]" in rec["message"] and rec["error_boxes"], rec
    assert rec["untouched"], rec["fingerprint"]


def test_stopped_daemon_is_reported_and_the_document_untouched(krita):
    rec = case(krita, "daemon_down")
    assert rec["busy_after_click"] and rec["finished"]
    assert "[not_running]" in rec["message"] and rec["error_boxes"], rec
    assert rec["untouched"], rec["fingerprint"]


def test_cancel_stops_the_request_and_leaves_the_document_untouched(krita):
    rec = case(krita, "cancel")
    assert rec["cancel_enabled"] and rec["finished"]
    assert rec["message"].startswith("Cancelled") and rec["error_boxes"] == [], rec
    assert rec["untouched"]


def test_without_pyzmq_and_msgpack_the_builtin_transport_gives_the_same_masks(krita, krita_no_pyzmq):
    run = krita_no_pyzmq
    assert run.result["client_transport"] == "builtin"
    assert "hidden" in run.result["import_zmq"] and "hidden" in run.result["import_msgpack"]
    for name in ("rgba_u8", "graya_f32"):
        rec = case(run, name)
        assert rec["children"] == [[MASK, "transparencymask", "A", "U8"]] and rec["children_after_undo"] == []
        assert np.array_equal(dumped(run, f"{name}.mask", PHOTO_RECT), dumped(krita, f"{name}.mask", PHOTO_RECT))
    assert case(run, "cancel")["message"].startswith("Cancelled") and case(run, "cancel")["untouched"]
    assert "[not_running]" in case(run, "daemon_down")["message"] and case(run, "daemon_down")["untouched"]


# -- frames: an animated layer (tests/hostapps/krita_remove_test.py: keyframes 0, 2, 3, 5 of astronaut.jpg,
# panned 24 px right per keyframe, on a 400x300 canvas) --------------------------------------------------

FRAME_KEYS = [0, 2, 3, 5]
FRAME_STEP = 24


def frame_masks(run: SimpleNamespace, name: str, keys) -> dict:
    w, h = case(run, name)["canvas"]
    return {t: dumped(run, f"{name}.mask.{t}", [0, 0, w, h]) for t in keys}


def reference_frames(client, run: SimpleNamespace, name: str, sources) -> list:
    """This process's own frame sequence (temporal, as the plugin asks) for the layer keyframes Krita dumped."""
    w, h = case(run, name)["canvas"]
    frames = []
    for key in sources:
        bgra = np.frombuffer((run.out / f"{name}.layer.{key}").read_bytes(), np.uint8).reshape(h, w, 4)
        frames.append(np.ascontiguousarray(bgra[..., [2, 1, 0, 3]]).tobytes())
    results = client.remove_frames(frames, w, h, 4, "u8", model="u2netp", options={"refine": True})
    return [np.frombuffer(r.mask, np.uint8).reshape(h, w) for r in results]


def refused_on_krita_5_2(krita, rec: dict) -> bool:
    """Krita 5.2.9 aborts at times while a keyed mask is built: there frames are refused, nothing changed."""
    if not krita.result["krita"].startswith("5.2"):
        return False
    assert rec["message"].startswith("Error: Masks keyed on an animation's frames need Krita 5.3"), rec["message"]
    assert rec["children"] == [], rec["children"]
    return True


def check_frames_outcome(rec: dict) -> None:
    """What every frames run must leave: the daemon's progress, which never goes back a frame; one animated mask, the user's time, no temporary
    image, and one undo step that removes the mask and nothing else; the .kra keeps every mask keyframe."""
    assert rec["busy_after_click"] and rec["finished"], rec
    texts = rec["progress_texts"]
    shown = [int(t.split()[1]) for t in texts if t.startswith("Frame ")]
    assert shown == sorted(shown) and shown[-1] == 4, texts
    assert rec["message"].startswith("Added") and rec["error_boxes"] == [], rec["message"]
    assert rec["children"] == [[MASK, "transparencymask", True]]
    assert rec["time_after"] == rec["time_before"] and rec["documents_after"] == 1
    assert rec["active_document"] == "bgmask-frames"
    assert any(p.startswith("Frame 4 of 4:") for p in rec["progress"]), rec["progress"]
    assert rec["children_after_undo"] == [] and rec["layer_keys_after_undo"] == FRAME_KEYS
    assert rec["saved"] and rec["reopened_equal"] and rec["reopened_mask_keys"] == rec["mask_keys"]


def test_every_keyframe_of_an_animated_layer_gets_its_own_mask(krita_frames, client):
    """Frames "Every keyframe of the layer": the mask is keyed exactly where the layer is; each keyframe holds
    the daemon's temporally consistent mask of that frame, which follows the subject as it moves."""
    rec = case(krita_frames, "frames_keyframes")
    if refused_on_krita_5_2(krita_frames, rec):
        return
    check_frames_outcome(rec)
    assert rec["layer_keys"] == FRAME_KEYS and rec["mask_keys"] == FRAME_KEYS
    masks = frame_masks(krita_frames, "frames_keyframes", FRAME_KEYS)
    for t, expected in zip(FRAME_KEYS, reference_frames(client, krita_frames, "frames_keyframes", FRAME_KEYS)):
        assert masks[t].shape == (300, 400) and np.array_equal(masks[t], expected), t
    centres = []
    for i, t in enumerate(FRAME_KEYS):
        mask = masks[t]
        assert mask.min() == 0 and mask.max() == 255 and len(np.unique(mask)) > 50   # soft, full range
        rows, cols = 170, 160 + FRAME_STEP * i        # the middle of the astronaut in this frame
        assert mask[rows:rows + 100, cols:cols + 100].mean() > 200, t
        assert (mask < 10).mean() > 0.2, t               # a masked-out background in every frame
        centres.append(np.nonzero(mask >= 128)[1].mean())
    moved = np.diff(centres)
    assert all(FRAME_STEP * 0.6 < d < FRAME_STEP * 1.4 for d in moved), centres


def test_every_frame_of_the_playback_range_gets_a_mask_and_other_frames_stay_visible(krita_frames, client):
    """Frames "Every frame of the playback range" 1..4: frames 1 and 4 hold keyframes 0 and 3, so the sequence
    sent is keyframes 0, 2, 3, 3; frame 0 and frame 5, outside the range, get an opaque mask key."""
    rec = case(krita_frames, "frames_playback")
    if refused_on_krita_5_2(krita_frames, rec):
        return
    check_frames_outcome(rec)
    assert rec["playback_read"] == [1, 4] and rec["mask_keys"] == [0, 1, 2, 3, 4, 5]
    masks = frame_masks(krita_frames, "frames_playback", rec["mask_keys"])
    for t, expected in zip([1, 2, 3, 4], reference_frames(client, krita_frames, "frames_playback", [0, 2, 3, 3])):
        assert np.array_equal(masks[t], expected), t
        assert (masks[t] < 10).mean() > 0.2 and masks[t].max() == 255, t
    assert (masks[0] == 255).all() and (masks[5] == 255).all()


def test_frames_with_an_output_other_than_a_mask_are_refused_and_the_document_untouched(krita_frames):
    rec = case(krita_frames, "frames_refused")
    assert rec["message"].startswith("Error: Frames get a keyframed transparency mask"), rec["message"]
    assert rec["error_boxes"] and rec["untouched"], rec
