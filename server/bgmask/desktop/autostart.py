"""Start the bgmask daemon at login, the native way on each OS.

Linux: a systemd user unit (restarted on failure) when the user has a systemd user manager, else an XDG
autostart entry. macOS: a launchd LaunchAgent. Windows: a value under the per-user Run key starting
pythonw (no console window). The command always carries `--preload-delay`, so a daemon started at login
stays cheap until someone needs it.

This module only says *what* to write; bgmask.desktop.install writes it, records it and undoes it.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bgmask.desktop.hostprofiles import LINUX, MACOS, WINDOWS, Host

PRELOAD_DELAY_S = 30
SYSTEMD_UNIT = "bgmask.service"
DESKTOP_FILE = "bgmask.desktop"
LAUNCHD_LABEL = "org.bgmask.daemon"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "bgmask"
# `bgmask serve` exits with status 3 when another daemon already runs: restarting would never help.
ALREADY_RUNNING_STATUS = 3

SYSTEMD, XDG, LAUNCHD, RUN_KEY_MECHANISM = "systemd", "xdg-autostart", "launchd", "run-key"
MECHANISMS = (SYSTEMD, XDG, LAUNCHD, RUN_KEY_MECHANISM)


@dataclass(frozen=True)
class Plan:
    """What enabling auto-start writes: files, symlinks and at most one Windows registry value."""

    mechanism: str
    description: str
    command: tuple[str, ...]
    files: tuple[tuple[Path, bytes], ...] = ()
    symlinks: tuple[tuple[Path, Path], ...] = ()  # (link, target)
    registry_value: Optional[str] = None  # data of HKCU\...\Run\bgmask


def daemon_python(executable: str, platform: str) -> str:
    """The interpreter that runs the daemon: on Windows the windowless pythonw.exe beside it when present."""
    if platform == WINDOWS:
        windowless = Path(executable).with_name("pythonw.exe")
        if windowless.is_file():
            return str(windowless)
    return executable


def serve_command(python: str) -> list[str]:
    return [python, "-m", "bgmask", "serve", "--preload-delay", str(PRELOAD_DELAY_S)]


def has_systemd_user_manager(host: Host, booted_marker: Path = Path("/run/systemd/system")) -> bool:
    """True when systemd is PID 1 (sd_booted's test) and this user's manager has its runtime directory."""
    runtime = host.environ.get("XDG_RUNTIME_DIR", "")
    return booted_marker.is_dir() and bool(runtime) and (Path(runtime) / "systemd").is_dir()


def default_mechanism(host: Host) -> str:
    if host.platform == MACOS:
        return LAUNCHD
    if host.platform == WINDOWS:
        return RUN_KEY_MECHANISM
    return SYSTEMD if has_systemd_user_manager(host) else XDG


def systemd_unit_dir(host: Host) -> Path:
    return host.xdg_config_home / "systemd" / "user"


def plan(host: Host, python: str, mechanism: Optional[str] = None) -> Plan:
    """The auto-start set-up for this host; mechanism overrides the detected one (Linux has two)."""
    command = tuple(serve_command(daemon_python(python, host.platform)))
    if mechanism is None:
        mechanism = default_mechanism(host)
        if mechanism == SYSTEMD and not systemd_can_run(command[0]):
            mechanism = XDG
    if mechanism == SYSTEMD and host.platform == LINUX:
        unit = systemd_unit_dir(host) / SYSTEMD_UNIT
        wants = systemd_unit_dir(host) / "default.target.wants" / SYSTEMD_UNIT
        return Plan(SYSTEMD, "systemd user unit", command, files=((unit, systemd_unit(command).encode()),),
                    symlinks=((wants, unit),))
    if mechanism == XDG and host.platform == LINUX:
        entry = host.xdg_config_home / "autostart" / DESKTOP_FILE
        return Plan(XDG, "XDG autostart entry", command, files=((entry, desktop_entry(command).encode()),))
    if mechanism == LAUNCHD and host.platform == MACOS:
        agent = host.home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
        return Plan(LAUNCHD, "launchd LaunchAgent", command, files=((agent, launch_agent(command)),))
    if mechanism == RUN_KEY_MECHANISM and host.platform == WINDOWS:
        return Plan(RUN_KEY_MECHANISM, f"Run-key value HKEY_CURRENT_USER\\{RUN_KEY}\\{RUN_VALUE}", command,
                    registry_value=subprocess.list2cmdline(command))
    raise ValueError(f"auto-start mechanism {mechanism!r} does not exist on {host.platform}")


# --- file formats ----------------------------------------------------------------------------------------

def _systemd_word(arg: str, executable: bool = False) -> str:
    # systemd.service(5) "Command lines": C-style escapes inside double quotes; % starts a specifier
    # (everywhere) and $ an environment substitution (in arguments only), so those are doubled.
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if not executable:
        escaped = escaped.replace("$", "$$")
    plain = escaped == arg and arg and not any(c.isspace() or c in "';" for c in arg)
    return arg if plain else f'"{escaped}"'


def systemd_can_run(executable: str) -> bool:
    """systemd refuses executable paths holding quotes, backslashes or control characters."""
    return not any(c in "\\\"'" or ord(c) < 32 or ord(c) == 127 for c in executable)


def systemd_unit(command: Sequence[str]) -> str:
    return (
        "[Unit]\n"
        "Description=bgmask background-removal daemon for GIMP and Krita\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={_systemd_word(command[0], executable=True)} "
        f"{' '.join(_systemd_word(arg) for arg in command[1:])}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        f"RestartPreventExitStatus={ALREADY_RUNNING_STATUS}\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


_DESKTOP_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def _desktop_word(arg: str) -> str:
    # Desktop Entry spec, "The Exec key": an argument with a reserved character is double-quoted and ", `,
    # $ and \ inside are backslash-escaped; % is doubled. The string-value escaping (\\ for \) comes after.
    if arg and not (_DESKTOP_RESERVED & set(arg)):
        quoted = arg
    else:
        quoted = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
    return quoted.replace("%", "%%").replace("\\", "\\\\")


def desktop_entry(command: Sequence[str]) -> str:
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=bgmask daemon\n"
        "Comment=Background-removal daemon for the GIMP and Krita bgmask plug-ins\n"
        f"Exec={' '.join(_desktop_word(arg) for arg in command)}\n"
        "Terminal=false\n"
        "NoDisplay=true\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def launch_agent(command: Sequence[str]) -> bytes:
    return plistlib.dumps({
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": list(command),
        "RunAtLoad": True,
        # Restart after a crash or an error exit, at most every ThrottleInterval seconds.
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 30,
    })


# --- live effects: only on the real machine, never in tests ---------------------------------------------

def reload_systemd() -> Optional[str]:
    """Make the user manager see a new or removed unit; returns a warning when that failed."""
    try:
        done = subprocess.run(["systemctl", "--user", "daemon-reload"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run systemctl --user daemon-reload: {exc}"
    return None if done.returncode == 0 else f"systemctl --user daemon-reload: {done.stderr.strip()}"


def _run_key(write: bool):  # type: ignore[no-untyped-def]
    import winreg  # Windows only

    access = winreg.KEY_READ | (winreg.KEY_SET_VALUE if write else 0)
    return winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, access)


def registry_get() -> Optional[str]:
    """The Run-key value named bgmask, or None."""
    import winreg

    with _run_key(write=False) as key:
        try:
            return str(winreg.QueryValueEx(key, RUN_VALUE)[0])
        except FileNotFoundError:
            return None


def registry_set(value: Optional[str]) -> None:
    """Write the Run-key value, or delete it when value is None."""
    import winreg

    with _run_key(write=True) as key:
        if value is None:
            try:
                winreg.DeleteValue(key, RUN_VALUE)
            except FileNotFoundError:
                pass
        else:
            winreg.SetValueEx(key, RUN_VALUE, 0, winreg.REG_SZ, value)


def registry_available() -> bool:
    return os.name == "nt"
