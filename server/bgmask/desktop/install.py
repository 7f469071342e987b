"""`bgmask install` / `bgmask uninstall` / `bgmask autostart`: put the plug-ins into every GIMP 3 and Krita 5
profile, record how to start the daemon, set up auto-start, and undo exactly that.

Every change goes through a Journal that prints it (path by path), and records in
<config_dir>/install-manifest.json what is needed to undo it: the files and directories it created, and
for each settings edit the value it replaced. Uninstall removes the recorded plug-in and auto-start files
even if they were modified since (they are bgmask's own), restores each recorded setting to its previous
value, and removes a recorded directory only when it is empty; nothing else is touched. Re-running install
merges into the manifest, so the first run's "previous" values survive.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Optional, TextIO

import bgmask
from bgmask import paths
from bgmask.desktop import autostart
from bgmask.client import loader
from bgmask.desktop.hostprofiles import (
    Host, Profile, default_gimp_profiles, default_krita_profile, gimp_profiles, ini_get,
    ini_has_section, ini_set, ini_unset, krita_profiles,
)

MANIFEST_NAME = "install-manifest.json"
MANIFEST_VERSION = 1
GIMP_PLUGIN = "bgmask-remove-background"  # GIMP wants plug-ins/<name>/<name>.py, executable
KRITA_PLUGIN = "bgmask"  # X-KDE-Library of plugins/krita/bgmask.desktop and its package folder
CLIENT = "bgmask_client.py"
GIMP, KRITA, CONFIG, AUTOSTART = "gimp", "krita", "config", "autostart"
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


class InstallError(Exception):
    """Something the user has to fix (missing plug-in files, an unreadable settings file)."""


def plugins_root() -> Path:
    """The shipped plug-in tree (bgmask.plugins), the same files in a checkout and an installed package."""
    try:
        return loader.plugins_root()
    except ImportError as exc:
        raise InstallError(f"the plug-in files are missing from this bgmask ({exc}); reinstall it") from exc


def daemon_command(python: str, platform: str) -> list[str]:
    """What config.json's daemon_command holds: how a client starts the daemon in the foreground."""
    return [autostart.daemon_python(python, platform), "-m", "bgmask", "serve"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes, mode: Optional[int]) -> None:
    """Write beside the target and rename over it, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.bgmask-tmp")
    try:
        temporary.write_bytes(data)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _existing_mode(path: Path) -> Optional[int]:
    return stat.S_IMODE(path.stat().st_mode) if path.exists() else None


@dataclass
class Context:
    """Everything install depends on, explicit so tests can lay out any OS inside a temporary HOME."""

    host: Host
    config_dir: Path
    python: str
    out: TextIO
    plugins: Optional[Path] = None  # None: the shipped tree
    dry_run: bool = False
    live: bool = False  # run systemctl and touch the Windows registry: the real machine only
    autostart_mechanism: Optional[str] = None  # None: detect

    @property
    def manifest_path(self) -> Path:
        return self.config_dir / MANIFEST_NAME


@dataclass
class Journal:
    """Applies changes, prints each one, and keeps the manifest entries that undo them.

    In a dry run nothing is written; `made` and `gone` remember what the real run would have created and
    deleted by then, so the printed plan matches what a real run prints.
    """

    ctx: Context
    entries: list[dict[str, Any]] = field(default_factory=list)
    made: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, ctx: Context) -> "Journal":
        path = ctx.manifest_path
        if not path.exists():
            return cls(ctx)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != MANIFEST_VERSION or not isinstance(data.get("entries"), list):
                raise ValueError(f"unknown manifest version {data.get('version')!r}")
        except (ValueError, AttributeError, OSError) as exc:
            raise InstallError(f"cannot read the install manifest {path}: {exc}") from exc
        return cls(ctx, data["entries"])

    # --- bookkeeping -------------------------------------------------------------------------------------

    def say(self, verb: str, where: Any, detail: str = "") -> None:
        if self.ctx.dry_run and verb in _DRY_VERBS:
            verb = f"would {_DRY_VERBS[verb]}"
        self.ctx.out.write(f"  {verb:<24} {where}{(' ' + detail) if detail else ''}\n")

    @staticmethod
    def _identity(entry: dict[str, Any]) -> tuple[Any, ...]:
        return entry["type"], entry.get("path"), entry.get("section"), entry.get("key")

    def record(self, entry: dict[str, Any]) -> None:
        """Add an entry, or refresh an earlier one while keeping what the first run saw (its "previous")."""
        old = next((e for e in self.entries if self._identity(e) == self._identity(entry)), None)
        if old is None:
            self.entries.append(entry)
        else:
            old.update({k: v for k, v in entry.items() if k not in _FIRST_RUN_FACTS})

    def save(self) -> None:
        if self.ctx.dry_run:
            return
        self.ensure_dir(self.ctx.config_dir, CONFIG)
        data = {"version": MANIFEST_VERSION, "bgmask": bgmask.__version__,
                "platform": self.ctx.host.platform, "entries": self.entries}
        _atomic_write(self.ctx.manifest_path, (json.dumps(data, indent=2) + "\n").encode(), 0o600)

    def _is_dir(self, path: Path) -> bool:
        return str(path) not in self.gone and (path.is_dir() or str(path) in self.made)

    def _delete(self, path: Path) -> None:
        if self.ctx.dry_run:
            self.gone.add(str(path))
        elif path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()

    # --- changes -----------------------------------------------------------------------------------------

    def ensure_dir(self, path: Path, group: str) -> None:
        """Create path and its missing parents, recording each directory created."""
        missing = []
        for candidate in (path, *path.parents):
            if self._is_dir(candidate):
                break
            missing.append(candidate)
        for directory in reversed(missing):
            if self.ctx.dry_run:
                self.made.add(str(directory))
            else:
                directory.mkdir()
            self.record({"type": "dir", "path": str(directory), "group": group})
            self.say("created directory", f"{directory}{os.sep}")

    def write_file(self, path: Path, data: bytes, mode: int, group: str) -> None:
        self.ensure_dir(path.parent, group)
        current = path.read_bytes() if path.is_file() else None
        if current == data and (os.name == "nt" or _existing_mode(path) == mode):
            self.say("unchanged", path)
        else:
            if not self.ctx.dry_run:
                _atomic_write(path, data, mode)
            self.say("wrote" if current is None else "updated", path, f"(mode {mode:o})")
        self.record({"type": "file", "path": str(path), "group": group, "sha256": _sha256(data)})

    def symlink(self, link: Path, target: Path, group: str) -> None:
        self.ensure_dir(link.parent, group)
        if link.is_symlink() and Path(os.readlink(link)) == target:
            self.say("unchanged", link)
        else:
            if not self.ctx.dry_run:
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(target)
            self.say("linked", link, f"-> {target}")
        self.record({"type": "symlink", "path": str(link), "target": str(target), "group": group})

    def prune(self, folder: Path, keep: set[Path]) -> None:
        """Remove files an earlier install put under folder that the current plug-in no longer ships."""
        for entry in list(self.entries):
            path = Path(entry["path"]) if entry["type"] == "file" else None
            if path is not None and folder in path.parents and path not in keep:
                self._undo_file(entry)
                self.entries.remove(entry)

    def set_ini(self, path: Path, section: str, key: str, value: str, group: str) -> None:
        text = _read_text(path)
        previous = None if text is None else ini_get(text, section, key)
        new, separator = ini_set(text or "", section, key, value)
        if text is not None and new == text:
            self.say("unchanged", path, f"[{section}] {key}={value}")
        else:
            self.ensure_dir(path.parent, group)
            if not self.ctx.dry_run:
                _write_text(path, new)
            self.say("edited", path, f"[{section}] {key}={value} (was {_shown(previous)})")
        self.record({"type": "ini", "path": str(path), "section": section, "key": key, "value": value,
                     "group": group, "previous": previous, "created_file": text is None,
                     "created_section": text is None or not ini_has_section(text, section),
                     "separator": separator})

    def set_json(self, path: Path, key: str, value: Any, group: str) -> None:
        data = _read_json(path)
        had_key = data is not None and key in data
        if had_key and data[key] == value:  # type: ignore[index]
            self.say("unchanged", path, key)
        else:
            self.ensure_dir(path.parent, group)
            if not self.ctx.dry_run:
                _write_json(path, {**(data or {}), key: value})
            self.say("edited", path, f"{key} = {json.dumps(value)}")
        self.record({"type": "json", "path": str(path), "key": key, "value": value, "group": group,
                     "previous": data[key] if had_key else None,  # type: ignore[index]
                     "had_key": had_key, "created_file": data is None})

    def set_registry(self, value: str, group: str) -> None:
        previous = self._registry_get()
        if previous == value:
            self.say("unchanged", REGISTRY_LOCATION)
        else:
            if not self.ctx.dry_run:
                autostart.registry_set(value)
            self.say("set", REGISTRY_LOCATION, f"= {value}")
        self.record({"type": "registry", "key": autostart.RUN_VALUE, "value": value, "group": group,
                     "previous": previous})

    def _registry_get(self) -> Optional[str]:
        if not (self.ctx.live and autostart.registry_available()):
            raise InstallError("the Windows Run key can only be read and changed on Windows itself")
        return autostart.registry_get()

    # --- undo --------------------------------------------------------------------------------------------

    def _undo_file(self, entry: dict[str, Any]) -> None:
        path = Path(entry["path"])
        if not path.is_file() or str(path) in self.gone:
            return
        modified = _sha256(path.read_bytes()) != entry["sha256"]
        self._delete(path)
        self.say("removed", path, "(modified since install; removed all the same: it is bgmask's)"
                 if modified else "")

    def _undo_symlink(self, entry: dict[str, Any]) -> None:
        path = Path(entry["path"])
        if path.is_symlink():
            self._delete(path)
            self.say("removed", path)

    def _undo_ini(self, entry: dict[str, Any]) -> None:
        path = Path(entry["path"])
        text = _read_text(path)
        if text is None:
            return
        section, key, previous = entry["section"], entry["key"], entry["previous"]
        if previous is None:
            new = ini_unset(text, section, key, entry["created_section"], entry["separator"])
        else:
            new = ini_set(text, section, key, previous)[0]
        if entry["created_file"] and not new.strip():
            self._delete(path)
            self.say("removed", path)
        elif new != text:
            if not self.ctx.dry_run:
                _write_text(path, new)
            self.say("restored", path, f"[{section}] {key} (back to {_shown(previous)})")

    def _undo_json(self, entry: dict[str, Any]) -> None:
        path = Path(entry["path"])
        data = _read_json(path, strict=False)
        if data is None:
            return
        key = entry["key"]
        if entry["had_key"]:
            data[key] = entry["previous"]
        else:
            data.pop(key, None)
        if entry["created_file"] and not data:
            self._delete(path)
            self.say("removed", path)
        else:
            if not self.ctx.dry_run:
                _write_json(path, data)
            was = json.dumps(entry["previous"]) if entry["had_key"] else "unset"
            self.say("restored", path, f"{key} (back to {was})")

    def _undo_registry(self, entry: dict[str, Any]) -> None:
        previous = entry["previous"]
        if self._registry_get() != previous:
            if not self.ctx.dry_run:
                autostart.registry_set(previous)
            self.say("removed" if previous is None else "restored", REGISTRY_LOCATION)

    def undo(self, groups: Optional[set[str]] = None) -> list[dict[str, Any]]:
        """Undo the recorded changes of the given groups (all when None), newest first; returns them."""
        chosen = [e for e in self.entries if groups is None or e["group"] in groups]
        handlers = {"file": self._undo_file, "symlink": self._undo_symlink, "ini": self._undo_ini,
                    "json": self._undo_json, "registry": self._undo_registry}
        for entry in reversed(chosen):
            if entry["type"] != "dir":
                handlers[entry["type"]](entry)
                self.entries.remove(entry)
        if all(e["type"] == "dir" for e in self.entries):
            # Nothing of ours is left but directories: drop the manifest, then every directory we made.
            if self.ctx.manifest_path.exists():
                self._delete(self.ctx.manifest_path)
                self.say("removed", self.ctx.manifest_path)
            self._remove_dirs(list(self.entries))
        else:
            self._remove_dirs([e for e in chosen if e["type"] == "dir"])
            self.save()
        return chosen

    def _remove_dirs(self, entries: list[dict[str, Any]]) -> None:
        """Remove recorded directories deepest first, each only when nothing else lives in it."""
        for entry in sorted(entries, key=lambda e: len(Path(e["path"]).parts), reverse=True):
            path = Path(entry["path"])
            if path.is_dir() and not path.is_symlink() and str(path) not in self.gone:
                if any(str(child) not in self.gone for child in path.iterdir()):
                    self.say("kept", f"{path}{os.sep}", "(not empty: holds files that are not bgmask's)")
                    continue
                self._delete(path)
                self.say("removed directory", f"{path}{os.sep}")
            self.entries.remove(entry)


_DRY_VERBS = {"created directory": "create directory", "wrote": "write", "updated": "update",
              "linked": "link", "edited": "edit", "set": "set", "removed": "remove",
              "removed directory": "remove directory", "restored": "restore"}
REGISTRY_LOCATION = f"HKEY_CURRENT_USER\\{autostart.RUN_KEY}\\{autostart.RUN_VALUE}"
# Facts about the state before bgmask first touched a setting; a re-run must not overwrite them.
_FIRST_RUN_FACTS = ("previous", "had_key", "created_file", "created_section", "separator")


def _shown(value: Optional[str]) -> str:
    return "unset" if value is None else repr(value)


def _read_text(path: Path) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, text.encode("utf-8", errors="surrogateescape"), _existing_mode(path))


def _read_json(path: Path, strict: bool = True) -> Optional[dict[str, Any]]:
    """A JSON object file, None when absent; an unreadable one stops install rather than being overwritten."""
    text = _read_text(path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        if not strict:
            return None
        raise InstallError(f"{path} is not valid JSON ({exc}); fix or remove it, then run again") from exc
    if not isinstance(data, dict):
        if not strict:
            return None
        raise InstallError(f"{path} does not hold a JSON object; fix or remove it, then run again")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, (json.dumps(data, indent=2) + "\n").encode(), _existing_mode(path))


# --- what gets installed ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sources:
    """The plug-in files to copy, checked up front so a broken package changes nothing."""

    root: Path

    @property
    def client(self) -> Path:
        return self.root / "common" / CLIENT

    @property
    def gimp(self) -> Path:
        return self.root / "gimp" / GIMP_PLUGIN

    @property
    def krita_desktop(self) -> Path:
        return self.root / "krita" / f"{KRITA_PLUGIN}.desktop"

    @property
    def krita_package(self) -> Path:
        return self.root / "krita" / KRITA_PLUGIN

    def check(self, apps: Collection[str]) -> None:
        needed = [self.client]
        if GIMP in apps:
            needed.append(self.gimp / f"{GIMP_PLUGIN}.py")
        if KRITA in apps:
            needed += [self.krita_desktop, self.krita_package / "__init__.py"]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise InstallError("the bgmask package is incomplete; missing: " + ", ".join(missing))


def _source_files(folder: Path) -> list[Path]:
    """Every file of a plug-in folder, relative to it, without Python caches."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        found += [Path(directory, f).relative_to(folder) for f in sorted(files)
                  if not f.endswith(_SKIPPED_SUFFIXES)]
    return found


def _copy_plugin(journal: Journal, source: Path, dest: Path, client: Path, group: str,
                 executable: Optional[str] = None) -> None:
    """Copy a plug-in folder plus the shared client into dest, then drop files earlier versions left."""
    written = set()
    for relative in _source_files(source):
        target = dest / relative
        mode = 0o755 if relative.as_posix() == executable else 0o644
        journal.write_file(target, (source / relative).read_bytes(), mode, group)
        written.add(target)
    journal.write_file(dest / CLIENT, client.read_bytes(), 0o644, group)
    written.add(dest / CLIENT)
    journal.prune(dest, written)


def _install_gimp(journal: Journal, profile: Profile, sources: Sources) -> None:
    _copy_plugin(journal, sources.gimp, profile.plugin_dir / GIMP_PLUGIN, sources.client, GIMP,
                 executable=f"{GIMP_PLUGIN}.py")


def _install_krita(journal: Journal, profile: Profile, sources: Sources) -> None:
    assert profile.kritarc is not None
    journal.write_file(profile.plugin_dir / sources.krita_desktop.name, sources.krita_desktop.read_bytes(),
                       0o644, KRITA)
    _copy_plugin(journal, sources.krita_package, profile.plugin_dir / KRITA_PLUGIN, sources.client, KRITA)
    journal.set_ini(profile.kritarc, "python", f"enable_{KRITA_PLUGIN}", "true", KRITA)


def _profiles(ctx: Context, app: str, create_missing: bool) -> list[Profile]:
    if app == GIMP:
        found, defaults = gimp_profiles(ctx.host), default_gimp_profiles(ctx.host)
    else:
        found, defaults = krita_profiles(ctx.host), [default_krita_profile(ctx.host)]
    return found or (defaults if create_missing else [])


def _enable_autostart(journal: Journal, ctx: Context) -> autostart.Plan:
    plan = autostart.plan(ctx.host, ctx.python, ctx.autostart_mechanism)
    ctx.out.write(f"Auto-start at login ({plan.description}):\n")
    for path, data in plan.files:
        journal.write_file(path, data, 0o644, AUTOSTART)
    for link, target in plan.symlinks:
        journal.symlink(link, target, AUTOSTART)
    if plan.registry_value is not None:
        journal.set_registry(plan.registry_value, AUTOSTART)
    if plan.mechanism == autostart.SYSTEMD:
        _reload_systemd(ctx)
    return plan


def _reload_systemd(ctx: Context) -> None:
    if ctx.live and not ctx.dry_run:
        warning = autostart.reload_systemd()
        if warning:
            ctx.out.write(f"  warning: {warning}\n")


def install(ctx: Context, apps: list[str], create_missing: bool, with_autostart: bool) -> int:
    """Install the plug-ins for apps, record the daemon command, set up auto-start; print every change."""
    sources = Sources(ctx.plugins or plugins_root())
    sources.check(apps)
    config_file = ctx.config_dir / "config.json"
    _read_json(config_file)  # an unreadable config.json stops us before anything is changed
    journal = Journal.load(ctx)
    sandboxes = []
    try:
        for app in apps:
            profiles = _profiles(ctx, app, create_missing)
            if not profiles:
                name = "GIMP 3" if app == GIMP else "Krita 5"
                ctx.out.write(f"{name}: no profile found, skipped (start it once, or pass --{app} to "
                              f"install into the default location)\n")
            for profile in profiles:
                ctx.out.write(f"{profile.label}: {profile.root}\n")
                (_install_gimp if app == GIMP else _install_krita)(journal, profile, sources)
                if profile.sandbox:
                    sandboxes.append(profile)
        ctx.out.write("Daemon:\n")
        journal.set_json(config_file, "daemon_command",
                         daemon_command(ctx.python, ctx.host.platform), CONFIG)
        if with_autostart:
            _enable_autostart(journal, ctx)
    finally:
        journal.save()
    for profile in sandboxes:
        ctx.out.write(
            f"Note: {profile.label} is sandboxed. Its plug-in talks to the daemon on this machine over "
            f"127.0.0.1 and finds it through $XDG_RUNTIME_DIR/app/{profile.sandbox}/bgmask/daemon.json, "
            f"which the daemon writes; keep auto-start enabled or run `bgmask serve` outside the sandbox.\n")
    _epilogue(ctx, "Restart GIMP and Krita to load the plug-ins. `bgmask uninstall` undoes all of this.")
    return 0


def uninstall(ctx: Context) -> int:
    if not ctx.manifest_path.exists():
        ctx.out.write(f"Nothing to uninstall: no install manifest at {ctx.manifest_path}.\n")
        return 0
    journal = Journal.load(ctx)
    ctx.out.write(f"Undoing what {ctx.manifest_path} records:\n")
    _after_undo(ctx, journal.undo())
    return 0


def autostart_enable(ctx: Context) -> int:
    journal = Journal.load(ctx)
    try:
        _enable_autostart(journal, ctx)
    finally:
        journal.save()
    _epilogue(ctx, "The daemon will start at your next login.")
    return 0


def autostart_disable(ctx: Context) -> int:
    journal = Journal.load(ctx)
    if not any(e["group"] == AUTOSTART for e in journal.entries):
        ctx.out.write("Auto-start is not enabled by bgmask; nothing to do.\n")
        return 0
    ctx.out.write("Removing auto-start at login:\n")
    _after_undo(ctx, journal.undo({AUTOSTART}))
    return 0


def _after_undo(ctx: Context, undone: list[dict[str, Any]]) -> None:
    if any(str(e.get("path")).endswith(autostart.SYSTEMD_UNIT) for e in undone):
        _reload_systemd(ctx)
    _epilogue(ctx, "A daemon that is running now keeps running until it is stopped or you log out.")


def autostart_status(ctx: Context) -> int:
    """Print whether auto-start is set up and how; exit status 0 when enabled, 1 when not."""
    journal = Journal.load(ctx)
    recorded = [e for e in journal.entries if e["group"] == AUTOSTART and e["type"] != "dir"]
    lines, enabled = [], bool(recorded)
    for entry in recorded:
        if entry["type"] == "registry":
            where = REGISTRY_LOCATION
            present = autostart.registry_available() and autostart.registry_get() == entry["value"]
        else:
            where = entry["path"]
            present = os.path.lexists(where)
        enabled = enabled and present
        lines.append(f"  {'present' if present else 'MISSING':<8} {where}\n")
    plan = autostart.plan(ctx.host, ctx.python, ctx.autostart_mechanism)
    how = f"recorded in {ctx.manifest_path}" if recorded else f"`enable` would set up a {plan.description}"
    ctx.out.write(f"Auto-start at login: {'enabled' if enabled else 'not enabled'} ({how})\n")
    ctx.out.write("".join(lines))
    ctx.out.write(f"Command: {subprocess.list2cmdline(plan.command)}\n")
    return 0 if enabled else 1


def _epilogue(ctx: Context, message: str) -> None:
    ctx.out.write(("Dry run: nothing was changed.\n" if ctx.dry_run else "") + message + "\n")


# --- command line ----------------------------------------------------------------------------------------

def context_for(args: argparse.Namespace) -> Context:
    """The live context of a command-line run (with --dry-run when given)."""
    host = Host.current()
    dry_run = getattr(args, "dry_run", False)
    return Context(host=host, config_dir=paths.config_dir(), python=sys.executable, out=sys.stdout,
                   dry_run=dry_run, live=True)
