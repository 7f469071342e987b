"""The Krita plugin's pixel and document logic, on the host, with a fake `krita` module (tests/fakes).

The fake follows what Krita 5.2.9 does (see its docstring); tests/test_krita_hostapp.py runs the same
plugin in the real application. Masks come from the real daemon (the `daemon` fixture).
"""

from __future__ import annotations

import importlib
import importlib.util
import socket
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import load_rgb

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "plugins" / "krita" / "bgmask"
CLIENT = REPO / "plugins" / "common" / "bgmask_client.py"
FAKE = Path(__file__).resolve().parent / "fakes" / "fake_krita.py"


@pytest.fixture(scope="module")
def plugin():
    """The plugin's Qt-free modules and its bgmask_client, imported as package `krita_bgmask` against the fake `krita`.

    The package's __init__ (which builds Qt widgets) is not run: the host has no PyQt5.
    """
    saved = {name: sys.modules.get(name) for name in ("krita", "krita_bgmask")}
    spec = importlib.util.spec_from_file_location("krita", FAKE)
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    sys.modules["krita"] = fake
    package = types.ModuleType("krita_bgmask")
    package.__path__ = [str(PLUGIN)]
    sys.modules["krita_bgmask"] = package
    # the installer copies the shared client into the plugin package; the plugin imports it from there
    spec = importlib.util.spec_from_file_location("krita_bgmask.bgmask_client", CLIENT)
    client = importlib.util.module_from_spec(spec)
    sys.modules["krita_bgmask.bgmask_client"] = client
    spec.loader.exec_module(client)
    try:
        yield SimpleNamespace(krita=fake, client=client, core=importlib.import_module("krita_bgmask.core"),
                              pixels=importlib.import_module("krita_bgmask.pixels"))
    finally:
        for name in [n for n in sys.modules if n == "krita_bgmask" or n.startswith("krita_bgmask.")]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is not None:
                sys.modules[name] = module
            else:
                sys.modules.pop(name, None)


@pytest.fixture
def krita(plugin):
    plugin.krita.Krita.reset()
    return plugin.krita.Krita.instance()


@pytest.fixture
def client_module(plugin):
    return plugin.client


def krita_order(rgba: np.ndarray, depth: str) -> bytes:
    """What Krita's pixelData holds for R,G,B,A samples: B,G,R,A for integer depths (checked in Krita 5.2.9)."""
    if depth in ("U8", "U16"):
        rgba = rgba[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(rgba).tobytes()


def photo_rgba(name: str = "astronaut.jpg") -> np.ndarray:
    rgb, w, h = load_rgb(name)
    arr = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)
    return np.dstack([arr, np.full((h, w), 255, np.uint8)])


def layer_with(doc, pixels_krita: bytes, rect, name="subject", parent=None):
    """A paint layer holding `pixels_krita` at image rect (x, y, w, h), added (undoably) under parent."""
    layer = doc.createNode(name, "paintlayer")
    (parent or doc.rootNode()).addChildNode(layer, None)
    layer.setPixelData(pixels_krita, *rect)
    doc.undo_stack.clear()
    doc.setModified(False)
    doc.setActiveNode(layer)
    return layer


def snapshot(doc):
    """Everything about the document a user could see change."""
    def walk(node):
        return (node.name(), node.type(), node.pixelData(-64, -64, doc.width() + 128, doc.height() + 128),
                tuple(walk(c) for c in node.childNodes()))

    sel = doc.selection()
    return (walk(doc.rootNode()), len(doc.undo_stack), doc.modified(),
            None if sel is None else sel.pixelData(0, 0, doc.width(), doc.height()))


# -- pixels -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth,dtype", [("U8", "<u1"), ("U16", "<u2")])
def test_integer_rgba_goes_out_as_rgba_although_krita_stores_bgra(plugin, depth, dtype):
    rgba = np.array([[[10, 20, 30, 40], [1000 % 256, 7, 200, 255], [0, 255, 128, 3]]], dtype)
    if depth == "U16":
        rgba = rgba * 257
    layout = plugin.pixels.layout_for("RGBA", depth)
    out = plugin.pixels.to_protocol_order(krita_order(rgba, depth), layout)
    assert (layout.channels, layout.sample_type) == (4, depth.lower())
    assert out == rgba.tobytes()


@pytest.mark.parametrize("model,depth,channels,dtype", [
    ("RGBA", "F16", 4, "<f2"), ("RGBA", "F32", 4, "<f4"),
    ("GRAYA", "U8", 2, "<u1"), ("GRAYA", "U16", 2, "<u2"), ("GRAYA", "F16", 2, "<f2"), ("GRAYA", "F32", 2, "<f4")])
def test_float_rgba_and_gray_keep_krita_order_and_precision(plugin, model, depth, channels, dtype):
    samples = np.linspace(0, 1, 6 * channels).astype(dtype)
    if dtype in ("<u1", "<u2"):
        samples = (np.arange(6 * channels) * 9).astype(dtype)
    layout = plugin.pixels.layout_for(model, depth)
    assert (layout.channels, layout.sample_type, layout.sample_size) == (channels, depth.lower(), samples.itemsize)
    assert plugin.pixels.to_protocol_order(samples.tobytes(), layout) == samples.tobytes()


@pytest.mark.parametrize("model,depth", [("CMYKA", "U8"), ("LABA", "U16"), ("XYZA", "F32"), ("YCbCrA", "U8"),
                                         ("RGBA", "U32")])
def test_colour_spaces_the_daemon_cannot_take_have_no_layout(plugin, model, depth):
    assert plugin.pixels.layout_for(model, depth) is None


def test_partial_pixels_are_refused(plugin):
    with pytest.raises(ValueError, match="whole number"):
        plugin.pixels.to_protocol_order(b"\0" * 7, plugin.pixels.layout_for("RGBA", "U8"))


@pytest.mark.parametrize("name,linear", [
    ("sRGB-elle-V2-srgbtrc.icc", False), ("sRGB-elle-V2-g10.icc", True), ("Gray-D50-elle-V2-g10.icc", True),
    ("Gray-D50-elle-V2-srgbtrc.icc", False), ("scRGB (linear)", True), ("Rec2020-elle-V4-g10.icc", True),
    ("sRGB built-in", False)])
def test_linear_profiles_are_recognised_by_their_krita_names(plugin, name, linear):
    assert plugin.pixels.is_linear_profile(name) is linear


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.sampled_from([0, 255, None])),
                min_size=0, max_size=300))
def test_multiply_is_mask_times_selection_over_255(plugin, pairs):
    mask = bytes(m for m, _, _ in pairs)
    selection = bytes(s if solid is None else solid for _, s, solid in pairs)
    expected = bytes((m * s + 127) // 255 for m, s in zip(mask, selection))
    assert plugin.pixels.multiply(mask, selection) == expected


def test_embed_places_the_region_and_zeroes_the_rest(plugin):
    inner = bytes(range(1, 7))  # 3x2
    out = plugin.pixels.embed(inner, (11, 21, 3, 2), (10, 20, 5, 4))
    rows = [out[i * 5:(i + 1) * 5] for i in range(4)]
    assert rows == [bytes(5), bytes([0, 1, 2, 3, 0]), bytes([0, 4, 5, 6, 0]), bytes(5)]
    with pytest.raises(ValueError):
        plugin.pixels.embed(inner, (9, 21, 3, 2), (10, 20, 5, 4))


# -- prepare --------------------------------------------------------------------------------------------

def test_prepare_reads_an_offset_layer_in_a_group_without_touching_the_document(plugin, krita):
    doc = krita.createDocument(100, 80, "t", "RGBA", "U8", "", 72.0)
    group = doc.createGroupLayer("group")
    doc.rootNode().addChildNode(group, None)
    rgba = np.random.default_rng(1).integers(0, 256, (30, 40, 4), np.uint8)
    layer = layer_with(doc, krita_order(rgba, "U8"), (70, -10, 40, 30), parent=group)  # sticks out right and top
    before = snapshot(doc)

    job = plugin.core.prepare(doc, plugin.core.target_layer(doc), plugin.core.Settings(model="u2netp"))

    assert job.layer_rect == job.region == (70, -10, 40, 30)
    assert job.protocol_pixels() == rgba.tobytes()
    assert (job.layout.channels, job.layout.sample_type, job.linear) == (4, "u8", False)
    assert job.selection is None and job.converted_from is None
    assert job.node_id == layer.uniqueId()
    assert snapshot(doc) == before


def test_prepare_sends_16_bit_linear_documents_as_linear_u16(plugin, krita):
    doc = krita.createDocument(20, 10, "t", "RGBA", "U16", "", 72.0)  # Krita's default: sRGB-elle-V2-g10
    rgba = (np.arange(10 * 20 * 4).reshape(10, 20, 4) * 37 % 65536).astype("<u2")
    layer_with(doc, krita_order(rgba, "U16"), (0, 0, 20, 10))
    job = plugin.core.prepare(doc, doc.activeNode(), plugin.core.Settings())
    assert (job.layout.sample_type, job.linear) == ("u16", True)
    assert job.protocol_pixels() == rgba.tobytes()


@pytest.mark.parametrize("padding, region", [
    (0.15, (11, 91, 78, 58)),    # 9 px (15 % of 60) on every side
    (0.5, (10, 70, 100, 100)),   # 30 px: (-10, 70)-(110, 170), clipped at the layer's left
])
def test_prepare_with_a_selection_sends_its_bounds_plus_padding_clipped_to_the_layer(plugin, krita, padding, region):
    doc = krita.createDocument(300, 200, "t", "GRAYA", "U8", "", 72.0)
    layer = layer_with(doc, bytes([128, 255]) * (250 * 150), (10, 20, 250, 150))
    sel = plugin.krita.Selection()
    sel.select(20, 100, 60, 40, 255)
    doc.setSelection(sel)
    job = plugin.core.prepare(doc, layer, plugin.core.Settings(padding=padding))
    assert job.selected == (20, 100, 60, 40)
    assert job.region == region
    assert len(job.pixels) == region[2] * region[3] * 2
    assert len(job.selection) == 250 * 150
    assert job.selection[(100 - 20) * 250 + (20 - 10)] == 255 and job.selection[0] == 0


def test_a_selection_beside_the_layer_is_an_error(plugin, krita):
    doc = krita.createDocument(300, 200, "t", "RGBA", "U8", "", 72.0)
    layer = layer_with(doc, bytes([1, 2, 3, 255]) * 100, (0, 0, 10, 10))
    sel = plugin.krita.Selection()
    sel.select(100, 100, 5, 5, 255)
    doc.setSelection(sel)
    with pytest.raises(plugin.core.PluginError, match="does not touch"):
        plugin.core.prepare(doc, layer, plugin.core.Settings())


def test_an_empty_layer_is_an_error(plugin, krita):
    doc = krita.createDocument(30, 20, "t", "RGBA", "U8", "", 72.0)
    layer = layer_with(doc, b"", (0, 0, 0, 0))
    with pytest.raises(plugin.core.PluginError, match="is empty"):
        plugin.core.prepare(doc, layer, plugin.core.Settings())


def test_target_is_the_active_paint_layer_or_the_layer_of_the_active_mask(plugin, krita):
    doc = krita.createDocument(30, 20, "t", "RGBA", "U8", "", 72.0)
    layer = layer_with(doc, bytes([1, 2, 3, 255]) * 4, (0, 0, 2, 2))
    mask = doc.createTransparencyMask("old mask")
    layer.addChildNode(mask, None)
    doc.setActiveNode(mask)
    assert plugin.core.target_layer(doc) is layer

    vector = doc.createNode("shapes", "vectorlayer")
    doc.rootNode().addChildNode(vector, None)
    doc.setActiveNode(vector)
    with pytest.raises(plugin.core.PluginError, match="vector layer.*Convert"):
        plugin.core.target_layer(doc)
    doc.setActiveNode(None)
    with pytest.raises(plugin.core.PluginError, match="paint layer"):
        plugin.core.target_layer(doc)
    with pytest.raises(plugin.core.PluginError, match="Open an image"):
        plugin.core.target_layer(None)


def test_cmyk_is_converted_on_a_clone_and_the_document_is_left_alone(plugin, krita):
    doc = krita.createDocument(8, 4, "t", "CMYKA", "U8", "", 72.0)
    cmyk = bytes([0, 255, 255, 0, 255]) * 32                   # pure red in the fake's naive conversion
    layer = layer_with(doc, cmyk, (0, 0, 8, 4))
    before = snapshot(doc)
    job = plugin.core.prepare(doc, layer, plugin.core.Settings())
    assert job.converted_from == "CMYKA/U8"
    assert (job.layout.channels, job.layout.sample_type, job.linear) == (4, "u8", False)
    assert job.protocol_pixels() == bytes([255, 0, 0, 255]) * 32  # protocol order R,G,B,A
    assert snapshot(doc) == before and layer.colorModel() == "CMYKA"
    assert krita.documents() == [doc]                          # the clone is gone


def test_decontaminated_colours_are_refused_for_colour_models_that_are_converted(plugin, krita):
    doc = krita.createDocument(8, 4, "t", "CMYKA", "U8", "", 72.0)
    layer = layer_with(doc, bytes([0, 255, 255, 0, 255]) * 32, (0, 0, 8, 4))
    with pytest.raises(plugin.core.PluginError, match="RGBA or grayscale.*Convert Image Color Space"):
        plugin.core.prepare(doc, layer, plugin.core.Settings(output="decontaminated"))
    assert krita.documents() == [doc]


# -- settings -------------------------------------------------------------------------------------------

def test_settings_survive_kritarc(plugin, krita):
    chosen = plugin.core.Settings(model="u2netp", output="decontaminated", refine=False, hardness=0.35,
                                  shift_edge=-4.5, feather=2.5, fill_holes=120, remove_specks=7, padding=0.6,
                                  quality="best", frames="playback", temporal=False)
    plugin.core.save_settings(chosen)
    assert all(isinstance(v, str) for v in krita.settings.values())
    assert plugin.core.load_settings() == chosen


def test_unreadable_or_out_of_range_settings_fall_back_to_the_defaults(plugin, krita):
    defaults = plugin.core.Settings()
    assert plugin.core.load_settings() == defaults  # nothing saved yet
    for key, text in [("hardness", "1.5"), ("feather", "wide"), ("fill_holes", "2.5"), ("padding", "-1"),
                      ("output", "sideways"), ("quality", "perfect"), ("frames", "sideways")]:
        krita.writeSetting("bgmask", key, text)
    assert plugin.core.load_settings() == defaults


def test_quality_is_sent_only_when_chosen(plugin):
    """"Daemon default" sends no `quality`: the daemon's own default applies."""
    assert "quality" not in plugin.core.Settings().options()
    assert plugin.core.Settings(quality="fast").options()["quality"] == "fast"
    assert list(plugin.core.QUALITIES) == ["", "fast", "balanced", "best"]


def test_number_settings_offer_what_the_daemon_accepts_with_its_defaults(plugin):
    from bgmask.protocol import NUMERIC_OPTIONS, RemoveOptions

    ranges = plugin.core.NUMBER_RANGES
    assert set(ranges) == set(NUMERIC_OPTIONS)
    for key, (low, high) in ranges.items():
        assert low == NUMERIC_OPTIONS[key][0] and high == min(NUMERIC_OPTIONS[key][1], plugin.core.MAX_AREA), key
        assert getattr(plugin.core.Settings(), key) == getattr(RemoveOptions(), key), key


# -- apply ----------------------------------------------------------------------------------------------

def make_job(plugin, krita, output="mask", selection=None):
    doc = krita.createDocument(60, 40, "t", "RGBA", "U8", "", 72.0)
    group = doc.createGroupLayer("group")
    doc.rootNode().addChildNode(group, None)
    layer = layer_with(doc, bytes([50, 100, 150, 255]) * (30 * 20), (25, 5, 30, 20), parent=group)
    if selection is not None:
        sel = plugin.krita.Selection()
        sel.select(*selection, 255)
        doc.setSelection(sel)
    job = plugin.core.prepare(doc, layer, plugin.core.Settings(model="u2netp", output=output))
    return doc, layer, job


def fake_mask(job):
    """A mask with a different value in every row, so misplaced rows show."""
    _, _, w, h = job.region
    return b"".join(bytes([(7 * r + 40) % 256]) * w for r in range(h))


def test_apply_adds_one_named_mask_aligned_with_the_layer_and_one_undo_removes_it(plugin, krita):
    doc, layer, job = make_job(plugin, krita)
    plugin.core.apply(job, fake_mask(job), "u2netp")
    masks = [c for c in layer.childNodes() if c.type() == "transparencymask"]
    assert [m.name() for m in masks] == ["Background Removal (u2netp)"]
    assert masks[0].pixelData(25, 5, 30, 20) == fake_mask(job)
    assert masks[0].pixelData(0, 0, 25, 40) == bytes(25 * 40)  # nothing outside the layer
    assert len(doc.undo_stack) == 1
    doc.undo()
    assert layer.childNodes() == []


def test_apply_with_a_selection_zeroes_the_mask_outside_it(plugin, krita):
    doc, layer, job = make_job(plugin, krita, selection=(30, 10, 8, 6))
    mask = fake_mask(job)
    plugin.core.apply(job, mask, "u2netp")
    (tmask,) = layer.childNodes()
    got = np.frombuffer(tmask.pixelData(25, 5, 30, 20), np.uint8).reshape(20, 30).copy()
    assert (got[5:11, 5:13] > 0).all()
    got[5:11, 5:13] = 0
    assert not got.any()


def test_selection_output_replaces_the_selection_and_adds_no_node(plugin, krita):
    doc, layer, job = make_job(plugin, krita, output="selection")
    old = plugin.krita.Selection()
    old.select(0, 0, 60, 40, 255)
    doc.setSelection(old)
    nodes = snapshot(doc)[0]
    plugin.core.apply(job, fake_mask(job), "u2netp")
    assert doc.selection().pixelData(25, 5, 30, 20) == fake_mask(job)
    assert doc.selection().pixelData(0, 0, 25, 40) == bytes(25 * 40)
    assert snapshot(doc)[0] == nodes


def test_layer_output_adds_a_copy_with_the_mask_above_the_layer_in_one_undo_step(plugin, krita):
    doc, layer, job = make_job(plugin, krita, output="layer")
    old = doc.createTransparencyMask("earlier mask")
    layer.addChildNode(old, None)
    doc.undo_stack.clear()
    group = layer.parentNode()
    plugin.core.apply(job, fake_mask(job), "u2netp")
    assert [n.name() for n in group.childNodes()] == ["subject", "subject (background removed)"]
    copy = group.childNodes()[1]
    assert [c.name() for c in copy.childNodes()] == ["earlier mask", "Background Removal (u2netp)"]
    assert copy.pixelData(25, 5, 30, 20) == layer.pixelData(25, 5, 30, 20)
    assert copy.childNodes()[1].pixelData(25, 5, 30, 20) == fake_mask(job)
    assert [c.name() for c in layer.childNodes()] == ["earlier mask"]
    doc.undo()
    assert [n.name() for n in group.childNodes()] == ["subject"]


def test_apply_after_the_layer_was_deleted_changes_nothing(plugin, krita):
    doc, layer, job = make_job(plugin, krita)
    layer.remove()
    before = snapshot(doc)
    with pytest.raises(plugin.core.PluginError, match="was removed"):
        plugin.core.apply(job, fake_mask(job), "u2netp")
    assert snapshot(doc) == before


def test_a_mask_of_the_wrong_size_is_refused(plugin, krita):
    doc, layer, job = make_job(plugin, krita)
    before = snapshot(doc)
    with pytest.raises(plugin.core.PluginError, match="byte mask"):
        plugin.core.apply(job, fake_mask(job)[:-1], "u2netp")
    assert snapshot(doc) == before


def test_status_line(plugin):
    status = {"version": "0.1.0", "device": "cpu", "provider": "CPUExecutionProvider", "default_model": "u2netp",
              "models": [{"name": "u2netp", "state": "loaded"}, {"name": "isnet-general-use", "state": "not_downloaded"}]}
    line = plugin.core.describe_status(status, None)
    assert "0.1.0" in line and "cpu" in line and "u2netp: loaded" in line
    assert "not downloaded" in plugin.core.describe_status(status, "isnet-general-use")
    assert plugin.core.describe_status(None, None, "connection refused") == "Daemon not connected: connection refused"


def test_status_line_says_why_the_gpu_is_not_used(plugin):
    note = "CUDA could not start: libcudnn.so.9 (cuDNN) is missing; ... Running on the CPU instead."
    status = {"version": "0.1.0", "device": "cpu", "provider": "CPUExecutionProvider", "default_model": "u2netp",
              "device_note": note, "models": [{"name": "u2netp", "state": "loaded", "provider": "CPUExecutionProvider"}]}
    assert plugin.core.describe_status(status, None).endswith(f"u2netp: loaded. GPU not used: {note}")


# -- with the real daemon -------------------------------------------------------------------------------

def test_photo_mask_matches_a_direct_request_for_the_same_pixels(plugin, krita, daemon, client_module):
    """Krita's B,G,R,A layer must reach the model as R,G,B: the mask equals a direct RGB request's."""
    rgba = photo_rgba()
    h, w = rgba.shape[:2]
    doc = krita.createDocument(400, 400, "t", "RGBA", "U8", "", 72.0)
    group = doc.createGroupLayer("group")
    doc.rootNode().addChildNode(group, None)
    layer = layer_with(doc, krita_order(rgba, "U8"), (-30, 17, w, h), parent=group)  # larger than the canvas
    job = plugin.core.prepare(doc, layer, plugin.core.Settings(model="u2netp"))
    client = client_module.Client(endpoint=daemon.endpoint, token=daemon.token)
    stages = []
    mask, model, colours = job.run(client, on_progress=lambda stage, fraction: stages.append(stage))
    assert colours is None
    plugin.core.apply(job, mask, model)

    direct = client.remove(rgba[..., :3].tobytes(), w, h, 3, "u8", model="u2netp")
    (tmask,) = layer.childNodes()
    assert tmask.name() == "Background Removal (u2netp)"
    got = tmask.pixelData(-30, 17, w, h)
    assert got == direct
    arr = np.frombuffer(got, np.uint8).reshape(h, w)
    assert arr[200:300, 200:300].mean() > 200 and min(arr[:40, :40].mean(), arr[:40, -40:].mean()) < 60
    assert stages  # the daemon reported progress


def photo_layer(plugin, krita, depth="U8"):
    """astronaut.jpg as an RGBA paint layer (Krita's B,G,R,A) at (0, 0), and its R,G,B,A samples."""
    rgba = photo_rgba()
    if depth == "U16":
        rgba = rgba.astype("<u2") * 257
    h, w = rgba.shape[:2]
    doc = krita.createDocument(w, h, "t", "RGBA", depth, "", 72.0)
    return doc, layer_with(doc, krita_order(rgba, depth), (0, 0, w, h)), rgba


def mask_of(data, w, h):
    return np.frombuffer(data, np.uint8).reshape(h, w)


def test_mask_options_do_what_their_names_say(plugin, krita, daemon, client_module):
    """What a user sees: shift edge +5 grows the subject by about 5 px all round, feather widens the edge,
    hardness narrows it; every mask is the daemon's own for the same options."""
    doc, layer, rgba = photo_layer(plugin, krita)
    h, w = rgba.shape[:2]
    client = client_module.Client(endpoint=daemon.endpoint, token=daemon.token)
    masks = {}
    for name, options in [("plain", {}), ("shift", {"shift_edge": 5.0}), ("feather", {"feather": 8.0}),
                          ("hard", {"hardness": 1.0}),
                          ("all", {"hardness": 0.5, "shift_edge": -2.0, "feather": 1.5, "fill_holes": 40,
                                   "remove_specks": 40, "refine": False})]:
        job = plugin.core.prepare(doc, layer, plugin.core.Settings(model="u2netp", **options))
        masks[name] = mask_of(job.run(client).mask, w, h)
        direct = client.remove(rgba.tobytes(), w, h, 4, "u8", model="u2netp", options=options)
        assert np.array_equal(masks[name], mask_of(direct, w, h)), name
    fg = masks["plain"] >= 128
    inner = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
    perimeter = fg[1:-1, 1:-1].sum() - inner.sum()
    grown = int((masks["shift"] >= 128).sum() - fg.sum())
    assert 0.7 < grown / (5 * perimeter) < 1.4, (grown, perimeter)

    def ramp(mask):
        return int(((mask > 5) & (mask < 250)).sum())

    assert ramp(masks["feather"]) > 1.3 * ramp(masks["plain"])
    assert ramp(masks["hard"]) < 0.5 * ramp(masks["plain"])


def test_selection_is_sent_as_region_and_padding(plugin, krita, daemon, client_module):
    """Only the padded selection is sent, yet the mask is the daemon's for the whole layer and that region."""
    doc, layer, rgba = photo_layer(plugin, krita)
    h, w = rgba.shape[:2]
    sel = plugin.krita.Selection()
    sel.select(150, 40, 200, 160, 255)
    doc.setSelection(sel)
    job = plugin.core.prepare(doc, layer, plugin.core.Settings(model="u2netp", padding=0.3))
    assert job.region == (90, 0, 320, 260)  # 60 px around the selection, clipped at the top
    client = client_module.Client(endpoint=daemon.endpoint, token=daemon.token)
    reply = job.run(client)
    plugin.core.apply(job, reply.mask, reply.model)
    (tmask,) = layer.childNodes()
    direct = client.remove(rgba.tobytes(), w, h, 4, "u8", model="u2netp",
                           options={"region": [150, 40, 200, 160], "padding": 0.3})
    assert tmask.pixelData(0, 0, w, h) == direct


@pytest.mark.parametrize("depth", ["U8", "U16"])
def test_decontaminated_layer(plugin, krita, daemon, client_module, depth):
    """A new layer above the source with the daemon's decontaminated colours, in the layer's precision and
    Krita's channel order, with the layer's own alpha, carrying the soft mask; the source is untouched and
    one undo removes the new layer."""
    doc, layer, rgba = photo_layer(plugin, krita, depth)
    h, w = rgba.shape[:2]
    rgba[:, :20, 3] //= 2  # some half-transparent pixels: their alpha must survive
    layer.setPixelData(krita_order(rgba, depth), 0, 0, w, h)
    doc.undo_stack.clear()
    before = layer.pixelData(0, 0, w, h)
    job = plugin.core.prepare(doc, layer, plugin.core.Settings(model="u2netp", output="decontaminated"))
    client = client_module.Client(endpoint=daemon.endpoint, token=daemon.token)
    reply = job.run(client)
    message = plugin.core.apply(job, reply.mask, reply.model, reply.colours)

    assert [n.name() for n in doc.topLevelNodes()] == ["subject", "subject (decontaminated)"], message
    copy = doc.topLevelNodes()[1]
    assert layer.pixelData(0, 0, w, h) == before and layer.childNodes() == []
    direct = client.remove_full(rgba.tobytes(), w, h, 4, depth.lower(), linear=depth == "U16", model="u2netp",
                                options={"decontaminate": True})
    colours = np.frombuffer(direct.extra[0], rgba.dtype).reshape(h, w, 3)
    assert copy.pixelData(0, 0, w, h) == krita_order(np.dstack([colours, rgba[..., 3]]), depth)
    assert copy.pixelData(0, 0, w, h) != before, "no edge colour changed"
    (tmask,) = copy.childNodes()
    assert tmask.pixelData(0, 0, w, h) == direct.mask
    assert len(doc.undo_stack) == 1
    doc.undo()
    assert [n.name() for n in doc.topLevelNodes()] == ["subject"]


def test_cancelled_request_changes_nothing(plugin, krita, daemon, client_module):
    rgba = photo_rgba("chelsea.jpg")
    h, w = rgba.shape[:2]
    doc = krita.createDocument(w, h, "t", "RGBA", "U8", "", 72.0)
    layer_with(doc, krita_order(rgba, "U8"), (0, 0, w, h))
    job = plugin.core.prepare(doc, doc.activeNode(), plugin.core.Settings(model="u2netp"))
    before = snapshot(doc)
    client = client_module.Client(endpoint=daemon.endpoint, token=daemon.token)
    with pytest.raises(client_module.BgmaskError) as err:
        job.run(client, cancel=lambda: True)
    assert err.value.code == "cancelled"
    assert snapshot(doc) == before


def test_unreachable_daemon_is_a_clear_error(plugin, krita, client_module):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again below: nothing listens there
    doc = krita.createDocument(16, 16, "t", "RGBA", "U8", "", 72.0)
    layer_with(doc, bytes([9, 9, 9, 255]) * 256, (0, 0, 16, 16))
    job = plugin.core.prepare(doc, doc.activeNode(), plugin.core.Settings())
    client = client_module.Client(endpoint=f"tcp://127.0.0.1:{port}", token="x", timeout=5)
    with pytest.raises(client_module.BgmaskError) as err:
        job.run(client)
    assert err.value.code == "not_running" and err.value.message


def _qt_module(monkeypatch, loaded: list, importable: list) -> types.ModuleType:
    """plugins/krita/bgmask/qt.py run with `loaded` PyQt packages already imported (by Krita's own bindings)
    and `importable` ones only on the path; stand-in modules, as the host has neither PyQt."""
    monkeypatch.setitem(sys.modules, "krita", types.ModuleType("krita"))
    for name in ("PyQt5", "PyQt6"):
        for module in ("QtCore", "QtGui", "QtWidgets"):
            monkeypatch.delitem(sys.modules, f"{name}.{module}", raising=False)
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name in loaded:
        monkeypatch.setitem(sys.modules, f"{name}.QtCore", types.ModuleType(f"{name}.QtCore"))
    real_import = importlib.import_module

    def import_module(name: str, package=None):
        binding = name.split(".")[0]
        if binding in ("PyQt5", "PyQt6"):
            if name not in sys.modules and binding not in loaded + importable:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return sys.modules.setdefault(name, types.ModuleType(name))
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    spec = importlib.util.spec_from_file_location("bgmask_qt_under_test", PLUGIN / "qt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("loaded, importable, expected", [
    (["PyQt6"], ["PyQt5"], "PyQt6"),   # Krita 6: its PyQt6 is loaded; a PyQt5 on the path must not be taken
    (["PyQt5"], ["PyQt6"], "PyQt5"),   # Krita 5 with a system PyQt6 installed beside it
    ([], ["PyQt5", "PyQt6"], "PyQt5"),  # outside Krita: the Qt 5 bindings first
    ([], ["PyQt6"], "PyQt6"),
])
def test_qt_bindings_are_the_ones_krita_loaded(monkeypatch, loaded, importable, expected):
    qt = _qt_module(monkeypatch, loaded, importable)
    assert qt.API == expected
    assert [qt.QtCore.__name__, qt.QtGui.__name__, qt.QtWidgets.__name__] == \
        [f"{expected}.QtCore", f"{expected}.QtGui", f"{expected}.QtWidgets"]


def test_no_qt_bindings_is_a_clear_error(monkeypatch):
    with pytest.raises(ImportError, match="needs PyQt5 .Krita 5. or PyQt6 .Krita 6."):
        _qt_module(monkeypatch, [], [])
