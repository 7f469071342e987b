"""`bgmask install`, `uninstall` and `autostart`: the command-line side of desktop/install.py, which is imported
only when one of these commands runs (every `bgmask remove` parses these subcommands too)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


def _run(action: Callable[[Any], int], args: argparse.Namespace) -> int:
    from bgmask.desktop import install

    try:
        return int(action(install.context_for(args)))
    except install.InstallError as exc:
        print(f"bgmask: {exc}", file=sys.stderr)
        return 1


def _cmd_install(args: argparse.Namespace) -> int:
    from bgmask.desktop import install

    explicit = [app for app in (install.GIMP, install.KRITA) if getattr(args, app)]
    return _run(lambda ctx: install.install(ctx, explicit or [install.GIMP, install.KRITA],
                                            create_missing=bool(explicit), with_autostart=not args.no_autostart),
                args)


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from bgmask.desktop import install

    return _run(install.uninstall, args)


def _cmd_autostart(args: argparse.Namespace) -> int:
    from bgmask.desktop import install

    actions = {"status": install.autostart_status, "enable": install.autostart_enable,
               "disable": install.autostart_disable}
    return _run(actions[args.autostart_action], args)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `install`, `uninstall` and `autostart {status,enable,disable}` to the bgmask command line."""
    parser = subparsers.add_parser(
        "install", help="install the GIMP and Krita plug-ins and start the daemon at login",
        description="Install the plug-ins into every GIMP 3.x and Krita 5.x profile found (with --gimp or "
                    "--krita: only those, creating the default profile folder when there is none), record "
                    "how to start the daemon, and start it at login. Re-running is harmless.")
    parser.add_argument("--gimp", action="store_true", help="the GIMP plug-in (alone, unless with --krita)")
    parser.add_argument("--krita", action="store_true", help="the Krita plug-in (alone, unless with --gimp)")
    parser.add_argument("--no-autostart", action="store_true", help="do not start the daemon at login")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    parser.set_defaults(func=_cmd_install)

    parser = subparsers.add_parser("uninstall", help="undo exactly what `bgmask install` did",
                                   description="Remove what `bgmask install` and `bgmask autostart enable` "
                                               "recorded in the install manifest, and nothing else.")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    parser.set_defaults(func=_cmd_uninstall)

    parser = subparsers.add_parser("autostart", help="start the daemon at login, or stop doing so")
    parser.add_argument("autostart_action", choices=("status", "enable", "disable"),
                        help="status: exit 0 when enabled, 1 when not")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    parser.set_defaults(func=_cmd_autostart)
