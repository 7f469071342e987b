"""Which file each input's result goes to, decided before any work starts, and writing it so that no file is
ever lost: never onto an input, never two inputs onto one name, never over an existing file unless asked,
and never half a file (a temporary name in the target folder, renamed when complete)."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Sequence

from bgmask import errors as E
from bgmask.errors import BgmaskError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}  # what a folder run takes
CUTOUT_SUFFIX = "-cutout"
MASK_SUFFIX = "-mask"
STDIO = "-"
# Volumes where A.png and a.png are one file by default (APFS, NTFS): names are compared casefolded there.
CASE_INSENSITIVE = sys.platform in ("darwin", "win32")


@dataclass(frozen=True)
class Job:
    """One input (a path, or "-" for stdin) and where its result goes (a path, or "-" for stdout)."""

    source: str
    dest: str


@dataclass
class Plan:
    """Every job of a run, decided before the first one starts, and what the user is told about it."""

    jobs: list[Job]
    renamed: list[tuple[str, str]]  # (source, dest) given the source extension to keep names apart
    skipped_outputs: int  # files in the folders that look like this tool's own results


def is_own_output(path: Path) -> bool:
    """A result of an earlier run written beside its input (NAME-cutout.png, NAME-mask.tif, ...)."""
    return path.stem.endswith((CUTOUT_SUFFIX, MASK_SUFFIX))


def name_key(name: str, case_insensitive: bool = CASE_INSENSITIVE) -> str:
    """What decides whether two result names are the same file on this platform's usual volumes."""
    return name.casefold() if case_insensitive else name


def folder_images(folder: Path, recursive: bool, exclude: Optional[Path]) -> Iterator[Path]:
    """The images of `folder`, sorted; with `recursive` those of its sub-folders too, but never through a
    symbolic link to a folder (a link to `.` or to a parent would never end)."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue  # hidden files, and our own temporary files
        if entry.is_dir():
            if recursive and not entry.is_symlink() and (exclude is None or entry.resolve() != exclude):
                yield from folder_images(entry, recursive, exclude)
        elif entry.suffix.lower() in EXTENSIONS and entry.is_file():
            yield entry


def plan(inputs: Sequence[str], output: Optional[str], mask_only: bool, ext: str = ".png",
         recursive: bool = False, case_insensitive: bool = CASE_INSENSITIVE) -> Plan:
    """Every (input, output) pair, or a BAD_REQUEST saying what to change. `ext` is the result extension for
    outputs that are not named by `-o FILE`; with `case_insensitive` names differing only in case clash."""
    found: list[tuple[str, Optional[Path]]] = []  # (source, folder it was found in: mirrored under -o)
    skipped = 0
    out_dir = Path(output).resolve() if output not in (None, STDIO) else None
    for raw in inputs:
        if raw == STDIO:
            found.append((STDIO, None))
            continue
        p = Path(raw)
        if p.is_dir():
            for q in folder_images(p, recursive, out_dir):
                if output is None and is_own_output(q):
                    skipped += 1
                    continue
                found.append((str(q), p))
        else:
            found.append((raw, None))
    if not found:
        raise BgmaskError(E.BAD_REQUEST, "no images found in the given paths (.png, .jpg, .webp, .tif, .bmp, .gif)")
    if output == STDIO or (output is None and found == [(STDIO, None)]):
        if len(found) > 1:
            raise BgmaskError(E.BAD_REQUEST, "-o - (standard output) takes one input; give -o a folder")
        return Plan([Job(found[0][0], STDIO)], [], skipped)
    if STDIO in (s for s, _ in found) and len(found) > 1:
        raise BgmaskError(E.BAD_REQUEST, "- (standard input) is read alone; give it one input and -o FILE or -o -")
    names_a_file = (output is not None and Path(output).suffix.lower() in EXTENSIONS and not Path(output).is_dir()
                    and not output.endswith(("/", os.sep)))
    if names_a_file and len(found) > 1:
        raise BgmaskError(E.BAD_REQUEST, f"-o {output} names one file but there are {len(found)} inputs; give -o a "
                                         "folder (it is created)")
    to_folder = output is not None and not names_a_file and (
        len(found) > 1 or Path(output).is_dir() or output.endswith(("/", os.sep)) or any(r is not None for _, r in found))
    if output is not None and not to_folder:
        return _checked(Plan([Job(found[0][0], output)], [], skipped))
    if to_folder and Path(output).exists() and not Path(output).is_dir():
        raise BgmaskError(E.BAD_REQUEST, f"-o {output} is a file; give -o a folder for these inputs")
    suffix = "" if to_folder else (MASK_SUFFIX if mask_only else CUTOUT_SUFFIX)

    def target(src: str, root: Optional[Path], keep_ext: bool) -> str:
        path = Path(src)
        name = path.stem + (f"-{path.suffix[1:].lower()}" if keep_ext else "") + suffix + ext
        if not to_folder:
            return str(path.with_name(name))
        sub = path.parent.relative_to(root) if root is not None else Path()
        return str(Path(output) / sub / name)

    first = [target(s, r, False) for s, r in found]
    keys = [name_key(d, case_insensitive) for d in first]
    clashing = {k for k in keys if keys.count(k) > 1}
    jobs, renamed = [], []
    for (src, root), dest in zip(found, first):
        if name_key(dest, case_insensitive) in clashing:
            dest = target(src, root, True)
            renamed.append((src, dest))
        jobs.append(Job(src, dest))
    return _checked(Plan(jobs, renamed, skipped), case_insensitive)


def _file_id(path: str) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _checked(result: Plan, case_insensitive: bool = CASE_INSENSITIVE) -> Plan:
    """Refuse a plan that would write onto one of its inputs or write one file twice. An existing destination
    is compared with the inputs as a file (device and inode), not by name: on a case-insensitive volume
    A.PNG is a.png."""
    sources = {os.path.realpath(j.source) for j in result.jobs}
    source_ids = {_file_id(j.source) for j in result.jobs if j.source != STDIO} - {None}
    seen: set[str] = set()
    for job in result.jobs:
        real = os.path.realpath(job.dest)
        if real in sources or _file_id(job.dest) in source_ids:
            raise BgmaskError(E.BAD_REQUEST, f"{job.dest} is an input: its result would replace it; choose another -o")
        key = name_key(real, case_insensitive)
        if key in seen:
            raise BgmaskError(E.BAD_REQUEST, f"two inputs would both be written to {job.dest}; choose another -o")
        seen.add(key)
    return result


def _result_mode(dest: Path, overwrite: bool) -> int:
    """The mode of the file that `dest` replaces, else the one any new file gets (0o666 less the umask)."""
    if overwrite:
        try:
            return stat.S_IMODE(dest.stat().st_mode)
        except FileNotFoundError:
            pass
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(dest: Path, fill: Callable[[BinaryIO], None], overwrite: bool) -> bool:
    """Create `dest` from what fill(stream) writes, through a temporary file beside it that is renamed only
    when complete (removed on any failure or interrupt). Without `overwrite` an existing `dest` is kept and
    False returned; also when it appears while the result is written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".bgmask-part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            fill(stream)
            if hasattr(os, "fchmod"):  # mkstemp made it 0600: the result gets the mode any other new file would
                os.fchmod(stream.fileno(), _result_mode(dest, overwrite))
        if overwrite:
            os.replace(tmp, dest)
            return True
        try:
            os.link(tmp, dest)  # fails if dest exists: never replaces a file that appeared meanwhile
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if dest.exists():
                return False
            os.replace(tmp, dest)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
