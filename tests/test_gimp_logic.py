"""The GIMP plug-in's logic without GIMP: a fake `Gimp` module (tests/fakes/fake_gimp.py), the real client
and a real daemon. What real GIMP does with the same calls is checked by tests/test_gimp_hostapp.py."""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any, Callable

import pytest
from PIL import Image as PILImage

from bgmask.client.loader import load_client
from conftest import REPO, RunningDaemon, example, start_daemon
from fakes.fake_gimp import FakeGimp, Gegl, Image

bgmask_client = load_client()
sys.path.insert(0, str(REPO / "plugins" / "gimp" / "bgmask-remove-background"))
import gimp_mask_logic as logic  # noqa: E402

Rect = logic.Rect


# -- formats -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("base, alpha, precision, babl, channels, sample_type, linear", [
    ("rgb", False, "u8-non-linear", "R'G'B' u8", 3, "u8", False),
    ("rgb", True, "u8-perceptual", "R'G'B'A u8", 4, "u8", False),
    ("rgb", True, "u16-linear", "RGBA u16", 4, "u16", True),
    ("rgb", False, "u32-linear", "RGB float", 3, "f32", True),  # no 32-bit integers in the protocol
    ("rgb", True, "half-non-linear", "R'G'B'A half", 4, "f16", False),
    ("rgb", False, "double-linear", "RGB float", 3, "f32", True),
    ("gray", False, "float-perceptual", "Y' float", 1, "f32", False),
    ("gray", True, "half-linear", "YA half", 2, "f16", True),
    ("gray", True, "u16-non-linear", "Y'A u16", 2, "u16", False),
    ("indexed", True, "u8-non-linear", "R'G'B'A u8", 4, "u8", False),
    ("indexed", False, "u8-non-linear", "R'G'B' u8", 3, "u8", False),
])
def test_pixels_are_read_in_the_layers_own_precision(base: str, alpha: bool, precision: str, babl: str,
                                                      channels: int, sample_type: str, linear: bool) -> None:
    assert logic.pixel_format(base, alpha, precision) == logic.SampleFormat(babl, channels, sample_type, linear)


@pytest.mark.parametrize("precision, babl, sample_type", [
    ("u8-non-linear", "Y u8", "u8"), ("u8-linear", "Y u8", "u8"), ("u16-perceptual", "Y u16", "u16"),
    ("u32-linear", "Y float", "f32"), ("half-non-linear", "Y float", "f32"), ("float-linear", "Y float", "f32"),
    ("double-perceptual", "Y float", "f32"),
])
def test_mask_comes_back_linear_in_the_masks_precision(precision: str, babl: str, sample_type: str) -> None:
    assert logic.mask_format(precision) == logic.SampleFormat(babl, 1, sample_type, True)


@pytest.mark.parametrize("precision", ["u64-linear", "u8-gamma", "float"])
def test_unknown_precision_is_a_user_error(precision: str) -> None:
    with pytest.raises(logic.PluginError, match="Unsupported image precision"):
        logic.mask_format(precision)


# -- crop geometry -------------------------------------------------------------------------------------

def test_without_selection_the_whole_layer_is_sent() -> None:
    assert logic.context_crop(Rect(30, 40, 200, 100), None) == Rect(0, 0, 200, 100)


def test_selection_bounds_grow_by_the_context_padding() -> None:
    # 200x100 selection inside a big layer: 15 % of 200 = 30 px on every side
    assert logic.context_crop(Rect(0, 0, 1000, 1000), Rect(400, 400, 200, 100)) == Rect(370, 370, 260, 160)
    assert logic.context_crop(Rect(0, 0, 1000, 1000), Rect(400, 400, 200, 100), 0.5) == Rect(300, 300, 400, 300)
    assert logic.context_crop(Rect(0, 0, 1000, 1000), Rect(400, 400, 200, 100), 0.0) == Rect(400, 400, 200, 100)


def test_crop_is_layer_local_and_clipped_to_the_layer() -> None:
    # layer at (100, 50), 300x200; the selection (80, 20)-(180, 120) sticks out to the left and above.
    # Under the layer it covers (100, 50)-(180, 120), 80x70; 15 % of 80 = 12 px of padding grow that to
    # (88, 38)-(192, 132), which the layer clips to (100, 50)-(192, 132): layer-local (0, 0), 92x82. The
    # region is the part under the selection, relative to that crop.
    layer, selection = Rect(100, 50, 300, 200), Rect(80, 20, 100, 100)
    crop = logic.context_crop(layer, selection)
    assert crop == Rect(0, 0, 92, 82)
    assert logic.crop_region(layer, selection, crop) == Rect(0, 0, 80, 70)
    assert logic.crop_region(layer, None, crop) is None


def test_selection_that_misses_the_layer_gives_no_crop() -> None:
    assert logic.context_crop(Rect(0, 0, 100, 100), Rect(100, 0, 50, 50)) is None


# -- arguments -----------------------------------------------------------------------------------------

def test_mask_arguments_offer_what_the_daemon_accepts_with_its_defaults() -> None:
    from bgmask.protocol import NUMERIC_OPTIONS, RemoveOptions

    names = {name.replace("-", "_") for name, *_ in logic.NUMBER_ARGUMENTS}
    assert names == set(NUMERIC_OPTIONS) and names <= set(logic.Settings.__dataclass_fields__)
    for name, kind, label, help_text, low, high, default in logic.NUMBER_ARGUMENTS:
        key = name.replace("-", "_")
        assert (low, default) == (NUMERIC_OPTIONS[key][0], getattr(RemoveOptions(), key)), name
        assert high == min(NUMERIC_OPTIONS[key][1], logic.MAX_AREA), name
        assert getattr(logic.Settings(), key) == default and isinstance(default, kind) and help_text


def test_quality_is_sent_only_when_chosen() -> None:
    """"Daemon default" sends no `quality`, so a daemon that has its own default (or none) is not overruled."""
    assert "quality" not in logic.Settings().options()
    assert logic.Settings(quality="best").options()["quality"] == "best"
    assert [nick for nick, *_ in logic.QUALITY_CHOICES] == [logic.QUALITY_DEFAULT, "fast", "balanced", "best"]


def test_mnemonics_do_not_clash() -> None:
    """GIMP warns about every clash; the other arguments and the dialog's buttons have these."""
    # _Model, Ou_tput, _Edge refinement, mas_k, _Quality, _All layers as frames, Stead_y masks across frames;
    # _OK, _Cancel, _Reset, _Help, _Load/_Save Settings
    taken = ["m", "t", "e", "k", "q", "a", "y", "o", "c", "r", "h", "l", "s"]
    for _, _, label, *_ in logic.NUMBER_ARGUMENTS:
        assert label.count("_") == 1, label
        taken.append(label[label.index("_") + 1].lower())
    assert len(taken) == len(set(taken)), taken


# -- messages and progress -----------------------------------------------------------------------------

@pytest.mark.parametrize("code, words", [
    ("not_running", "bgmask serve"), ("model_unavailable", "bgmask pull"), ("too_large", "smaller area"),
    ("unknown_model", "bgmask models"), ("busy", "Try again"), ("timeout", "Nothing was changed"),
    ("connection_lost", "bgmask serve"), ("internal", "Nothing was changed"),
])
def test_every_error_says_what_to_do(code: str, words: str) -> None:
    error = bgmask_client.BgmaskError(code, "detail from the daemon")
    assert words in logic.user_message(error, logic.Settings(model="u2netp"))


def test_progress_spans_all_layers_and_names_the_stage() -> None:
    gimp = FakeGimp()
    feed = logic.ProgressFeed(gimp, 2)
    feed.start(1)
    feed("inferring", 0.5)
    feed("downloading", None)
    assert ("update", 0.75) in gimp.progress
    assert ("text", "Finding the subject (layer 2 of 2)") in gimp.progress
    assert gimp.progress[-1] == ("pulse", None)  # unknown fraction: the bar pulses instead of lying


# -- the whole flow, against a real daemon -------------------------------------------------------------

def photo(name: str, size: tuple[int, int]) -> Callable[[int, int], list[float]]:
    """fill(x, y) for a fake layer: a real photo, scaled to `size`, as RGBA floats."""
    img = PILImage.open(example(name)).convert("RGB").resize(size, PILImage.Resampling.BILINEAR)
    px = img.load()
    return lambda x, y: [c / 255 for c in px[x, y]] + [1.0]


def connect(daemon: RunningDaemon) -> Callable[[], Any]:
    return lambda: bgmask_client.Client(endpoint=daemon.endpoint, token=daemon.token, timeout=60)


def run(image: Image, drawables: list, daemon: RunningDaemon, gimp: FakeGimp | None = None, **settings: Any) -> None:
    logic.remove_background(gimp or FakeGimp(), Gegl, image, drawables,
                            logic.Settings(model="u2netp", **settings), connect(daemon))


def values(channel: Any) -> list[float]:
    return [p[0] for p in channel.pixels]


def assert_soft(vals: list[float]) -> None:
    assert min(vals) <= 0.01 and max(vals) >= 0.99
    assert sum(1 for v in vals if 0.02 < v < 0.98) > 0.002 * len(vals)
    assert 0.1 < sum(1 for v in vals if v >= 0.5) / len(vals) < 0.95


def assert_one_undo_step(image: Image) -> None:
    assert image.changes, "nothing changed"
    assert all(inside for _, inside in image.changes), image.changes
    assert not any(what.startswith("NOT UNDOABLE") for what, _ in image.changes), image.changes
    assert image.undo_groups == 1 and image.undo_depth == 0


def test_layer_mask_on_an_offset_layer(daemon: RunningDaemon) -> None:
    image = Image(200, 150)
    layer = image.add_layer("astronaut", 96, 96, offsets=(150, 100), fill=photo("astronaut.jpg", (96, 96)))
    pixels = [list(p) for p in layer.pixels]
    gimp = FakeGimp()
    run(image, [layer], daemon, gimp)
    mask = layer.get_mask()
    assert (mask.width, mask.height, mask.get_offsets()) == (96, 96, (True, 150, 100))
    assert_soft(values(mask))
    assert layer.pixels == pixels, "the layer's pixels were touched"
    assert_one_undo_step(image)
    assert image.reads == [(layer, (0, 0, 96, 96), "R'G'B'A u8")]
    assert image.deleted_channels == 1, "the temporary channel was left behind"
    assert ("end", None) in gimp.progress and gimp.progress.index(("end", None)) == len(gimp.progress) - 1


def test_linear_16_bit_gray_is_sent_as_such(daemon: RunningDaemon) -> None:
    image = Image(64, 64, base_type="gray", precision="u16-linear")
    layer = image.add_layer("cat", 64, 64, has_alpha=False, fill=photo("chelsea.jpg", (64, 64)))
    run(image, [layer], daemon)
    assert image.reads[0][2] == "Y u16"
    mask = values(layer.get_mask())  # (the fake has no TRCs: the daemon sees a brightened cat)
    assert len(mask) == 64 * 64 and min(mask) <= 0.01 and max(mask) >= 0.99


# The selection (40, 10, 50, 40) grown by padding x 50 px: 8 px, or 25 px clipped at the layer's top edge
@pytest.mark.parametrize("padding, crop", [(0.15, (32, 2, 66, 56)), (0.5, (15, 0, 100, 75))])
def test_selection_crops_the_request_and_limits_the_mask(daemon: RunningDaemon, padding: float,
                                                         crop: tuple[int, int, int, int]) -> None:
    image = Image(128, 128)
    layer = image.add_layer("astronaut", 128, 128, fill=photo("astronaut.jpg", (128, 128)))
    image.select_rect(40, 10, 50, 40)
    run(image, [layer], daemon, padding=padding)
    assert image.reads[0][1] == crop
    mask = layer.get_mask()
    inside = [mask.value(x, y) for y in range(10, 50) for x in range(40, 90)]
    outside = [mask.value(x, y) for y in range(128) for x in range(128) if not (40 <= x < 90 and 10 <= y < 50)]
    assert max(outside) == 0.0
    assert max(inside) >= 0.99 and any(0.02 < v < 0.98 for v in inside)
    assert_one_undo_step(image)
    # The daemon got the selection as its region, with the user's padding: the mask is what the daemon
    # makes of the whole layer with that region, though only the crop was sent.
    whole = layer.get_buffer().get(Gegl.Rectangle(0, 0, 128, 128), 1.0, "R'G'B'A u8", None)
    direct = connect(daemon)().remove(whole, 128, 128, 4, "u8", model="u2netp",
                                      options={"region": [40, 10, 50, 40], "padding": padding})
    assert mask_bytes(mask) == direct


def mask_bytes(channel: Any, sample_type: str = "u8") -> bytes:
    """A mask channel as the daemon encodes masks of `sample_type` (u8 or u16)."""
    scale, code = {"u8": (255, "B"), "u16": (65535, "H")}[sample_type]
    vals = values(channel)
    return struct.pack(f"<{len(vals)}{code}", *(round(v * scale) for v in vals))


def direct_reply(daemon: RunningDaemon, layer: Any, fmt: logic.SampleFormat, out_sample_type: str = "u8",
                 **options: Any) -> Any:
    """The pixels of the whole layer read in `fmt`, and the daemon's answer to this process's own request
    for them."""
    pixels = layer.get_buffer().get(Gegl.Rectangle(0, 0, layer.width, layer.height), 1.0, fmt.babl, None)
    return pixels, connect(daemon)().remove_full(pixels, layer.width, layer.height, fmt.channels, fmt.sample_type,
                                                 linear=fmt.linear, model="u2netp", options=options,
                                                 out_sample_type=out_sample_type)


def foreground(mask: bytes) -> int:
    return sum(1 for v in mask if v >= 128)


def perimeter(mask: bytes, width: int) -> int:
    """Foreground pixels with a background pixel beside them (4-neighbourhood)."""
    fg = [v >= 128 for v in mask]
    height = len(mask) // width
    return sum(1 for i, f in enumerate(fg) if f and any(
        not fg[j] for j in (i - width, i + width, i - 1 if i % width else -1, i + 1 if (i + 1) % width else -1)
        if 0 <= j < width * height))


def ramp(mask: bytes) -> int:
    """Pixels of the soft edge: neither background nor foreground."""
    return sum(1 for v in mask if 5 < v < 250)


def test_mask_options_do_what_their_names_say(daemon: RunningDaemon) -> None:
    """What a user sees: shift edge +5 grows the subject by about 5 px all round, feather widens the edge,
    hardness narrows it; every mask is the daemon's own for the same options."""
    masks = {}
    for name, settings in [("plain", {}), ("shift", {"shift_edge": 5.0}), ("feather", {"feather": 8.0}),
                           ("hard", {"hardness": 1.0}),
                           ("all", {"hardness": 0.5, "shift_edge": -2.0, "feather": 1.5, "fill_holes": 40,
                                    "remove_specks": 40, "refine": False})]:
        image = Image(128, 128)
        layer = image.add_layer("astronaut", 128, 128, fill=photo("astronaut.jpg", (128, 128)))
        run(image, [layer], daemon, **settings)
        masks[name] = mask_bytes(layer.get_mask())
        _, direct = direct_reply(daemon, layer, logic.pixel_format("rgb", True, "u8-non-linear"), **settings)
        assert masks[name] == direct.mask, name
    grown = foreground(masks["shift"]) - foreground(masks["plain"])
    assert 0.7 < grown / (5 * perimeter(masks["plain"], 128)) < 1.4, grown
    assert ramp(masks["feather"]) > 1.3 * ramp(masks["plain"])
    assert ramp(masks["hard"]) < 0.5 * ramp(masks["plain"])


@pytest.mark.parametrize("base_type, precision", [
    ("rgb", "u8-non-linear"),
    ("gray", "u16-linear"),  # frame 2 then has one sample a pixel
])
def test_decontaminated_layer(daemon: RunningDaemon, base_type: str, precision: str) -> None:
    """A new layer above the source with the daemon's decontaminated colours, in the layer's precision, its
    own alpha and the soft mask; the source stays exactly as it was; one undo step."""
    image = Image(96, 96, base_type=base_type, precision=precision)
    fill = photo("astronaut.jpg", (96, 96))
    layer = image.add_layer("astronaut", 96, 96, fill=lambda x, y: fill(x, y)[:3] + [1.0 if x > 3 else 0.5])
    pixels = [list(p) for p in layer.pixels]
    run(image, [layer], daemon, output="decontaminated")
    copy, original = image.get_layers()
    assert original is layer and layer.get_mask() is None and layer.pixels == pixels
    assert copy.name == "astronaut (decontaminated)"
    fmt = logic.pixel_format(base_type, True, precision)
    sent, direct = direct_reply(daemon, layer, fmt, fmt.sample_type, decontaminate=True)
    new = copy.get_buffer().get(Gegl.Rectangle(0, 0, 96, 96), 1.0, fmt.babl, None)
    assert new == bgmask_client.decontaminated_pixels(sent, direct.extra[0], fmt.channels, fmt.sample_type)
    assert new != sent, "no edge colour changed"
    assert mask_bytes(copy.get_mask(), fmt.sample_type) == direct.mask
    assert_one_undo_step(image)


def test_decontaminated_colours_are_refused_for_indexed_images(daemon: RunningDaemon) -> None:
    image = Image(32, 32, base_type="indexed")
    layer = image.add_layer("a", 32, 32)
    with pytest.raises(logic.PluginError, match="Image > Mode > RGB"):
        run(image, [layer], daemon, output="decontaminated")
    assert not image.changes and not image.reads


@pytest.mark.parametrize("policy", ["replace", "intersect"])
def test_existing_mask(daemon: RunningDaemon, policy: str) -> None:
    image = Image(96, 96)
    layer = image.add_layer("astronaut", 96, 96, fill=photo("astronaut.jpg", (96, 96)))
    old = layer.create_mask(FakeGimp.AddMaskType.WHITE)
    layer.add_mask(old)
    old.pixels = [[0.0 if i % 96 < 48 else 1.0] for i in range(96 * 96)]  # left half hidden
    image.changes.clear()
    run(image, [layer], daemon, existing_mask=policy)
    left = [layer.get_mask().value(x, y) for y in range(96) for x in range(48)]
    if policy == "intersect":
        assert layer.get_mask() is old and max(left) == 0.0
    else:
        assert layer.get_mask() is not old and max(left) >= 0.99
    assert_one_undo_step(image)


def test_existing_mask_cancel_changes_nothing_and_asks_nothing(daemon: RunningDaemon) -> None:
    image = Image(64, 64)
    layer = image.add_layer("a", 64, 64)
    layer.add_mask(layer.create_mask(FakeGimp.AddMaskType.WHITE))
    image.changes.clear()
    before = image.state()
    with pytest.raises(logic.PluginError, match="already has a mask") as info:
        run(image, [layer], daemon, existing_mask="cancel")
    assert info.value.cancelled
    assert image.state() == before and not image.changes and not image.reads


def test_new_layer_keeps_the_original(daemon: RunningDaemon) -> None:
    image = Image(96, 96)
    layer = image.add_layer("astronaut", 96, 96, fill=photo("astronaut.jpg", (96, 96)))
    pixels = [list(p) for p in layer.pixels]
    run(image, [layer], daemon, output="new-layer")
    copy, original = image.get_layers()
    assert original is layer and layer.get_mask() is None and layer.pixels == pixels
    assert copy.name == "astronaut (subject)" and copy.pixels == pixels
    assert_soft(values(copy.get_mask()))
    assert_one_undo_step(image)


def test_selection_output_is_the_union_within_the_selection(daemon: RunningDaemon) -> None:
    image = Image(160, 100)
    first = image.add_layer("astronaut", 80, 80, offsets=(0, 0), fill=photo("astronaut.jpg", (80, 80)))
    second = image.add_layer("coffee", 90, 60, offsets=(100, 40), fill=photo("coffee.jpg", (90, 60)))
    run(image, [first, second], daemon, output="selection")
    sel = image.get_selection()
    assert first.get_mask() is None and second.get_mask() is None
    left = [sel.value(x, y) for y in range(80) for x in range(80)]
    right = [sel.value(x, y) for y in range(40, 100) for x in range(100, 160)]  # clipped at the canvas
    assert max(left) >= 0.99 and max(right) >= 0.99
    assert max(sel.value(x, y) for y in range(80, 100) for x in range(0, 100)) == 0.0  # under no layer
    assert_one_undo_step(image)
    assert image.deleted_channels == 3  # two layer results and the union
    # read as GIMP reads a selection, it is the daemon's mask (stored gamma-encoded in an 8-bit image)
    _, direct = direct_reply(daemon, first, logic.pixel_format("rgb", True, "u8-non-linear"))
    assert sel.get_buffer().get(Gegl.Rectangle(0, 0, 80, 80), 1.0, "Y u8", None) == direct.mask


def test_not_a_layer_is_refused_before_anything_happens(daemon: RunningDaemon) -> None:
    image = Image(32, 32)
    layer = image.add_layer("a", 32, 32)
    mask = layer.create_mask(FakeGimp.AddMaskType.WHITE)
    layer.add_mask(mask)
    image.changes.clear()
    with pytest.raises(logic.PluginError, match="is not a layer"):
        run(image, [mask], daemon)
    assert not image.changes and not image.reads


@pytest.mark.parametrize("kind", ["text", "vector"])
def test_text_and_vector_layers_are_refused_unless_rasterized(daemon: RunningDaemon, kind: str) -> None:
    """GIMP draws them from text or a path on transparency: no background to remove. Rasterized (GIMP 3.2),
    they are pixels like any layer; link layers (GIMP 3.2) show a photo and get a mask."""
    image = Image(48, 48)
    layer = image.add_layer("title", 48, 48, fill=photo("astronaut.jpg", (48, 48)))
    setattr(layer, f"is_{kind}_layer", lambda: True)
    with pytest.raises(logic.PluginError, match=f"'title' is a {kind} layer: .* no background to remove"):
        run(image, [layer], daemon)
    assert not image.changes and not image.reads
    layer.is_rasterized = lambda: True
    run(image, [layer], daemon)
    assert layer.get_mask() is not None
    linked = image.add_layer("linked photo", 48, 48, fill=photo("astronaut.jpg", (48, 48)))
    linked.is_link_layer = lambda: True
    linked.is_rasterized = lambda: False
    run(image, [linked], daemon)
    assert_soft(values(linked.get_mask()))


def test_a_failing_gimp_call_is_reported_with_gimps_reason(daemon: RunningDaemon) -> None:
    """GIMP 3.2 shows no failed PDB call of a non-interactive run: the plug-in itself must say it."""
    image = Image(48, 48)
    layer = image.add_layer("a", 48, 48, fill=photo("astronaut.jpg", (48, 48)))
    gimp = FakeGimp()
    gimp.last_error = "Procedure 'gimp-layer-add-mask' has been called with an invalid ID"
    layer.add_mask = lambda mask: False
    with pytest.raises(logic.PluginError, match="could not add the mask to 'a' .*invalid ID.*Undo") as info:
        run(image, [layer], daemon, gimp)
    assert not info.value.cancelled
    assert image.undo_depth == 0 and image.undo_groups == 1  # the undo group was closed: one undo step


def test_selection_that_misses_the_layer_is_an_error(daemon: RunningDaemon) -> None:
    image = Image(100, 100)
    layer = image.add_layer("small", 20, 20, offsets=(0, 0))
    image.select_rect(50, 50, 10, 10)
    with pytest.raises(logic.PluginError, match="does not overlap"):
        run(image, [layer], daemon)
    assert not image.changes


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_daemon_leaves_the_image_as_it_was() -> None:
    image = Image(48, 48)
    layer = image.add_layer("a", 48, 48, fill=photo("astronaut.jpg", (48, 48)))
    before = image.state()
    endpoint = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(logic.PluginError, match="bgmask serve") as info:
        logic.remove_background(FakeGimp(), Gegl, image, [layer], logic.Settings(),
                                lambda: bgmask_client.Client(endpoint=endpoint, token="x"))
    assert not info.value.cancelled
    assert image.state() == before and not image.changes and image.undo_groups == 0


def test_unknown_model_names_the_model(daemon: RunningDaemon) -> None:
    image = Image(48, 48)
    layer = image.add_layer("a", 48, 48)
    with pytest.raises(logic.PluginError, match="no model called 'no-such-model'"):
        logic.remove_background(FakeGimp(), Gegl, image, [layer], logic.Settings(model="no-such-model"),
                                connect(daemon))
    assert not image.changes


def test_too_large_layer_says_what_to_do(isolated_dirs: dict[str, str]) -> None:
    small = start_daemon(isolated_dirs, "--max-pixels", "1000", "--preload-delay", "-1")
    try:
        image = Image(64, 64)
        layer = image.add_layer("a", 64, 64)
        with pytest.raises(logic.PluginError, match="too large.*smaller area"):
            run(image, [layer], small)
        assert not image.changes
    finally:
        small.stop()


# -- all layers as frames ------------------------------------------------------------------------------

FRAME_SIZE = 80


def panned_frames(count: int, **layer: Any) -> tuple[Image, list]:
    """An animation as GIMP keeps one: `count` layers, the first frame at the bottom, each the astronaut
    panned 3 px right and 2 px down from the frame below."""
    image = Image(FRAME_SIZE, FRAME_SIZE)
    big = PILImage.open(example("astronaut.jpg")).convert("RGB").resize((FRAME_SIZE + 12, FRAME_SIZE + 12),
                                                                     PILImage.Resampling.BILINEAR)
    px = big.load()
    frames = [image.add_layer(f"frame {k + 1}", FRAME_SIZE, FRAME_SIZE, **layer,
                              fill=lambda x, y, k=k: [c / 255 for c in px[x + 3 * k, y + 2 * k]] + [1.0])
              for k in range(count)]
    assert image.get_layers()[-1] is frames[0]
    return image, frames


def frame_pixels(frames: list) -> list[bytes]:
    """Each frame's pixels as the plug-in sends them (RGBA u8, the whole layer)."""
    box = Gegl.Rectangle(0, 0, FRAME_SIZE, FRAME_SIZE)
    return [f.get_buffer().get(box, 1.0, "R'G'B'A u8", None) for f in frames]


def test_all_layers_as_frames_mask_every_layer_as_one_sequence(daemon: RunningDaemon) -> None:
    """Four layers, one of them selected and one with an old black mask (replaced, the default): every layer
    gets the daemon's mask for the frames sent bottom layer first as one temporal sequence; one undo step;
    the bar counts frames."""
    image, frames = panned_frames(4)
    frames[2].add_mask(frames[2].create_mask(FakeGimp.AddMaskType.BLACK))
    image.changes.clear()
    pixels = [[list(p) for p in f.pixels] for f in frames]
    gimp = FakeGimp()
    run(image, [frames[3]], daemon, gimp, all_layers=True)
    assert [layer for layer, *_ in image.reads] == frames, "not read bottom layer first, once each"
    sent = frame_pixels(frames)
    options = logic.Settings().options()
    client = connect(daemon)()
    sequence = client.remove_frames(sent, FRAME_SIZE, FRAME_SIZE, 4, "u8", model="u2netp", options=options)
    lone = [client.remove(p, FRAME_SIZE, FRAME_SIZE, 4, "u8", model="u2netp", options=options) for p in sent]
    for frame, own in zip(frames, sequence):
        mask = frame.get_mask()
        assert (mask.width, mask.height, mask.get_offsets()) == (FRAME_SIZE, FRAME_SIZE, (True, 0, 0))
        assert_soft(values(mask))
        assert mask_bytes(mask) == own.mask, frame.name
    assert any(own.mask != alone for own, alone in zip(sequence, lone)), "the masks are not temporal"
    assert [f.pixels for f in frames] == pixels, "a layer's pixels were touched"
    assert_one_undo_step(image)
    texts = [text for kind, text in gimp.progress if kind == "text"]
    for k in range(1, 5):
        assert any(text.endswith(f"(frame {k} of 4)") for text in texts), (k, texts)
    shown = [int(text.rsplit("(frame ", 1)[1].split()[0]) for text in texts]
    assert shown == sorted(shown), f"the text went back to an earlier frame: {texts}"
    updates = [fraction for kind, fraction in gimp.progress if kind == "update"]
    assert updates == sorted(updates), "the bar ran backwards"
    for k in range(4):  # each frame moves the bar into its quarter
        assert any(k / 4 <= f <= (k + 1) / 4 for f in updates), (k, updates)
    assert gimp.progress[-1] == ("end", None)


def test_frames_within_a_selection_without_temporal(daemon: RunningDaemon) -> None:
    """Called with no drawables (as a script may) and temporal off: each frame's mask is the daemon's lone
    mask of that layer with the selection as its region, 0 outside the selection."""
    image, frames = panned_frames(2)
    image.select_rect(20, 10, 40, 50)
    run(image, [], daemon, all_layers=True, temporal=False)
    crops = {box for _, box, _ in image.reads}
    assert len(crops) == 1 and crops != {(0, 0, FRAME_SIZE, FRAME_SIZE)}, crops
    options = dict(logic.Settings().options(), region=[20, 10, 40, 50], padding=logic.DEFAULT_PADDING)
    for frame, pixels in zip(frames, frame_pixels(frames)):
        mask = frame.get_mask()
        assert max(mask.value(x, y) for y in range(FRAME_SIZE) for x in range(FRAME_SIZE)
                   if not (20 <= x < 60 and 10 <= y < 60)) == 0.0
        direct = connect(daemon)().remove(pixels, FRAME_SIZE, FRAME_SIZE, 4, "u8", model="u2netp", options=options)
        assert mask_bytes(mask) == direct, frame.name
    assert_one_undo_step(image)


def _no_daemon() -> Any:
    pytest.fail("the daemon was asked although the input was refused")


@pytest.mark.parametrize("case, words", [
    ("size", r"'odd' is 40x80 at \(0, 0\), but 'frame 1' is 80x80 at \(0, 0\).*same size and position"),
    ("offset", r"'odd' is 80x80 at \(5, 0\).*Filters > Animation > Unoptimize makes every frame whole"),
    ("group", r"'frame 2' is a layer group.*Merge Layer Group"),
    ("text", r"'frame 2' is a text layer"),
    ("output", r"set Output to 'Layer mask'"),
    ("existing", r"'frame 2' already has a mask"),
    ("empty", r"no layers"),
])
def test_frames_that_do_not_line_up_are_refused_before_anything_happens(case: str, words: str) -> None:
    image, frames = panned_frames(3)
    settings: dict[str, Any] = {"all_layers": True}
    if case == "size":
        image.add_layer("odd", 40, FRAME_SIZE)
    elif case == "offset":
        image.add_layer("odd", FRAME_SIZE, FRAME_SIZE, offsets=(5, 0))
    elif case in ("group", "text"):
        setattr(frames[1], f"is_{case}_layer" if case == "text" else "is_group", lambda: True)
    elif case == "output":
        settings["output"] = logic.OUTPUT_NEW_LAYER
    elif case == "existing":
        frames[1].add_mask(frames[1].create_mask(FakeGimp.AddMaskType.WHITE))
        settings["existing_mask"] = logic.EXISTING_CANCEL
    else:
        image.layers.clear()
    image.changes.clear()
    before = image.state()
    with pytest.raises(logic.PluginError, match=words) as info:
        logic.remove_background(FakeGimp(), Gegl, image, frames[:1], logic.Settings(**settings), _no_daemon)
    assert info.value.cancelled is (case == "existing")
    assert image.state() == before and not image.changes and not image.reads and image.undo_groups == 0


def test_cancelled_frames_leave_every_layer_as_it_was(daemon: RunningDaemon) -> None:
    """A cancel while frame 3 of 4 is on the way ends the sequence: a cancel, and no layer changed."""
    image, frames = panned_frames(4)
    before = image.state()
    clients: list[Any] = []

    class CancellingGimp(FakeGimp):
        def progress_set_text(self, text: str) -> bool:
            if text.endswith("(frame 3 of 4)"):
                clients[0].cancel()
            return super().progress_set_text(text)

    def make_client() -> Any:
        clients.append(connect(daemon)())
        return clients[0]

    with pytest.raises(logic.PluginError) as info:
        logic.remove_background(CancellingGimp(), Gegl, image, [], logic.Settings(model="u2netp", all_layers=True),
                                make_client)
    assert info.value.cancelled
    assert image.state() == before and not image.changes and image.undo_groups == 0


def test_frame_progress_follows_the_frame_being_worked_on() -> None:
    """Two frames are in flight: the next one's queue wait and the previous one's last messages do not move
    the bar back."""
    gimp = FakeGimp()
    feed = bgmask_client.ForwardFrameProgress(logic.ProgressFeed(gimp, 4, "frame").frame)  # as _request_frames
    for index, stage, fraction in [(0, "inferring", 0.5), (1, "queued", None), (0, "refining", 0.9),
                                   (1, "inferring", 0.2), (0, "refining", 1.0), (2, "queued", None),
                                   (2, "loading", None)]:
        feed(index, stage, fraction)
    assert [f for kind, f in gimp.progress if kind == "update"] == [0.125, 0.225, 0.3]
    assert [t for kind, t in gimp.progress if kind == "text"] == [
        "Finding the subject (frame 1 of 4)", "Refining the edges (frame 1 of 4)",
        "Finding the subject (frame 2 of 4)", "Loading the model (frame 3 of 4)"]
