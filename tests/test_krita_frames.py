"""The Krita plugin's frames path (plugins/krita/bgmask/frames.py) on the host, with the fake `krita` module.

The fake animates nodes the way Krita 5.2.9, 5.3.4.1 and 6.0.4.1 were seen to (tests/fakes/fake_krita.py);
tests/test_krita_hostapp.py runs the same path in the real applications. Masks come from the real daemon
where the test says so.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from test_krita_logic import client_module, krita, krita_order, layer_with, photo_rgba, plugin, snapshot  # noqa: F401

KEYS = [0, 2, 3, 5]
STEP = 24


@pytest.fixture
def frames(plugin):  # noqa: F811 - the fixture imported above
    return importlib.import_module("krita_bgmask.frames")


def animated_layer(krita, keys=KEYS, canvas=(400, 300), frame=None):  # noqa: F811
    """A document with a paint layer keyed at `keys` through the timeline action, as a user makes one; frame(i)
    gives keyframe i's R,G,B,A pixels over the canvas (default: a flat colour with a square that moves)."""
    w, h = canvas
    doc = krita.createDocument(w, h, "anim", "RGBA", "U8", "", 72.0)
    layer = layer_with(doc, b"", (0, 0, 0, 0))
    krita.window.addView(doc)
    layer.enableAnimation()
    for i, t in enumerate(keys):
        doc.setCurrentTime(t)
        krita.action("add_blank_frame").trigger()
        if frame is None:
            rgba = np.zeros((h, w, 4), np.uint8)
            rgba[..., :] = (20 * i, 100, 200, 255)
            rgba[10:30, 10 + 5 * i:30 + 5 * i] = (250, 250, 250, 255)
        else:
            rgba = frame(i)
        layer.setPixelData(krita_order(rgba, "U8"), 0, 0, w, h)
    for t in set(layer._keys or {}) - set(keys):
        del layer._keys[t]  # the frame 0 Krita keys with the first keyframe: deleted, as a user can
    doc.setCurrentTime(0)
    doc.undo_stack.clear()
    doc.setModified(False)
    return doc, layer


def run_steps(krita, steps, between=None):  # noqa: F811
    """Drive frames.apply as the docker does: back to the event loop at every pause; its sentence at the end."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        krita.process_events()
        if between is not None:
            between()


def read_all(steps):
    """Drive frames.prepare to its end, as the docker does between returns to the event loop: its job."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def recorded_reads(monkeypatch, layer):
    """The times the plugin reads `layer` at (Node.pixelDataAtTime), in order; the reads still happen."""
    reads = []
    real = type(layer).pixelDataAtTime
    monkeypatch.setattr(type(layer), "pixelDataAtTime", lambda self, *args: reads.append(args[-1]) or real(self, *args))
    return reads


def settings(plugin, **choices):  # noqa: F811
    return plugin.core.Settings(model="u2netp", **dict({"frames": "keyframes"}, **choices))


def row_masks(job):
    """One mask per time, each a different flat value, so a mask in the wrong keyframe shows."""
    _, _, w, h = job.region
    return [bytes([40 + 30 * i]) * (w * h) for i in range(len(job.times))]


# -- which frames --------------------------------------------------------------------------------------------

def test_keyframes_scope_is_the_layers_keyframes(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita)
    assert frames.frame_plan(doc, layer, "keyframes") == (KEYS, KEYS, [])


def test_playback_scope_is_every_frame_and_held_frames_show_the_keyframe_before(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita, keys=[2, 3, 5])
    doc.setFullClipRangeStartTime(1)
    doc.setFullClipRangeEndTime(4)
    times, sources, unmasked = frames.frame_plan(doc, layer, "playback")
    assert times == [1, 2, 3, 4] and sources == [None, 2, 3, 3]
    assert unmasked == [0, 5]  # frames outside the range keep showing the layer


def test_a_layer_keyed_late_gets_an_opaque_mask_before_its_first_keyframe(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita, keys=[3, 4])
    assert frames.frame_plan(doc, layer, "keyframes") == ([3, 4], [3, 4], [0])


def test_only_an_animated_layer_with_a_frames_choice_takes_the_frames_path(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita)
    still = layer_with(doc, bytes([1, 2, 3, 255]) * 4, (0, 0, 2, 2), name="still")
    assert frames.wanted(layer, settings(plugin))
    assert not frames.wanted(layer, settings(plugin, frames=""))
    assert not frames.wanted(still, settings(plugin))  # a still layer gets its one mask, whatever the choice


# -- prepare ---------------------------------------------------------------------------------------------

def test_prepare_reads_each_keyframe_over_the_canvas_once_and_changes_nothing(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita)
    doc.setFullClipRangeEndTime(4)  # playback 0..4: frames 1 and 4 hold keyframes 0 and 3
    before = snapshot(doc), doc.currentTime()
    job = read_all(frames.prepare(doc, layer, settings(plugin, frames="playback")))
    assert (snapshot(doc), doc.currentTime()) == before
    assert job.region == (0, 0, 400, 300) and job.times == [0, 1, 2, 3, 4] and job.unmasked == [5]
    assert job.sources == [0, 0, 2, 3, 3] and sorted(job.frames) == [0, 2, 3]
    for key in (0, 2, 3):
        assert job.frames[key] == layer.pixelDataAtTime(0, 0, 400, 300, key)
    assert (job.layout.channels, job.layout.sample_type, job.linear) == (4, "u8", False)


@pytest.mark.parametrize("choices, match", [
    ({"output": "selection"}, "Frames get a keyframed transparency mask"),
    ({"output": "decontaminated"}, "set Output to Transparency mask"),
    ({"frames": "sideways"}, "Unknown frame choice"),
])
def test_frames_with_other_outputs_or_choices_are_refused(plugin, frames, krita, choices, match):  # noqa: F811
    doc, layer = animated_layer(krita)
    before = snapshot(doc)
    with pytest.raises(plugin.core.PluginError, match=match):
        read_all(frames.prepare(doc, layer, settings(plugin, **choices)))
    assert snapshot(doc) == before


def test_an_animated_layer_without_keyframes_is_an_error(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita, keys=[])
    with pytest.raises(plugin.core.PluginError, match="no keyframes between frame 0 and frame 100"):
        read_all(frames.prepare(doc, layer, settings(plugin)))


def test_a_playback_range_before_the_first_keyframe_is_an_error(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita, keys=[8])
    doc.setFullClipRangeEndTime(6)
    with pytest.raises(plugin.core.PluginError, match="shows nothing in the playback range .frames 0 to 6.: its "
                                                      "first keyframe is at frame 8"):
        read_all(frames.prepare(doc, layer, settings(plugin, frames="playback")))


def test_frames_of_a_colour_model_the_daemon_cannot_take_are_refused(plugin, frames, krita):  # noqa: F811
    doc = krita.createDocument(8, 4, "t", "CMYKA", "U8", "", 72.0)
    layer = layer_with(doc, bytes([0, 255, 255, 0, 255]) * 32, (0, 0, 8, 4))
    layer.enableAnimation()
    with pytest.raises(plugin.core.PluginError, match="CMYKA/U8.*Convert the image first"):
        read_all(frames.prepare(doc, layer, settings(plugin)))


def test_more_keyframes_than_fit_in_memory_are_refused_before_any_is_read(plugin, frames, krita, monkeypatch):  # noqa: F811
    """4 RGBA keyframes of 400x300 (1.8 MiB) and their 4 masks, 3 copies each (1.4 MiB), against a 3 MiB cap."""
    doc, layer = animated_layer(krita)
    monkeypatch.setattr(frames, "MAX_FRAME_BYTES", 3 << 20)
    reads = []
    monkeypatch.setattr(type(layer), "pixelDataAtTime", lambda self, *args: reads.append(args) or b"")
    with pytest.raises(plugin.core.PluginError) as info:
        read_all(frames.prepare(doc, layer, settings(plugin)))
    assert str(info.value).startswith("4 keyframes of 400x300 need about 3 MB (the frames read and 3 copies of "
                                      "each mask); at most 3 MB can be held at once. Choose 'Every frame of "
                                      "the playback range'")
    assert "Narrow" not in str(info.value) and reads == []


def test_a_long_playback_range_over_one_keyframe_is_refused_before_any_is_read(plugin, frames, krita, monkeypatch):  # noqa: F811
    """One keyframe over Krita's default range 0..100 is one frame read but 101 masks held, 3 copies each:
    34.7 MB of 400x300 masks, refused under a 32 MB cap that the single frame (0.5 MB) fits many times."""
    doc, layer = animated_layer(krita, keys=[0])
    assert (doc.playBackStartTime(), doc.playBackEndTime()) == (0, 100)
    monkeypatch.setattr(frames, "MAX_FRAME_BYTES", 32 << 20)
    reads = recorded_reads(monkeypatch, layer)
    with pytest.raises(plugin.core.PluginError, match=r"^The playback range \(frames 0 to 100\) has 101 frames "
                                                      r"of 400x300: they need about 35 MB .*at most 32 MB.* Narrow "
                                                      r"the playback range"):
        read_all(frames.prepare(doc, layer, settings(plugin, frames="playback")))
    assert reads == []
    doc.setFullClipRangeEndTime(80)  # 81 masks: 28 MB
    assert len(read_all(frames.prepare(doc, layer, settings(plugin, frames="playback"))).times) == 81


def test_frames_are_read_one_per_step_after_every_check(plugin, frames, krita, monkeypatch):  # noqa: F811
    """The docker returns to Krita's event loop between frames (progress, Cancel): prepare reads one frame per
    step, says which, and closing it between steps reads no more."""
    doc, layer = animated_layer(krita)
    reads = recorded_reads(monkeypatch, layer)
    steps = frames.prepare(doc, layer, settings(plugin))
    seen = []
    for _ in range(3):
        seen.append((next(steps), list(reads)))
    assert seen == [((0, 4), []), ((1, 4), [0]), ((2, 4), [0, 2])]
    steps.close()  # Cancel
    assert reads == [0, 2]
    with pytest.raises(plugin.core.PluginError, match="Frames get a keyframed"):
        next(frames.prepare(doc, layer, settings(plugin, output="selection")))  # refused before a step


# -- apply -----------------------------------------------------------------------------------------------

def test_apply_keys_the_mask_on_every_frame_in_one_undo_step(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita)
    doc.setCurrentTime(3)
    doc.undo_stack.clear()
    job = read_all(frames.prepare(doc, layer, settings(plugin)))
    masks = row_masks(job)
    message = run_steps(krita, frames.apply(job, frames.FramesReply(masks, "u2netp")))

    assert message == 'Added "Background Removal (u2netp)" to "subject", keyed on 4 frames (0 to 5).'
    (tmask,) = layer.childNodes()
    assert tmask.type() == "transparencymask" and tmask.name() == "Background Removal (u2netp)"
    assert [t for t in range(8) if tmask.hasKeyframeAtTime(t)] == KEYS
    for t, mask in zip(KEYS, masks):
        assert tmask.pixelDataAtTime(0, 0, 400, 300, t) == mask, t
    assert [text for text, _, _ in doc.undo_stack] == ["Add Layer"]   # no time switch, no keyframe step
    assert doc.currentTime() == 3
    assert krita.documents() == [doc] and krita.activeDocument() is doc  # the temporary image is gone
    assert krita.window.closed_while_shown == []  # the user's view came back before it closed
    assert krita.early_activations == []  # the mask was activated only once the event loop had run
    doc.undo()
    assert layer.childNodes() == [] and [t for t in range(8) if layer.hasKeyframeAtTime(t)] == KEYS


def test_a_view_of_another_image_is_active_before_the_temporary_image_closes_even_if_the_users_went(  # noqa: F811
        plugin, frames, krita):
    """The user closes the view they clicked in while the mask is built (the image stays open in a second
    view): that other view becomes the active one before the temporary image closes, and the mask is added."""
    doc, layer = animated_layer(krita)
    clicked_in = krita.window.views()[0]
    second = krita.window.addView(doc)
    krita.window.showView(clicked_in)
    job = read_all(frames.prepare(doc, layer, settings(plugin)))
    run_steps(krita, frames.apply(job, frames.FramesReply(row_masks(job), "u2netp")),
              between=lambda: krita.window._close_views([clicked_in]))
    assert krita.window.closed_while_shown == [] and krita.window.activeView() is second
    assert [c.type() for c in layer.childNodes()] == ["transparencymask"]


def test_apply_gives_frames_outside_the_playback_range_an_opaque_mask(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita)
    doc.setFullClipRangeStartTime(1)
    doc.setFullClipRangeEndTime(4)
    job = read_all(frames.prepare(doc, layer, settings(plugin, frames="playback")))
    masks = row_masks(job)
    run_steps(krita, frames.apply(job, frames.FramesReply(masks, "u2netp")))
    (tmask,) = layer.childNodes()
    assert [t for t in range(8) if tmask.hasKeyframeAtTime(t)] == [0, 1, 2, 3, 4, 5]
    assert [tmask.pixelDataAtTime(0, 0, 400, 300, t) for t in (1, 2, 3, 4)] == masks
    assert tmask.pixelDataAtTime(0, 0, 400, 300, 0) == tmask.pixelDataAtTime(0, 0, 400, 300, 5) == b"\xff" * 120000


def test_apply_after_the_layer_was_deleted_changes_nothing(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita)
    job = read_all(frames.prepare(doc, layer, settings(plugin)))
    layer.remove()
    before = snapshot(doc)
    with pytest.raises(plugin.core.PluginError, match="was removed"):
        run_steps(krita, frames.apply(job, frames.FramesReply(row_masks(job), "u2netp")))
    assert snapshot(doc) == before and krita.documents() == [doc]
    assert krita.window.closed_while_shown == [] and krita.activeDocument() is doc


def test_another_image_activated_while_the_mask_is_built_stops_it_and_changes_nothing(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita)
    other = krita.createDocument(50, 50, "other", "RGBA", "U8", "", 72.0)
    other_view = krita.window.addView(other)
    krita.window.showView(krita.window.views()[0])
    job = read_all(frames.prepare(doc, layer, settings(plugin)))
    before = snapshot(doc), snapshot(other)
    with pytest.raises(plugin.core.PluginError, match="Another image became active"):
        run_steps(krita, frames.apply(job, frames.FramesReply(row_masks(job), "u2netp")),
                  between=lambda: krita.window.showView(other_view))
    assert (snapshot(doc), snapshot(other)) == before
    assert krita.documents() == [doc, other]


def test_daemon_masks_that_do_not_fit_the_frames_are_refused(plugin, frames, krita):  # noqa: F811
    doc, layer = animated_layer(krita)
    job = read_all(frames.prepare(doc, layer, settings(plugin)))
    before = snapshot(doc)
    with pytest.raises(plugin.core.PluginError, match="do not fit the 4 frames of 400x300"):
        run_steps(krita, frames.apply(job, frames.FramesReply(row_masks(job)[:3], "u2netp")))
    assert snapshot(doc) == before and krita.documents() == [doc]


# -- with the real daemon -----------------------------------------------------------------------------------

def photo_frame(i: int) -> np.ndarray:
    """astronaut.jpg on a 400x300 canvas, moved STEP px right per keyframe."""
    rgba = photo_rgba()
    canvas = np.zeros((300, 400, 4), np.uint8)
    x = -40 + STEP * i
    canvas[:, max(0, x):] = rgba[30:330, max(0, -x):max(0, -x) + 400 - max(0, x)]
    return canvas


def test_frames_are_one_temporal_sequence_and_each_keyframe_gets_its_mask(plugin, frames, krita, daemon,  # noqa: F811
                                                                          client_module):  # noqa: F811
    doc, layer = animated_layer(krita, frame=photo_frame)
    job = read_all(frames.prepare(doc, layer, settings(plugin)))
    client = client_module.Client(endpoint=daemon.endpoint, token=daemon.token)
    seen = []
    reply = job.run(client, on_progress=lambda stage, fraction, frame: seen.append(frame))
    direct = client.remove_frames([photo_frame(i).tobytes() for i in range(4)], 400, 300, 4, "u8", model="u2netp")
    assert reply.masks == [r.mask for r in direct] and reply.model == "u2netp"
    indices = [index for index, _ in seen]  # two frames in flight: the progress still never goes back
    assert indices == sorted(indices) and set(indices) == {0, 1, 2, 3} and {count for _, count in seen} == {4}
    run_steps(krita, frames.apply(job, reply))
    (tmask,) = layer.childNodes()
    centres = []
    for t, mask in zip(KEYS, reply.masks):
        got = np.frombuffer(tmask.pixelDataAtTime(0, 0, 400, 300, t), np.uint8).reshape(300, 400)
        assert got.tobytes() == mask and got.min() == 0 and got.max() == 255
        assert (got < 10).mean() > 0.2                       # the background is masked out in every frame
        centres.append(np.nonzero(got >= 128)[1].mean())
    assert all(0.6 * STEP < d < 1.4 * STEP for d in np.diff(centres)), centres  # the mask follows the subject


def test_temporal_off_is_sent_as_independent_frames(plugin, frames, krita, daemon, client_module):  # noqa: F811
    doc, layer = animated_layer(krita, keys=[0, 1], frame=photo_frame)
    job = read_all(frames.prepare(doc, layer, settings(plugin, temporal=False)))
    client = client_module.Client(endpoint=daemon.endpoint, token=daemon.token)
    independent = [client.remove(photo_frame(i).tobytes(), 400, 300, 4, "u8", model="u2netp") for i in range(2)]
    assert job.run(client).masks == independent


def test_cancelled_frames_change_nothing(plugin, frames, krita, daemon, client_module):  # noqa: F811
    doc, layer = animated_layer(krita, frame=photo_frame)
    job = read_all(frames.prepare(doc, layer, settings(plugin)))
    before = snapshot(doc)
    client = client_module.Client(endpoint=daemon.endpoint, token=daemon.token)
    with pytest.raises(client_module.BgmaskError) as err:
        job.run(client, cancel=lambda: True)
    assert err.value.code == "cancelled" and snapshot(doc) == before


@pytest.mark.parametrize("broken, match", [("missing", "no add_blank_frame action"),
                                           ("inert", "did not make a keyframe at frame 0")])
def test_a_keyframe_action_that_is_missing_or_does_nothing_changes_nothing(plugin, frames, krita, monkeypatch,  # noqa: F811
                                                                           broken, match):
    doc, layer = animated_layer(krita)
    job = read_all(frames.prepare(doc, layer, settings(plugin)))
    if broken == "missing":
        monkeypatch.setattr(type(krita), "ACTIONS", ())
    else:
        monkeypatch.setattr(plugin.krita.Action, "trigger", lambda self: None)
    before = snapshot(doc)
    with pytest.raises(plugin.core.PluginError, match=match):
        run_steps(krita, frames.apply(job, frames.FramesReply(row_masks(job), "u2netp")))
    assert snapshot(doc) == before and krita.documents() == [doc]
    assert krita.window.closed_while_shown == [] and krita.activeDocument() is doc
