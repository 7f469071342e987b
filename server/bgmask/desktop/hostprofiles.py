"""Where GIMP 3 (3.0, 3.2, ...) and Krita (5 and 6) keep their per-user profiles, per OS and per packaging.

GIMP keeps one profile per minor version (~/.config/GIMP/3.0, ~/.config/GIMP/3.2; a Flatpak GIMP under
~/.var/app/org.gimp.GIMP/config/GIMP/3.x): every one found gets the plug-in. Krita 5 and Krita 6 share
their resource folder and kritarc (native packages and the AppImage in the native locations, the Flatpak
org.kde.krita under ~/.var/app), so one install serves both; the plug-in picks PyQt5 or PyQt6 itself.

Everything is computed from an explicit platform name and environment rather than from the running OS, so
`bgmask install` honours HOME / XDG_* overrides (the host-app tests point them into a throw-away HOME) and
the macOS and Windows layouts can be tested on Linux.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

LINUX, MACOS, WINDOWS = "linux", "darwin", "win32"
GIMP_FLATPAK = "org.gimp.GIMP"
KRITA_FLATPAK = "org.kde.krita"
# GIMP names its profile after its major.minor version (3.0, 3.2, ...); 2.10 profiles are not ours.
_GIMP_PROFILE_NAME = re.compile(r"3\.\d+")
# GIMP's versioned programs (gimp-3.0, gimp-console-3.2, gimp-3.2.exe): which GIMP 3.x is installed.
_GIMP_PROGRAM = re.compile(r"gimp(?:-console)?-(3\.\d+)(?:\.exe)?", re.IGNORECASE)
_KCONFIG_ESCAPES = {"\\": "\\", "s": " ", "t": "\t", "n": "\n", "r": "\r"}


def normalise_platform(name: str) -> str:
    """Map sys.platform to one of the three layouts; other Unixes follow the XDG (Linux) layout."""
    if name == "darwin":
        return MACOS
    if name == "win32":
        return WINDOWS
    return LINUX


@dataclass(frozen=True)
class Host:
    """The machine as install sees it: a platform layout and an environment (HOME, XDG_*, APPDATA...)."""

    platform: str
    environ: Mapping[str, str]

    @classmethod
    def current(cls) -> "Host":
        return cls(normalise_platform(sys.platform), dict(os.environ))

    def _env_path(self, name: str, default: Path) -> Path:
        # The XDG spec says relative values are invalid and must be ignored.
        value = self.environ.get(name, "")
        return Path(value) if value and os.path.isabs(value) else default

    @property
    def home(self) -> Path:
        value = self.environ.get("USERPROFILE" if self.platform == WINDOWS else "HOME")
        return Path(value) if value else Path.home()

    @property
    def xdg_config_home(self) -> Path:
        return self._env_path("XDG_CONFIG_HOME", self.home / ".config")

    @property
    def xdg_data_home(self) -> Path:
        return self._env_path("XDG_DATA_HOME", self.home / ".local" / "share")

    @property
    def appdata(self) -> Path:
        return self._env_path("APPDATA", self.home / "AppData" / "Roaming")

    @property
    def local_appdata(self) -> Path:
        return self._env_path("LOCALAPPDATA", self.home / "AppData" / "Local")

    def flatpak_dir(self, app_id: str) -> Path:
        """A Flatpak app's private per-user directory; its XDG_CONFIG_HOME is config/, XDG_DATA_HOME data/."""
        return self.home / ".var" / "app" / app_id


@dataclass(frozen=True)
class Profile:
    """One place a host application loads user plug-ins from."""

    app: str  # "gimp" or "krita"
    label: str  # what the user reads: "GIMP 3.0", "Krita (Flatpak)"
    root: Path  # the GIMP profile directory, or Krita's resource folder
    plugin_dir: Path  # <root>/plug-ins (GIMP) or <root>/pykrita (Krita)
    kritarc: Optional[Path] = None  # Krita's settings file, where plug-ins are enabled
    sandbox: Optional[str] = None  # the Flatpak app id when the application runs sandboxed


# --- GIMP ------------------------------------------------------------------------------------------------

def _gimp_bases(host: Host) -> list[tuple[Path, Optional[str]]]:
    """Directories holding GIMP's per-version profiles (GIMPDIR under the user config directory)."""
    if host.platform == MACOS:
        return [(host.home / "Library" / "Application Support" / "GIMP", None)]
    if host.platform == WINDOWS:
        return [(host.appdata / "GIMP", None)]
    return [(host.xdg_config_home / "GIMP", None),
            (host.flatpak_dir(GIMP_FLATPAK) / "config" / "GIMP", GIMP_FLATPAK)]


def _gimp_profile(path: Path, label: str, sandbox: Optional[str] = None) -> Profile:
    return Profile("gimp", label, path, path / "plug-ins", sandbox=sandbox)


def _gimp_override(host: Host) -> Optional[Path]:
    """GIMP3_DIRECTORY replaces the profile directory; a relative value is relative to the home directory."""
    value = host.environ.get("GIMP3_DIRECTORY")
    if not value:
        return None
    return Path(value) if os.path.isabs(value) else host.home / value


def gimp_profiles(host: Host) -> list[Profile]:
    """Every existing GIMP 3.x profile: native and Flatpak, every 3.x version, and GIMP3_DIRECTORY."""
    found = []
    override = _gimp_override(host)
    if override is not None and override.is_dir():
        found.append(_gimp_profile(override, "GIMP 3 (GIMP3_DIRECTORY)"))
    for base, sandbox in _gimp_bases(host):
        if not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            if child.is_dir() and _GIMP_PROFILE_NAME.fullmatch(child.name) and child != override:
                label = f"GIMP {child.name}" + (" (Flatpak)" if sandbox else "")
                found.append(_gimp_profile(child, label, sandbox))
    return found


def installed_gimp_versions(host: Host) -> list[str]:
    """The GIMP 3.x versions ("3.0", "3.2") whose programs are on PATH, oldest first."""
    found = set()
    for folder in host.environ.get("PATH", "").split(";" if host.platform == WINDOWS else ":"):
        try:
            names = os.listdir(folder) if folder else []
        except OSError:
            continue
        found.update(match.group(1) for match in map(_GIMP_PROGRAM.fullmatch, names) if match)
    return sorted(found, key=lambda version: tuple(map(int, version.split("."))))


def default_gimp_profiles(host: Host) -> list[Profile]:
    """The profiles the native GIMPs on PATH would create on first start (3.0 when none is found); used when
    no profile exists yet."""
    override = _gimp_override(host)
    if override is not None:
        return [_gimp_profile(override, "GIMP 3 (GIMP3_DIRECTORY)")]
    base, _ = _gimp_bases(host)[0]
    return [_gimp_profile(base / version, f"GIMP {version}") for version in installed_gimp_versions(host) or ["3.0"]]


# --- Krita -----------------------------------------------------------------------------------------------

def _krita_locations(host: Host) -> list[tuple[Path, Path, Optional[str]]]:
    """(default resource folder, kritarc, sandbox) for each Krita packaging on this platform.

    Krita's resource folder is Qt's AppDataLocation and kritarc sits in GenericConfigLocation; AppImage and
    distribution packages share the native locations, the Flatpak has its own under ~/.var/app.
    """
    if host.platform == MACOS:
        return [(host.home / "Library" / "Application Support" / "krita",
                 host.home / "Library" / "Preferences" / "kritarc", None)]
    if host.platform == WINDOWS:
        return [(host.appdata / "krita", host.local_appdata / "kritarc", None)]
    flatpak = host.flatpak_dir(KRITA_FLATPAK)
    return [(host.xdg_data_home / "krita", host.xdg_config_home / "kritarc", None),
            (flatpak / "data" / "krita", flatpak / "config" / "kritarc", KRITA_FLATPAK)]


def _krita_profile(default_root: Path, kritarc: Path, sandbox: Optional[str]) -> Profile:
    # Krita 5 loads pykrita only from the resource folder chosen in its settings ("ResourceDirectory" in the
    # root group of kritarc) when one is set; plug-ins under the default folder are then ignored.
    custom = read_kritarc_resource_directory(kritarc)
    root = Path(custom) if custom else default_root
    label = "Krita" + (" (Flatpak)" if sandbox else "")
    return Profile("krita", label, root, root / "pykrita", kritarc=kritarc, sandbox=sandbox)


def krita_profiles(host: Host) -> list[Profile]:
    """Every Krita installation that has run for this user (its resource folder or kritarc exists)."""
    found = []
    for default_root, kritarc, sandbox in _krita_locations(host):
        profile = _krita_profile(default_root, kritarc, sandbox)
        if profile.root.is_dir() or kritarc.is_file():
            found.append(profile)
    return found


def default_krita_profile(host: Host) -> Profile:
    """The native Krita locations (used when Krita has not run yet)."""
    return _krita_profile(*_krita_locations(host)[0])


def read_kritarc_resource_directory(kritarc: Path) -> Optional[str]:
    try:
        text = kritarc.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None
    value = ini_get(text, None, "ResourceDirectory")
    return _kconfig_unescape(value) if value else None


def _kconfig_unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _KCONFIG_ESCAPES.get(m.group(1), m.group(0)), value)


# --- kritarc (KConfig INI) editing, kept minimal so the rest of the user's file is untouched ------------

def _section_name(line: str) -> Optional[str]:
    stripped = line.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        return stripped[1:-1]
    return None


def _key_of(line: str) -> Optional[str]:
    stripped = line.strip()
    if not stripped or stripped.startswith("#") or "=" not in stripped:
        return None
    return stripped.split("=", 1)[0].strip()


def _section_span(lines: list[str], section: Optional[str]) -> Optional[tuple[int, int]]:
    """(first line after the header, end) of a section; section None is KConfig's header-less root group."""
    start = 0 if section is None else None
    for index, line in enumerate(lines):
        name = _section_name(line)
        if name is None:
            continue
        if start is not None:
            return start, index
        if name == section:
            start = index + 1
    return None if start is None else (start, len(lines))


def _find_key(lines: list[str], section: Optional[str], key: str) -> Optional[int]:
    span = _section_span(lines, section)
    if span is None:
        return None
    for index in range(*span):
        if _key_of(lines[index]) == key:
            return index
    return None


def ini_get(text: str, section: Optional[str], key: str) -> Optional[str]:
    """The raw value of key in section, or None when absent."""
    lines = text.splitlines()
    index = _find_key(lines, section, key)
    return None if index is None else lines[index].split("=", 1)[1].strip()


def ini_has_section(text: str, section: str) -> bool:
    return _section_span(text.splitlines(), section) is not None


def ini_set(text: str, section: str, key: str, value: str) -> tuple[str, bool]:
    """Set key=value in section, appending the key (or the section) when missing.

    Returns the new text and whether a blank separator line was added before a new section header, which
    ini_unset needs to give back the exact original text.
    """
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    entry = f"{key}={value}{newline}"
    index = _find_key(lines, section, key)
    if index is not None:
        ending = lines[index][len(lines[index].rstrip("\r\n")):] or newline
        lines[index] = f"{key}={value}{ending}"
        return "".join(lines), False
    span = _section_span(lines, section)
    if span is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += newline
        separator = bool(lines) and lines[-1].strip() != ""
        return "".join(lines) + (newline if separator else "") + f"[{section}]{newline}" + entry, separator
    insert_at = span[0]
    for position in range(span[0], span[1]):
        if lines[position].strip():
            insert_at = position + 1
    if insert_at > 0 and not lines[insert_at - 1].endswith("\n"):
        lines[insert_at - 1] += newline
    lines.insert(insert_at, entry)
    return "".join(lines), False


def ini_unset(text: str, section: str, key: str, drop_section: bool, separator: bool) -> str:
    """Remove key from section; with drop_section also remove the section when nothing but blank lines is
    left in it (and the blank separator line ini_set added before it)."""
    lines = text.splitlines(keepends=True)
    index = _find_key(lines, section, key)
    if index is not None:
        del lines[index]
    span = _section_span(lines, section)
    if drop_section and span is not None and all(not line.strip() for line in lines[span[0]:span[1]]):
        header = span[0] - 1
        del lines[header:span[1]]
        if separator and header > 0 and not lines[header - 1].strip():
            del lines[header - 1]
    return "".join(lines)
