#!/usr/bin/env python3
"""GIMP 3 plug-in: remove a layer's background with the local bgmask daemon.

Registers two PDB procedures that share their arguments:

- plug-in-bgmask-remove-background  (Layer > Remove Background…): a soft layer mask (white = keep) on
  each selected layer, a masked copy ("new layer with mask"), a masked copy with the background's colour
  spill removed from its edges ("new layer with decontaminated colours"), or a selection; one undo step.
  With "all layers as frames" (argument all-layers) every layer of the image is a frame of an animation
  and gets a layer mask, through the daemon's frame-sequence protocol (temporal consistency: argument
  temporal).
- plug-in-bgmask-select-subject  (Select > Subject…): the same result as a selection.

Both run non-interactively from the PDB with the same arguments as the dialog (which GIMP builds from
them, remembering the last values). The work itself is in gimp_mask_logic.py; this file is the glue.
The installer puts bgmask_client.py into this folder beside it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gi  # noqa: E402

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Gtk", "3.0")
from gi.repository import Gegl, Gimp, GimpUi, GLib, GObject, Gtk  # noqa: E402

import bgmask_client  # noqa: E402
import gimp_mask_logic as logic  # noqa: E402

REMOVE_PROC = "plug-in-bgmask-remove-background"
SELECT_PROC = "plug-in-bgmask-select-subject"
ERROR_DOMAIN = GLib.quark_from_string("bgmask")
TITLES = {REMOVE_PROC: "Remove Background", SELECT_PROC: "Select Subject"}


def _choice(entries):
    choice = Gimp.Choice.new()
    for index, (nick, label, help_text) in enumerate(entries):
        choice.add(nick, index, label, help_text)
    return choice


def _add_arguments(procedure, with_output):
    # Mnemonics must not clash with each other nor with the dialog's buttons (_OK, _Cancel, _Reset,
    # _Help, _Load Saved Settings, _Save Settings): GIMP checks and prints a warning for every clash.
    flags = GObject.ParamFlags.READWRITE
    procedure.add_string_argument("model", "_Model", "Model name (see `bgmask models`); empty = the "
                                  "daemon's default model", "", flags)
    if with_output:
        procedure.add_choice_argument("output", "Ou_tput", "What to produce",
                                      _choice(logic.OUTPUT_CHOICES), logic.OUTPUT_MASK, flags)
    procedure.add_boolean_argument("refine", "_Edge refinement", "Edge-aware upsampling guided by the "
                                   "full-resolution layer (off: plain resize)", True, flags)
    if with_output:
        procedure.add_choice_argument("existing-mask", "If the layer already has a mas_k",
                                      "What to do with a layer mask that is already there",
                                      _choice(logic.EXISTING_CHOICES), logic.EXISTING_REPLACE, flags)
    # After the older arguments, so that PDB callers passing those by position keep working.
    for name, kind, label, help_text, low, high, default in logic.NUMBER_ARGUMENTS:
        add = procedure.add_double_argument if kind is float else procedure.add_int_argument
        add(name, label, help_text, low, high, default, flags)
    procedure.add_choice_argument("quality", "_Quality", "Speed or quality of the mask",
                                  _choice(logic.QUALITY_CHOICES), logic.QUALITY_DEFAULT, flags)
    if with_output:
        procedure.add_boolean_argument("all-layers", "_All layers as frames", "Treat every layer of the image "
                                       "as a frame of an animation (the bottom layer first, as GIF frames): a "
                                       "layer mask on each, in one undo step; the selected layers are ignored",
                                       False, flags)
        procedure.add_boolean_argument("temporal", "Stead_y masks across frames", "With all layers as frames: "
                                       "keep each frame's mask consistent with the previous frame's where the "
                                       "picture did not change, so edges do not flicker (off: every frame on "
                                       "its own)", True, flags)


def _settings(config, with_output):
    return logic.Settings(
        model=(config.get_property("model") or "").strip(),
        output=config.get_property("output") if with_output else logic.OUTPUT_SELECTION,
        refine=bool(config.get_property("refine")),
        existing_mask=config.get_property("existing-mask") if with_output else logic.EXISTING_REPLACE,
        quality=config.get_property("quality"),
        all_layers=bool(config.get_property("all-layers")) if with_output else False,
        temporal=bool(config.get_property("temporal")) if with_output else True,
        **{name.replace("-", "_"): config.get_property(name) for name, *_ in logic.NUMBER_ARGUMENTS},
    )


class RemoveBackground(Gimp.PlugIn):
    def do_query_procedures(self):
        return [REMOVE_PROC, SELECT_PROC]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        procedure.set_image_types("RGB*, GRAY*, INDEXED*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE
                                       | Gimp.ProcedureSensitivityMask.DRAWABLES)
        procedure.set_attribution("bgmask", "bgmask", "2026")
        if name == REMOVE_PROC:
            procedure.set_menu_label("Remove Back_ground…")
            procedure.add_menu_path("<Image>/Layer/")
            procedure.set_documentation(
                "Mask out the background of the selected layers",
                "Asks the local bgmask daemon for a soft foreground mask of each selected layer and adds "
                "it as a layer mask (white = keep), as a masked copy of the layer (optionally with the "
                "background's colour spill removed from its edges), or as a selection. Hardness, shift "
                "edge, feather, fill holes and remove specks shape the mask. The layer's pixels are not "
                "touched, and the change is one undo step. With a selection active the model looks at the "
                "selection's area plus the selection context, and the mask is 0 outside the selection. "
                "With 'all layers as frames' every layer of the image is a frame of an animation (the bottom "
                "layer first): each gets a layer mask, computed as one sequence whose masks stay steady from "
                "frame to frame; the layers must have the same size and position.",
                name)
        else:
            procedure.set_menu_label("Su_bject…")
            procedure.add_menu_path("<Image>/Select/")
            procedure.set_documentation(
                "Select the subject of the selected layers",
                "Like Layer > Remove Background, but the result becomes the selection. With a selection "
                "active, the new selection stays inside it.", name)
        _add_arguments(procedure, with_output=name == REMOVE_PROC)
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, run_data):
        with_output = procedure.get_name() == REMOVE_PROC
        if run_mode == Gimp.RunMode.INTERACTIVE:
            GimpUi.init("bgmask-remove-background")
            dialog = GimpUi.ProcedureDialog.new(procedure, config, TITLES[procedure.get_name()])
            if with_output:  # GIMP 3.2 shows a choice of three as radio buttons, whose frame takes no
                # mnemonic (it warns); a combo box, as in GIMP 3.0, keeps the keyboard shortcut
                dialog.get_widget("existing-mask", Gtk.ComboBox.__gtype__)
                dialog.set_sensitive("temporal", True, config, "all-layers", False)
            dialog.fill(None)
            accepted = dialog.run()
            dialog.destroy()
            if not accepted:
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        try:
            logic.remove_background(Gimp, Gegl, image, drawables, _settings(config, with_output),
                                    bgmask_client.Client)
        except logic.PluginError as error:
            if error.cancelled:
                if run_mode == Gimp.RunMode.INTERACTIVE:
                    Gimp.message(error.message)  # GIMP shows no message for a cancelled procedure
                status = Gimp.PDBStatusType.CANCEL
            else:
                status = Gimp.PDBStatusType.EXECUTION_ERROR
            return procedure.new_return_values(status, GLib.Error.new_literal(ERROR_DOMAIN, error.message, 0))
        Gimp.displays_flush()
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


Gimp.main(RemoveBackground.__gtype__, sys.argv)
