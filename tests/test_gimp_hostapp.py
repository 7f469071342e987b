"""The GIMP plug-in in real GIMP 3.0 and 3.2 (Debian chroots, see tests/hostapps_targets.py), against a real
daemon. Every test runs once per GIMP version; its id names the exact version (`gimp-3.2.6`).

GIMP runs its GUI under Xvfb so that undo can be checked the way a user undoes: one Ctrl+Z (GIMP 3 has no
PDB procedure for undo). tests/hostapps/gimp_batch_remove.py runs every case inside one GIMP session and
records what it saw; the tests below judge it. The suite runs twice per version: with GIMP's Python having
pyzmq and msgpack, and with both hidden (run-gimp-test.sh's HOSTAPPS_HIDE_PYZMQ: stub packages that raise
ImportError, first on GIMP's PYTHONPATH), which makes the client use its built-in ZMTP transport. That
transport is the client's own code, whatever the GIMP version: on GIMP 3.2 its launch runs the core cases
only (BUILTIN_CORE), and the other tests say so as their skip reason.

Without a chroot the tests are skipped with the reason. With $CI set a missing chroot is built first
(tests/hostapps/setup-chroot.sh) and the tests are skipped only if that fails for lack of root or network.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from bgmask.client.loader import load_client
from conftest import EXAMPLES, REPO, RunningDaemon
from hostapps_targets import GIMPS, TRIXIE, Target, record_launch

HOSTAPPS = REPO / "tests" / "hostapps"
PLUGIN = REPO / "plugins" / "gimp" / "bgmask-remove-background"
BATCH = HOSTAPPS / "gimp_batch_remove.py"
SELECTION = (150, 40, 200, 160)  # as in the batch script, image coordinates
# The cases the no-pyzmq launch runs on GIMP versions after the first: a mask in 8-bit, in linear 16-bit and
# in float, an existing mask, a selection, and a cancel.
BUILTIN_CORE = ["rgb8", "rgba16_linear", "graya_half_linear", "existing_replace", "selection_mask", "cancel"]

pytestmark = pytest.mark.hostapp


@pytest.fixture(scope="module", params=GIMPS, ids=[t.id for t in GIMPS])
def target(request: pytest.FixtureRequest) -> Target:
    """The GIMP under test: module-scoped, so pytest runs all tests of one version before the next."""
    return request.param


@pytest.fixture(scope="module")
def chroot(target: Target) -> Target:
    problem = target.problem()
    if problem:
        pytest.skip(f"real GIMP {target.series} unavailable: {problem}")
    return target


def pan_frames() -> list[PILImage.Image]:
    """Four 256x256 frames of the astronaut panning 6 px left and 3 px up per frame."""
    photo = PILImage.open(EXAMPLES / "astronaut.jpg").convert("RGB").resize((280, 280))
    return [photo.crop((6 * k, 3 * k, 6 * k + 256, 3 * k + 256)) for k in range(4)]


def pan_gif(folder: Path) -> Path:
    """pan_frames() as an animated GIF, for the batch script's gif_frames case (GIMP opens it as 4 layers)."""
    path = folder / "pan.gif"
    frames = pan_frames()
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def run_gimp(target: Target, out: Path, env: dict[str, str], gui: bool, hide_pyzmq: bool) -> dict[str, Any]:
    """Run the batch script in GIMP and return its report; fails with GIMP's log if it did not finish."""
    env = dict(os.environ, **target.env, **env)
    env["HOSTAPPS_PASSENV"] = "BGMASK_ENDPOINT BGMASK_TOKEN BGMASK_TEST_CASES BGMASK_TEST_MODEL"
    env["BGMASK_TEST_MODEL"] = "u2netp"
    env.pop("HOSTAPPS_GIMP_GUI", None)
    env.pop("HOSTAPPS_HIDE_PYZMQ", None)
    if gui:
        env["HOSTAPPS_GIMP_GUI"] = "1"
    if hide_pyzmq:
        env["HOSTAPPS_HIDE_PYZMQ"] = "1"
    photos = [str(p) for p in sorted(EXAMPLES.glob("*.jpg"))] + [str(pan_gif(out))]
    start = time.monotonic()
    proc = subprocess.run(["bash", str(HOSTAPPS / "run-gimp-test.sh"), str(PLUGIN), str(BATCH), str(out), *photos],
                          env=env, capture_output=True, text=True, timeout=800)
    cases = env.get("BGMASK_TEST_CASES", "all cases")
    record_launch(target, f"{'without' if hide_pyzmq else 'with'} pyzmq, {'GUI' if gui else 'console'}, {cases}",
                  time.monotonic() - start)
    result = out / "result.json"
    log = (out / "gimp.log").read_text(errors="replace") if (out / "gimp.log").exists() else ""
    assert result.exists(), f"GIMP wrote no result ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log[-4000:]}"
    report = json.loads(result.read_text())
    assert report["ok"], report.get("error", "") + log[-4000:]
    hidden = out / "hidden-imports.log"
    report["hidden_imports"] = hidden.read_text().splitlines() if hidden.exists() else []
    report["out"] = out
    report["log"] = log
    return report


@pytest.fixture(scope="module", params=["pyzmq", "builtin"])
def gimp(request: pytest.FixtureRequest, chroot: Target, daemon: RunningDaemon,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One GIMP session running every case (or BUILTIN_CORE), with GIMP's pyzmq and msgpack visible or hidden."""
    hide = request.param == "builtin"
    out = tmp_path_factory.mktemp(f"{chroot.id}-{request.param}")
    env = {"BGMASK_ENDPOINT": daemon.endpoint, "BGMASK_TOKEN": daemon.token}
    if hide and chroot != TRIXIE:
        env["BGMASK_TEST_CASES"] = ",".join(BUILTIN_CORE)
    report = run_gimp(chroot, out, env, gui=True, hide_pyzmq=hide)
    report["variant"] = request.param
    report["target"] = chroot
    return report


@pytest.fixture(scope="module")
def client(daemon: RunningDaemon) -> Any:
    with load_client().Client(endpoint=daemon.endpoint, token=daemon.token, timeout=60) as client:
        yield client


def dumped(report: dict[str, Any], name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """What the batch script dumped for the test (pixels or a mask)."""
    return np.frombuffer((report["out"] / name).read_bytes(), dtype).reshape(shape)


def own_mask(client: Any, pixels: np.ndarray, **options: Any) -> np.ndarray:
    """This process's request for the same R'G'B' u8 pixels the plug-in sent (u2netp, u8 mask)."""
    h, w = pixels.shape[:2]
    return np.frombuffer(client.remove(pixels.tobytes(), w, h, 3, "u8", model="u2netp", options=options),
                         np.uint8).reshape(h, w)


def grown_by(before: np.ndarray, after: np.ndarray) -> float:
    """How far the subject (mask >= 128) grew, in pixels: the area gained over the length of its outline."""
    fg = before >= 128
    inner = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
    outline = int(fg[1:-1, 1:-1].sum() - inner.sum())
    return int((after >= 128).sum() - fg.sum()) / outline


def case(report: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in report["cases"]:
        pytest.skip(f"'{name}' runs in the {report['variant']} launch of GIMP {TRIXIE.series} only "
                    f"(here: {', '.join(report['cases'])})")
    result = report["cases"][name]
    assert "crash" not in result, result["crash"]
    return result


def assert_soft_mask(stats: dict[str, float]) -> None:
    """A real subject mask: both background and foreground, full range, and soft edges between them."""
    assert stats["min"] <= 0.01 and stats["max"] >= 0.99, stats
    assert 0.1 < stats["fg"] < 0.95, stats
    assert stats["soft"] > 0.002 and stats["levels"] > 50, stats


def assert_layer_masked(result: dict[str, Any]) -> None:
    assert result["status"] == "success", result["message"]
    mask = result["mask"]
    assert mask is not None
    assert mask["size"] == result["layer_size"]
    assert mask["offsets"] == result["layer_offsets"]
    assert result["pixels_unchanged"], "the layer's pixels changed"
    assert result["undo_restores"] is True, "one Ctrl+Z did not give back the image as it was"


def test_environment(gimp: dict[str, Any]) -> None:
    env = gimp["env"]
    series = gimp["target"].series
    assert env["gimp"].startswith(series + "."), env["gimp"]
    # `bgmask install` put the plug-in into the profile GIMP made for its version (~/.config/GIMP/3.2)
    assert f"/.config/GIMP/{series}/plug-ins/" in env["plugin_dir"], env["plugin_dir"]
    assert env["deprecated_in_plugin"] == [], "the plug-in calls API this GIMP marks deprecated"
    has_pyzmq = gimp["variant"] == "pyzmq"
    assert env["zmq"] is has_pyzmq and env["msgpack"] is has_pyzmq
    assert env["client_transport"] == gimp["variant"]
    # the plug-in's own process (not only the batch script) found the stubs and fell back
    plugin_hit = any(line.startswith("bgmask-remove-background.py ") for line in gimp["hidden_imports"])
    assert plugin_hit is not has_pyzmq, gimp["hidden_imports"]
    # GIMP 3.0 gives the menu paths back as registered, 3.2 without the trailing slash
    assert [path.rstrip("/") for path in env["menu_paths"]] == ["<Image>/Layer"]
    assert [path.rstrip("/") for path in env["select_menu_paths"]] == ["<Image>/Select"]
    assert env["arguments"] == ["run-mode", "image", "drawables", "model", "output", "refine", "existing-mask",
                                "hardness", "shift-edge", "feather", "fill-holes", "remove-specks", "padding",
                                "quality", "all-layers", "temporal"]
    assert "mnemonic" not in gimp["log"].lower(), "GIMP warned about clashing or missing mnemonics in the dialog"
    assert "not supported for parameter" not in gimp["log"], "the dialog asked GIMP for a widget it cannot make"


@pytest.mark.parametrize("name, mask_format", [
    ("rgb8", "Y u8"),                  # RGB, 8-bit perceptual
    ("rgba16_linear", "Y u16"),        # RGBA, 16-bit linear
    ("gray_f32", "Y float"),           # gray, 32-bit float perceptual
    ("graya_half_linear", "Y half"),   # gray + alpha, 16-bit float linear
    ("rgb_u32", "Y u32"),              # RGB, 32-bit integer (sent as f32)
    ("indexed", "Y u8"),               # indexed: converted for the request only
])
def test_layer_mask_in_each_precision(gimp: dict[str, Any], name: str, mask_format: str) -> None:
    result = case(gimp, name)
    assert_layer_masked(result)
    assert result["mask"]["format"] == mask_format
    assert_soft_mask(result["mask"]["stats"])


def test_same_photo_gives_the_same_mask_in_any_precision(gimp: dict[str, Any]) -> None:
    """chelsea.jpg as 16-bit linear RGBA and as 32-bit integer RGB: the daemon sees the same picture."""
    a = case(gimp, "rgba16_linear")["mask"]["stats"]
    b = case(gimp, "rgb_u32")["mask"]["stats"]
    assert abs(a["mean"] - b["mean"]) < 0.02 and abs(a["fg"] - b["fg"]) < 0.02, (a, b)


def test_mask_options_reach_the_daemon(gimp: dict[str, Any], client: Any) -> None:
    """With every option set (shift edge +5 among them) the mask is the daemon's own for those options, so
    the arguments reach the request with their values and types; the subject grew by about 5 px all round."""
    result = case(gimp, "mask_options")
    assert_layer_masked(result)
    pixels = dumped(gimp, "mask_options.layer", "<u1", (512, 512, 3))
    mask = dumped(gimp, "mask_options.mask", "<u1", (512, 512))
    assert np.array_equal(mask, own_mask(client, pixels, **result["args"]))
    plain = dumped(gimp, "rgb8.mask", "<u1", (512, 512))
    assert np.array_equal(dumped(gimp, "rgb8.layer", "<u1", (512, 512, 3)), pixels)
    assert 0.7 < grown_by(plain, mask) / 5 < 1.4


def test_decontaminated_colours_become_a_new_layer(gimp: dict[str, Any], client: Any) -> None:
    """A copy above the 16-bit linear RGBA layer, in its format, holding the daemon's decontaminated colours
    and the layer's alpha, with the daemon's mask; the source untouched; one Ctrl+Z removes it all."""
    result = case(gimp, "decontaminated")
    assert result["status"] == "success", result["message"]
    assert result["layers"] == 2 and result["copy_is_above"] and result["copy_name"].endswith(" (decontaminated)")
    assert result["original_untouched"], "the source layer changed"
    assert result["format"] == result["copy_format"] == "RGBA u16"
    assert result["mask"]["format"] == "Y u16"
    w, h = result["size"]
    source = dumped(gimp, "decontaminated.layer", "<u2", (h, w, 4))
    reply = client.remove_full(source.tobytes(), w, h, 4, "u16", linear=True, model="u2netp",
                               options={"decontaminate": True}, out_sample_type="u16")
    colours = np.frombuffer(reply.extra[0], "<u2").reshape(h, w, 3)
    copy = dumped(gimp, "decontaminated.copy", "<u2", (h, w, 4))
    assert np.array_equal(copy, np.dstack([colours, source[..., 3]]))
    assert not np.array_equal(copy, source), "no edge colour changed"
    assert dumped(gimp, "decontaminated.mask", "<u2", (h, w)).tobytes() == reply.mask
    assert result["undo_restores"] is True


def test_refine_off_gives_another_soft_mask(gimp: dict[str, Any]) -> None:
    plain = case(gimp, "no_refine")
    assert_layer_masked(plain)
    assert_soft_mask(plain["mask"]["stats"])
    assert plain["mask"]["digest"] != case(gimp, "rgb8")["mask"]["digest"], "refine=False changed nothing"


def test_offset_layer_smaller_than_canvas(gimp: dict[str, Any]) -> None:
    result = case(gimp, "offset_layer")
    assert result["layer_size"] == [300, 300] and result["layer_offsets"] == [420, 260]
    assert_layer_masked(result)  # the mask has the layer's size and offsets, also where it leaves the canvas
    assert_soft_mask(result["mask"]["stats"])


def test_existing_mask_intersect(gimp: dict[str, Any]) -> None:
    """The old mask is black on the left half: intersecting keeps that half at 0."""
    result = case(gimp, "existing_intersect")
    assert_layer_masked(result)
    stats = result["mask"]["stats"]
    assert stats["max"] == 0.0, "the intersection let through what the old mask hid"
    assert stats["outside_max"] >= 0.99


def test_existing_mask_replace(gimp: dict[str, Any]) -> None:
    result = case(gimp, "existing_replace")
    assert_layer_masked(result)
    assert result["mask"]["stats"]["fg"] > 0.3, "the old mask's black half survived a replace"


def test_existing_mask_cancel(gimp: dict[str, Any]) -> None:
    result = case(gimp, "existing_cancel")
    assert result["status"] == "cancel"
    assert result["untouched"] and result["pixels_unchanged"]
    stats = result["mask"]["stats"]
    assert stats["max"] == 0.0 and stats["outside_max"] == 1.0 and stats["soft"] == 0.0  # the old mask


def test_selection_is_sent_as_the_region(gimp: dict[str, Any], client: Any) -> None:
    """Only the selection plus its context is sent, yet the mask is what the daemon makes of the whole
    layer with the selection as its region and the default padding."""
    pixels = dumped(gimp, "selection_mask.layer", "<u1", (512, 512, 3))
    mask = dumped(gimp, "selection_mask.mask", "<u1", (512, 512))
    assert np.array_equal(mask, own_mask(client, pixels, region=list(SELECTION), padding=0.15))


@pytest.mark.parametrize("name", ["selection_mask", "selection_mask_offset"])
def test_selection_limits_the_mask(gimp: dict[str, Any], name: str) -> None:
    """Around the astronaut's head: the mask is 0 outside the selection and a soft subject inside."""
    result = case(gimp, name)
    assert_layer_masked(result)
    stats = result["mask"]["stats"]
    assert stats["outside_max"] == 0.0
    assert 0.1 < stats["fg"] < 0.95 and stats["max"] >= 0.99, stats
    assert stats["soft"] > 0.002 and stats["levels"] > 50, stats


@pytest.mark.parametrize("name", ["select_subject", "output_selection"])
def test_subject_becomes_the_selection(gimp: dict[str, Any], name: str) -> None:
    result = case(gimp, name)
    assert result["status"] == "success", result["message"]
    assert result["mask"] is None, "a selection output must not add a layer mask"
    assert result["non_empty"]
    assert_soft_mask(result["stats"])
    width, height = result["image_size"]
    x1, y1, x2, y2 = result["bounds"]
    assert (x2 - x1, y2 - y1) != (width, height), "the whole image was selected"
    assert result["pixels_unchanged"] and result["undo_restores"] is True


def test_select_subject_within_a_selection(gimp: dict[str, Any]) -> None:
    result = case(gimp, "select_subject_in_selection")
    assert result["status"] == "success", result["message"]
    x, y, w, h = SELECTION
    x1, y1, x2, y2 = result["bounds"]
    assert x <= x1 and y <= y1 and x2 <= x + w and y2 <= y + h
    assert result["stats"]["outside_max"] == 0.0 and result["stats"]["fg"] > 0.05
    assert result["undo_restores"] is True


def test_new_layer_keeps_the_original(gimp: dict[str, Any]) -> None:
    result = case(gimp, "new_layer")
    assert result["status"] == "success", result["message"]
    assert result["layers"] == 2 and result["copy_is_above"]
    assert result["original_untouched"], "the original layer changed"
    assert result["copy_pixels_same"]
    assert result["mask"]["size"] == [512, 512]
    assert_soft_mask(result["mask"]["stats"])
    assert result["undo_restores"] is True


def test_two_layers_each_get_their_mask(gimp: dict[str, Any]) -> None:
    result = case(gimp, "two_layers")
    assert result["status"] == "success", result["message"]
    for mask, size in zip(result["masks"], result["sizes"]):
        assert mask is not None and mask["size"] == size
        assert_soft_mask(mask["stats"])
    assert result["masks"][1]["offsets"] == [200, 300]
    assert result["undo_restores"] is True


def test_all_layers_as_frames_gives_every_layer_its_mask(gimp: dict[str, Any], client: Any) -> None:
    """A 4-frame pan with only the top layer selected: each of the four layers gets a layer mask of its size
    with the subject kept, something masked out and soft edges, and it is the daemon's own mask for the four
    frames as one temporal sequence, bottom layer first; no pixel changed; one Ctrl+Z removes all four."""
    result = case(gimp, "all_layers")
    assert result["status"] == "success", result["message"]
    frames = [dumped(gimp, f"all_layers.{k}.layer", "<u1", (512, 512, 3)) for k in range(4)]
    assert not np.array_equal(frames[0], frames[1]), "the frames do not pan"
    sequence = client.remove_frames([f.tobytes() for f in frames], 512, 512, 3, "u8", model="u2netp")
    for k, (mask, size, offsets) in enumerate(zip(result["masks"], result["sizes"], result["offsets"])):
        assert mask is not None, f"frame {k + 1} got no mask"
        assert mask["size"] == size == [512, 512] and mask["offsets"] == offsets == [0, 0]
        assert_soft_mask(mask["stats"])
        assert dumped(gimp, f"all_layers.{k}.mask", "<u1", (512, 512)).tobytes() == sequence[k].mask, k
    assert result["pixels_unchanged"] == [True] * 4
    assert result["undo_restores"] is True


def test_an_animated_gif_opened_in_gimp_gets_a_mask_on_every_frame(gimp: dict[str, Any], client: Any) -> None:
    """GIMP opens the GIF's four frames as four layers, the first at the bottom; called with no drawables (as a
    script may), each layer gets a mask, the daemon's own for the frames in the GIF's order as one sequence."""
    result = case(gimp, "gif_frames")
    assert result["status"] == "success", result["message"]
    assert result["layers"] == 4 and result["sizes"] == [[256, 256]] * 4, result
    pixels = [dumped(gimp, f"gif_frames.{k}.layer", "<u1", (256, 256, 3)) for k in range(4)]
    gif = PILImage.open(gimp["out"] / "pan.gif")
    for k in range(4):  # bottom layer first is the GIF's frame order
        gif.seek(k)
        assert np.array_equal(pixels[k], np.asarray(gif.convert("RGB"))), f"layer {k} (bottom up) is not frame {k}"
    sequence = client.remove_frames([p.tobytes() for p in pixels], 256, 256, 3, "u8", model="u2netp")
    for k, mask in enumerate(result["masks"]):
        assert mask is not None and mask["size"] == [256, 256], result["masks"]
        assert_soft_mask(mask["stats"])
        assert dumped(gimp, f"gif_frames.{k}.mask", "<u1", (256, 256)).tobytes() == sequence[k].mask, k


def test_all_layers_as_frames_refuses_frames_that_do_not_line_up(gimp: dict[str, Any]) -> None:
    result = case(gimp, "all_layers_refused")
    group, size = result["group"], result["size"]
    assert group["status"] == "execution-error" and group["untouched"], group
    assert "'group' is a layer group" in group["message"], group["message"]
    assert size["status"] == "execution-error" and size["untouched"], size
    assert "'small' is 240x160 at (200, 300)" in size["message"], size["message"]
    assert "same size and position" in size["message"], size["message"]
    assert "Filters > Animation > Unoptimize makes every frame whole" in size["message"], size["message"]


def test_all_layers_as_frames_from_the_dialog(gimp: dict[str, Any]) -> None:
    """Ticked in the dialog with the keyboard (Alt+A): all four layers get their mask, one Ctrl+Z undoes it."""
    result = case(gimp, "frames_dialog")
    assert result["status"] == "success", result["message"]
    for mask in result["masks"]:
        assert mask is not None and mask["size"] == [512, 512], result["masks"]
        assert_soft_mask(mask["stats"])
    assert result["undo_restores"] is True


def test_cancel_during_frames_leaves_every_layer_untouched(gimp: dict[str, Any]) -> None:
    result = case(gimp, "all_layers_cancel")
    assert result["status"] == "cancel", f"the frames were not cancelled: {result}"
    assert result["untouched"] and result["masks"] == [None] * 4


def test_dialog_and_last_values(gimp: dict[str, Any]) -> None:
    """Output = Selection and Shift edge = 20 px chosen in the dialog; a last-values run repeats both."""
    result = case(gimp, "dialog_then_last_values")
    first, again = result["first"], result["again"]
    assert first["status"] == "success", first["message"]
    assert first["selection_non_empty"] and first["mask"] is None, "the dialog's Output choice was not used"
    plain = case(gimp, "output_selection")["stats"]  # the same photo and output, no shift
    assert first["stats"]["fg"] > plain["fg"] + 0.02, "the dialog's Shift edge was not used"
    assert again["status"] == "success", again["message"]
    assert again["selection_non_empty"] and again["mask"] is None, "the last values were not remembered"
    assert again["stats"] == first["stats"], "the last values lost an option"


def test_cancel_from_the_progress_bar_leaves_the_image_untouched(gimp: dict[str, Any]) -> None:
    result = case(gimp, "cancel")
    assert result["status"] == "cancel", f"the request was not cancelled: {result}"
    assert result["untouched"] and result["mask"] is None
    # the daemon keeps serving: the cases after this one (alphabetically) still got their masks
    assert case(gimp, "rgb8")["status"] == "success"


def test_a_layer_mask_is_refused(gimp: dict[str, Any]) -> None:
    result = case(gimp, "not_a_layer")
    assert result["status"] == "execution-error"
    assert "not a layer" in result["message"]
    assert result["untouched"]


def test_link_layers_get_a_mask_and_vector_layers_are_refused(gimp: dict[str, Any]) -> None:
    """GIMP 3.2's non-raster layers: a link layer shows a photo file, so it gets its mask and stays linked; a
    vector layer is a shape drawn from a path, with no background: refused, saying why, image untouched."""
    result = case(gimp, "link_and_vector_layers")
    if gimp["target"].series == "3.0":
        assert "skipped" in result  # GIMP 3.0 has neither
        return
    link, vector = result["link"], result["vector"]
    assert link["status"] == "success" and link["still_linked"] and link["undo_restores"], link
    assert link["mask"] is not None and link["mask"]["size"] == [512, 512]
    assert_soft_mask(link["mask"]["stats"])
    assert vector["status"] == "execution-error" and vector["untouched"], vector
    assert "is a vector layer" in vector["message"] and "no background to remove" in vector["message"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("variant", ["pyzmq", "builtin"])
def test_unreachable_daemon_leaves_the_image_untouched(chroot: Target, tmp_path: Path, variant: str) -> None:
    report = run_gimp(chroot, tmp_path, {"BGMASK_ENDPOINT": f"tcp://127.0.0.1:{_closed_port()}", "BGMASK_TOKEN": "x",
                                 "BGMASK_TEST_CASES": "unreachable"}, gui=False, hide_pyzmq=variant == "builtin")
    assert report["env"]["client_transport"] == variant
    result = case(report, "unreachable")
    assert result["status"] == "execution-error"
    assert "not running" in result["message"] and "bgmask serve" in result["message"], result["message"]
    assert result["untouched"] and not result["dirty"]
