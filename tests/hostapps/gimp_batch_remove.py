"""In-GIMP test of the Remove Background plug-in, run by run-gimp-test.sh through python-fu-eval.

Each case builds an image from a real photo ($HOSTAPPS_DATA/*.jpg) in some precision and layout, runs
the plug-in's procedure non-interactively through the PDB against the daemon named by BGMASK_ENDPOINT,
and records what a user would see: status and message, the mask's size, offsets and values, whether
the layer's pixels changed, and (with a display, i.e. HOSTAPPS_GIMP_GUI=1) whether one Ctrl+Z gives
back the image exactly as it was. Some cases also dump pixels and masks beside the JSON, for the test to
compare with its own daemon requests. The judging is done by tests/test_gimp_hostapp.py from the JSON this
writes to $HOSTAPPS_RESULT; "ok" only says that every case ran.

Environment: BGMASK_TEST_CASES (comma-separated case names; default all but "unreachable"),
BGMASK_TEST_MODEL (default u2netp).
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
from array import array

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Babl", "0.1")
from gi.repository import Babl, Gegl, Gimp, Gio  # noqa: E402

REMOVE = "plug-in-bgmask-remove-background"
SELECT = "plug-in-bgmask-select-subject"
RESULT = os.environ["HOSTAPPS_RESULT"]
OUT = os.path.dirname(RESULT)
DATA = os.environ["HOSTAPPS_DATA"]
MODEL = os.environ.get("BGMASK_TEST_MODEL", "u2netp")
GUI = bool(os.environ.get("DISPLAY"))
SOFT_LOW, SOFT_HIGH = 0.02, 0.98  # values strictly between these count as soft (neither bg nor fg)


def rect(x, y, w, h):
    return Gegl.Rectangle.new(x, y, w, h)


def offsets(item):
    _, x, y = item.get_offsets()
    return [x, y]


def read(drawable, fmt=None):
    """The drawable's bytes, in its own format unless told otherwise."""
    fmt = fmt or Babl.format_get_encoding(drawable.get_format())
    box = rect(0, 0, drawable.get_width(), drawable.get_height())
    return bytes(drawable.get_buffer().get(box, 1.0, fmt, Gegl.AbyssPolicy.CLAMP))


def values(drawable):
    """A one-channel drawable as floats in [0, 1], row by row."""
    return array("f", read(drawable, "Y float"))


def dump(name, data):
    """Bytes for the test to read (run-gimp-test.sh copies everything beside result.json back)."""
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def digest(drawable):
    return hashlib.sha1(read(drawable)).hexdigest() if drawable is not None else None


def snapshot(image):
    """Everything the plug-in may change, so that 'left untouched' and 'undo restores' can be compared."""
    layers = [[layer.get_name(), offsets(layer), layer.get_width(), layer.get_height(), digest(layer),
               digest(layer.get_mask())] for layer in image.get_layers()]
    return {"layers": layers, "selection": digest(image.get_selection()),
            "channels": len(image.get_channels()), "size": [image.get_width(), image.get_height()]}


def stats(vals, width, inside=None):
    """min/max/mean and the soft and foreground fractions of `vals`; `inside` (x, y, w, h) limits them to
    a rectangle and adds the largest value outside it."""
    if inside is None:
        chosen, outside_max = vals, None
    else:
        x0, y0, w, h = inside
        chosen, outside_max = array("f"), 0.0
        for y in range(len(vals) // width):
            row = vals[y * width:(y + 1) * width]
            if y0 <= y < y0 + h:
                chosen.extend(row[x0:x0 + w])
                rest = list(row[:x0]) + list(row[x0 + w:])
            else:
                rest = row
            if rest:
                outside_max = max(outside_max, max(rest))
    n = len(chosen)
    result = {"min": min(chosen), "max": max(chosen), "mean": sum(chosen) / n,
              "soft": sum(1 for v in chosen if SOFT_LOW < v < SOFT_HIGH) / n,
              "fg": sum(1 for v in chosen if v >= 0.5) / n,
              "levels": len({round(v * 255) for v in chosen})}  # a hard mask has 2, a soft one many
    if outside_max is not None:
        result["outside_max"] = outside_max
    return result


def mask_info(layer, inside=None):
    """The layer mask's geometry, format and values; `inside` (layer-local x, y, w, h) as in stats()."""
    mask = layer.get_mask()
    if mask is None:
        return None
    return {"size": [mask.get_width(), mask.get_height()], "offsets": offsets(mask),
            "format": Babl.format_get_encoding(mask.get_format()), "digest": digest(mask),
            "stats": stats(values(mask), mask.get_width(), inside)}


def run(name, image, drawables, run_mode=Gimp.RunMode.NONINTERACTIVE, **args):
    """Call the procedure through the PDB, as a script would; returns (status nick, message)."""
    proc = Gimp.get_pdb().lookup_procedure(name)
    config = proc.create_config()
    config.set_property("run-mode", run_mode)
    config.set_property("image", image)
    config.set_core_object_array("drawables", drawables)
    for key, value in dict({"model": MODEL}, **args).items():
        config.set_property(key.replace("_", "-"), value)
    values_ = proc.run(config)
    status = values_.index(0).value_nick
    message = values_.index(1) if values_.length() > 1 else None
    return status, message


def load(name, precision=None, gray=False, indexed=False, alpha=False):
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(DATA, name)))
    while not image.undo_is_enabled():  # GIMP 3.0 hands images loaded through the PDB with undo off
        image.undo_enable()
    if gray:
        image.convert_grayscale()
    if indexed:
        image.convert_indexed(Gimp.ConvertDitherType.NONE, Gimp.ConvertPaletteType.GENERATE, 64, False,
                              False, "")
    if precision:
        image.convert_precision(getattr(Gimp.Precision, precision))
    layer = image.get_layers()[0]
    if alpha:
        layer.add_alpha()
    return image, layer


def add_layer_from(image, name, size, position):
    """A copy of photo `name`, scaled to `size`, as a new layer at `position` (it may stick out)."""
    other = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(DATA, name)))
    layer = Gimp.Layer.new_from_drawable(other.get_layers()[0], image)
    other.delete()
    image.insert_layer(layer, None, 0)
    layer.scale(size[0], size[1], False)
    layer.set_offsets(*position)
    return layer


class Case:
    """One image on screen (in the GUI), its 'before' state, and the undo check."""

    def __init__(self, image):
        self.image = image
        self.display = None
        if GUI:
            self.display = Gimp.Display.new(image)
            Gimp.displays_flush()
            time.sleep(0.5)  # let the new display become the active one, which Ctrl+Z acts on
        image.clean_all()
        self.before = snapshot(image)

    def untouched(self):
        return snapshot(self.image) == self.before

    def undo_restores(self):
        """Press Ctrl+Z once in GIMP's window (GIMP 3 has no PDB procedure for undo) and compare."""
        if not GUI:
            return None
        subprocess.run(["xdotool", "mousemove", "640", "420", "key", "ctrl+z"], check=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if self.untouched():
                return not self.image.is_dirty()
        return False

    def close(self):
        if self.display is not None:
            self.display.delete()  # also deletes the image: it was its last display
        else:
            self.image.delete()


def case_layer(image, layer, inside=None, dump_as=None, **args):
    """Run on one layer with a layer-mask output and describe the result; with `dump_as`, also dump the
    layer's pixels (R'G'B' u8) and the mask (Y u8) under that name."""
    case = Case(image)
    pixels = digest(layer)
    status, message = run(REMOVE, image, [layer], **args)
    if dump_as and layer.get_mask() is not None:
        dump(dump_as + ".layer", read(layer, "R'G'B' u8"))
        dump(dump_as + ".mask", read(layer.get_mask(), "Y u8"))
    result = {"status": status, "message": message, "layer_size": [layer.get_width(), layer.get_height()],
              "layer_offsets": offsets(layer), "image_size": [image.get_width(), image.get_height()],
              "precision": image.get_precision().value_nick, "pixels_unchanged": digest(layer) == pixels,
              "mask": mask_info(layer, inside), "layers": len(image.get_layers())}
    if status == "success":
        result["undo_restores"] = case.undo_restores()
    else:
        result["untouched"] = case.untouched()
    case.close()
    return result


def c_rgb8():
    return case_layer(*load("astronaut.jpg"), dump_as="rgb8")


def c_rgba16_linear():
    return case_layer(*load("chelsea.jpg", precision="U16_LINEAR", alpha=True))


def c_gray_f32():
    return case_layer(*load("coffee.jpg", precision="FLOAT_PERCEPTUAL", gray=True))


def c_graya_half_linear():
    return case_layer(*load("astronaut.jpg", precision="HALF_LINEAR", gray=True, alpha=True))


def c_rgb_u32():
    return case_layer(*load("chelsea.jpg", precision="U32_NON_LINEAR"))


def c_indexed():
    return case_layer(*load("coffee.jpg", indexed=True))


def c_no_refine():
    return case_layer(*load("astronaut.jpg"), refine=False)


def c_offset_layer():
    image = Gimp.Image.new(640, 480, Gimp.ImageBaseType.RGB)
    layer = add_layer_from(image, "astronaut.jpg", (300, 300), (420, 260))  # sticks out right and below
    return case_layer(image, layer)


def existing(policy):
    image, layer = load("astronaut.jpg")
    mask = layer.create_mask(Gimp.AddMaskType.WHITE)
    layer.add_mask(mask)
    half = layer.get_width() // 2
    mask.get_buffer().set(rect(0, 0, half, layer.get_height()), "Y u8", bytes(half * layer.get_height()))
    mask.get_buffer().flush()
    mask.update(0, 0, half, layer.get_height())
    # the old mask's black left half is the "inside" rectangle: its stats, and the max of the right half
    return case_layer(image, layer, inside=(0, 0, half, layer.get_height()), existing_mask=policy)


def c_existing_intersect():
    return existing("intersect")


def c_existing_replace():
    return existing("replace")


def c_existing_cancel():
    return existing("cancel")


SELECTION = (150, 40, 200, 160)  # around the astronaut's head, in image coordinates


def c_selection_mask():
    image, layer = load("astronaut.jpg")
    image.select_rectangle(Gimp.ChannelOps.REPLACE, *SELECTION)
    return case_layer(image, layer, inside=SELECTION, dump_as="selection_mask")


# Every mask option at once; the shift dominates the change in area
MASK_OPTIONS = {"shift_edge": 5.0, "hardness": 0.5, "feather": 1.5, "fill_holes": 40, "remove_specks": 40}


def c_mask_options():
    """The mask options through the PDB (the test compares the dumped mask with its own request, and with
    rgb8's, the same photo without options)."""
    result = case_layer(*load("astronaut.jpg"), dump_as="mask_options", **MASK_OPTIONS)
    result["args"] = MASK_OPTIONS
    return result


def c_decontaminated():
    """Output "new layer with decontaminated colours" on a 16-bit linear RGBA layer: a copy above it in the
    same format; the source, the copy and its mask are dumped in their own formats."""
    image, layer = load("chelsea.jpg", precision="U16_LINEAR", alpha=True)
    case = Case(image)
    status, message = run(REMOVE, image, [layer], output="decontaminated")
    layers = image.get_layers()
    copy = layers[0]
    result = {"status": status, "message": message, "layers": len(layers), "copy_name": copy.get_name(),
              "copy_is_above": layers.index(layer) == 1, "size": [layer.get_width(), layer.get_height()],
              "original_untouched": snapshot(image)["layers"][1] == case.before["layers"][0],
              "format": Babl.format_get_encoding(layer.get_format()),
              "copy_format": Babl.format_get_encoding(copy.get_format()), "mask": mask_info(copy)}
    dump("decontaminated.layer", read(layer))
    dump("decontaminated.copy", read(copy))
    if copy.get_mask() is not None:
        dump("decontaminated.mask", read(copy.get_mask()))
    result["undo_restores"] = case.undo_restores()
    case.close()
    return result


def c_selection_mask_offset():
    """Selection and an offset layer: the selection is in image coordinates, the mask in the layer's."""
    image = Gimp.Image.new(640, 480, Gimp.ImageBaseType.RGB)
    layer = add_layer_from(image, "astronaut.jpg", (400, 400), (100, 50))
    x, y, w, h = SELECTION
    image.select_rectangle(Gimp.ChannelOps.REPLACE, x + 100, y + 50, w, h)
    return case_layer(image, layer, inside=SELECTION)  # layer-local: the same numbers


def selection_case(proc, select_first, **args):
    image, layer = load("chelsea.jpg")
    if select_first:
        image.select_rectangle(Gimp.ChannelOps.REPLACE, *SELECTION)
    case = Case(image)
    status, message = run(proc, image, [layer], **args)
    _, non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)
    sel = image.get_selection()
    result = {"status": status, "message": message, "non_empty": non_empty, "bounds": [x1, y1, x2, y2],
              "stats": stats(values(sel), sel.get_width(), SELECTION if select_first else None),
              "mask": mask_info(layer), "pixels_unchanged": digest(layer) == case.before["layers"][0][4],
              "image_size": [image.get_width(), image.get_height()]}
    result["undo_restores"] = case.undo_restores()
    case.close()
    return result


def c_select_subject():
    return selection_case(SELECT, False)


def c_select_subject_in_selection():
    return selection_case(SELECT, True)


def c_output_selection():
    return selection_case(REMOVE, False, output="selection")


def c_new_layer():
    image, layer = load("astronaut.jpg")
    case = Case(image)
    status, message = run(REMOVE, image, [layer], output="new-layer")
    layers = image.get_layers()
    copy = layers[0]
    result = {"status": status, "message": message, "layers": len(layers),
              "original_untouched": [layer.get_name(), offsets(layer), layer.get_width(), layer.get_height(),
                                     digest(layer), digest(layer.get_mask())] == case.before["layers"][0],
              "copy_is_above": layers.index(layer) == 1, "copy_name": copy.get_name(),
              "copy_pixels_same": digest(copy) == case.before["layers"][0][4], "mask": mask_info(copy)}
    result["undo_restores"] = case.undo_restores()
    case.close()
    return result


def c_two_layers():
    image, first = load("astronaut.jpg")
    second = add_layer_from(image, "coffee.jpg", (240, 160), (200, 300))
    case = Case(image)
    status, message = run(REMOVE, image, [first, second])
    result = {"status": status, "message": message, "masks": [mask_info(first), mask_info(second)],
              "sizes": [[l.get_width(), l.get_height()] for l in (first, second)]}
    result["undo_restores"] = case.undo_restores()
    case.close()
    return result


def frames_image():
    """An animation as GIMP keeps one (a GIF's frames are layers, the first at the bottom): four 512x512
    frames of the astronaut panning 12 px left and 6 px up per frame."""
    image = Gimp.Image.new(512, 512, Gimp.ImageBaseType.RGB)
    frames = []
    for k in range(4):
        layer = add_layer_from(image, "astronaut.jpg", (560, 560), (-12 * k, -6 * k))
        layer.set_name("frame %d" % (k + 1))
        layer.resize_to_image_size()
        frames.append(layer)
    return image, frames


def c_all_layers():
    """'All layers as frames' through the PDB with only the top layer selected: every layer's mask, and
    every frame's pixels (R'G'B' u8) and mask (Y u8) dumped for the test to compare."""
    image, frames = frames_image()
    case = Case(image)
    status, message = run(REMOVE, image, [frames[-1]], all_layers=True)
    result = {"status": status, "message": message, "masks": [mask_info(f) for f in frames],
              "sizes": [[f.get_width(), f.get_height()] for f in frames], "offsets": [offsets(f) for f in frames],
              "pixels_unchanged": [digest(f) == before[4]
                                   for f, before in zip(frames, reversed(case.before["layers"]))]}
    for k, frame in enumerate(frames):
        dump("all_layers.%d.layer" % k, read(frame, "R'G'B' u8"))
        if frame.get_mask() is not None:
            dump("all_layers.%d.mask" % k, read(frame.get_mask(), "Y u8"))
    result["undo_restores"] = case.undo_restores()
    case.close()
    return result


def c_gif_frames():
    """An animated GIF as GIMP opens it (pan.gif, written by the test): 'All layers as frames' on its layers,
    called as a script may, with no drawables; each layer's pixels (R'G'B' u8) and mask (Y u8) dumped, bottom
    layer first."""
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(os.path.join(DATA, "pan.gif")))
    while not image.undo_is_enabled():
        image.undo_enable()
    frames = list(reversed(image.get_layers()))
    case = Case(image)
    status, message = run(REMOVE, image, [], all_layers=True)
    result = {"status": status, "message": message, "layers": len(frames), "masks": [mask_info(f) for f in frames],
              "sizes": [[f.get_width(), f.get_height()] for f in frames],
              "names": [f.get_name() for f in frames], "base_type": image.get_base_type().value_nick}
    for k, frame in enumerate(frames):
        dump("gif_frames.%d.layer" % k, read(frame, "R'G'B' u8"))
        if frame.get_mask() is not None:
            dump("gif_frames.%d.mask" % k, read(frame.get_mask(), "Y u8"))
    case.close()
    return result


def c_all_layers_cancel():
    """Cancel in the progress bar while the four frames are computed (IS-Net): no layer may change."""
    if not GUI:
        return {"skipped": "needs the GUI"}
    image, frames = frames_image()
    case = Case(image)
    click = click_progress_cancel()
    status, message = run(REMOVE, image, [frames[0]], all_layers=True, model="isnet-general-use")
    result = {"status": status, "message": message, "untouched": case.untouched(),
              "masks": [mask_info(f) for f in frames]}
    click.wait(timeout=30)
    case.close()
    return result


def c_all_layers_refused():
    """Frames that do not line up: a layer group among them, and a layer of another size and position."""
    result = {}
    for kind in ("group", "size"):
        image, frames = frames_image()
        if kind == "group":
            image.insert_layer(Gimp.GroupLayer.new(image, "group"), None, 0)
        else:
            add_layer_from(image, "coffee.jpg", (240, 160), (200, 300)).set_name("small")
        case = Case(image)
        status, message = run(REMOVE, image, [frames[0]], all_layers=True)
        result[kind] = {"status": status, "message": message, "untouched": case.untouched()}
        case.close()
    return result


# Waits for the dialog, focuses it and presses the keys given (xdotool key names), one by one
DIALOG_KEYS = ("w=$(timeout 60 xdotool search --sync --name '^Remove Background$' | head -1)"
               " && sleep 1 && xdotool windowfocus --sync $w mousemove --window $w 20 20"
               " && for k in %s; do xdotool key $k; sleep 0.3; done")


def c_dialog_then_last_values():
    """The dialog GIMP builds from the arguments: pick Output = Selection and Shift edge = 20 with the
    keyboard (Alt+T is the output's mnemonic, Down moves to the next choice, Alt+G is Shift edge's
    mnemonic, Alt+O is OK). GIMP stores the values of an interactive run only; a WITH_LAST_VALS run on a
    new image of the same photo must then make the same selection."""
    if not GUI:
        return {"skipped": "needs the GUI"}

    def select_subject(run_mode):
        image, layer = load("chelsea.jpg")
        case = Case(image)
        status, message = run(REMOVE, image, [layer], run_mode=run_mode)
        sel = image.get_selection()
        outcome = {"status": status, "message": message, "mask": mask_info(layer),
                   "selection_non_empty": Gimp.Selection.bounds(image)[1],
                   "stats": stats(values(sel), sel.get_width())}
        case.close()
        return outcome

    keys = subprocess.Popen(["bash", "-c", DIALOG_KEYS % "alt+t Down alt+g ctrl+a 2 0 Tab alt+o"])
    first = select_subject(Gimp.RunMode.INTERACTIVE)
    keys.wait(timeout=30)
    return {"first": first, "again": select_subject(Gimp.RunMode.WITH_LAST_VALS)}


def c_frames_dialog():
    """'All layers as frames' ticked in the dialog with its mnemonic (Alt+A). It runs after
    dialog_then_last_values (the cases run in name order), whose Output = Selection and Shift edge = 20 the
    dialog then shows: Alt+T Up puts Output back to Layer mask, Alt+G Ctrl+A 0 the shift back to 0."""
    if not GUI:
        return {"skipped": "needs the GUI"}
    image, frames = frames_image()
    case = Case(image)
    keys = subprocess.Popen(["bash", "-c", DIALOG_KEYS % "alt+t Up alt+g ctrl+a 0 Tab alt+a alt+o"])
    status, message = run(REMOVE, image, [frames[-1]], run_mode=Gimp.RunMode.INTERACTIVE)
    keys.wait(timeout=30)
    result = {"status": status, "message": message, "masks": [mask_info(f) for f in frames]}
    result["undo_restores"] = case.undo_restores() if status == "success" else None
    case.close()
    return result


def click_progress_cancel():
    """In 1.5 s, click the Cancel button of the progress bar in the status bar. The button sits 283 px left
    of the window's right edge (the docks beside it have a fixed width), 22 px above the bottom."""
    return subprocess.Popen(["bash", "-c", "sleep 1.5; w=$(xdotool search --name ' – GIMP$' | head -1);"
                             " eval $(xdotool getwindowgeometry --shell $w);"
                             " xdotool mousemove $((X + WIDTH - 283)) $((Y + HEIGHT - 22)) click 1"])


def c_cancel():
    """Click the Cancel button of the progress bar while the daemon works (IS-Net, slow enough to be
    caught): GIMP ends the plug-in, and the image must be as it was."""
    if not GUI:
        return {"skipped": "needs the GUI"}
    image, layer = load("coffee.jpg")
    case = Case(image)
    click = click_progress_cancel()
    started = time.monotonic()
    status, message = run(REMOVE, image, [layer], model="isnet-general-use")
    result = {"status": status, "message": message, "seconds_to_return": time.monotonic() - started,
              "untouched": case.untouched(), "mask": mask_info(layer)}
    click.wait(timeout=30)
    case.close()
    return result


def c_not_a_layer():
    image, layer = load("astronaut.jpg")
    mask = layer.create_mask(Gimp.AddMaskType.WHITE)
    layer.add_mask(mask)
    case = Case(image)
    status, message = run(REMOVE, image, [mask])
    result = {"status": status, "message": message, "untouched": case.untouched()}
    case.close()
    return result


def c_link_and_vector_layers():
    """GIMP 3.2: a link layer (showing a photo file) gets its mask and stays linked; a vector layer (a shape
    drawn from a path) is refused with a message and left as it was."""
    if not hasattr(Gimp, "LinkLayer"):
        return {"skipped": "GIMP %s has no link or vector layers" % Gimp.version()}
    image = Gimp.Image.new(640, 480, Gimp.ImageBaseType.RGB)
    link = Gimp.LinkLayer.new(image, Gio.File.new_for_path(os.path.join(DATA, "astronaut.jpg")))
    image.insert_layer(link, None, 0)
    case = Case(image)
    status, message = run(REMOVE, image, [link])
    result = {"link": {"status": status, "message": message, "still_linked": link.is_link_layer(),
                       "mask": mask_info(link)}}
    if status == "success":
        result["link"]["undo_restores"] = case.undo_restores()
    case.close()
    image = Gimp.Image.new(640, 480, Gimp.ImageBaseType.RGB)
    path = Gimp.Path.new(image, "shape")
    image.insert_path(path, None, 0)
    path.bezier_stroke_new_ellipse(320, 240, 100, 80, 0)
    vector = Gimp.VectorLayer.new(image, path)
    image.insert_layer(vector, None, 0)
    case = Case(image)
    status, message = run(REMOVE, image, [vector])
    result["vector"] = {"status": status, "message": message, "untouched": case.untouched()}
    case.close()
    return result


def c_unreachable():
    """Run with BGMASK_ENDPOINT pointing at a closed port (see the test): nothing may change."""
    image, layer = load("astronaut.jpg")
    image.select_rectangle(Gimp.ChannelOps.REPLACE, *SELECTION)
    case = Case(image)
    status, message = run(REMOVE, image, [layer])
    result = {"status": status, "message": message, "untouched": case.untouched(),
              "dirty": image.is_dirty()}
    case.close()
    return result


CASES = {name[2:]: func for name, func in sorted(globals().items()) if name.startswith("c_")}


def environment():
    """Which Python GIMP runs plug-ins with, and which transport the installed client will pick."""
    info = {"gimp": Gimp.version(), "python": sys.version.split()[0], "gui": GUI}
    for module in ("zmq", "msgpack"):
        try:
            __import__(module)
            info[module] = True
        except ImportError:
            info[module] = False
    plugin_dir = os.path.join(Gimp.directory(), "plug-ins", "bgmask-remove-background")
    sys.path.insert(0, plugin_dir)
    import bgmask_client
    info["client_transport"] = bgmask_client.Client(endpoint="tcp://127.0.0.1:9").transport
    proc = Gimp.get_pdb().lookup_procedure(REMOVE)
    info["menu_paths"] = list(proc.get_menu_paths()) if proc else None
    info["arguments"] = [spec.name for spec in proc.get_arguments()] if proc else None
    select = Gimp.get_pdb().lookup_procedure(SELECT)
    info["select_menu_paths"] = list(select.get_menu_paths()) if select else None
    info["plugin_dir"] = plugin_dir
    info["deprecated_in_plugin"] = deprecated_calls(plugin_dir)
    return info


def deprecated_calls(plugin_dir):
    """Names of functions and methods this GIMP marks deprecated that the plug-in's source calls."""
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    deprecated = set()
    for module in (Gimp, GimpUi, Gegl):
        for name in dir(module):
            obj = getattr(module, name, None)
            members = vars(obj).items() if isinstance(obj, type) else [(name, obj)]
            deprecated.update(key for key, member in members
                              if hasattr(member, "is_deprecated") and member.is_deprecated())
    source = "".join(open(os.path.join(plugin_dir, f)).read() for f in os.listdir(plugin_dir) if f.endswith(".py"))
    return sorted(name for name in deprecated if re.search(r"\.%s\(" % re.escape(name), source))


def main():
    report = {"ok": False, "cases": {}}
    try:
        report["env"] = environment()
        wanted = os.environ.get("BGMASK_TEST_CASES")
        names = wanted.split(",") if wanted else [n for n in CASES if n != "unreachable"]
        for name in names:
            started = time.monotonic()
            try:
                report["cases"][name] = CASES[name]()
            except Exception:  # noqa: BLE001 - recorded for the test to show
                report["cases"][name] = {"crash": traceback.format_exc()}
            report["cases"][name]["seconds"] = round(time.monotonic() - started, 2)
        report["ok"] = True
    except Exception:  # noqa: BLE001
        report["error"] = traceback.format_exc()
    finally:
        with open(RESULT, "w") as out:
            json.dump(report, out, indent=1, default=str)


main()
