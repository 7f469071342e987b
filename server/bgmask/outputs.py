"""Which file each input's result goes to, decided before any work starts, and writing it so that no file is
ever lost: never onto an input, never two inputs onto one name, never over an existing file unless asked,
and never half a file (a temporary name in the target folder, renamed when complete)."""

from __future__ import annotations

import os
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


def folder_images(folder: Path, recursive: bool, exclude: Optional[Path]) -> Iterator[Path]:
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue  # hidden files, and our own temporary files
        if entry.is_dir():
            if recursive and (exclude is None or entry.resolve() != exclude):
                yield from folder_images(entry, recursive, exclude)
        elif entry.suffix.lower() in EXTENSIONS and entry.is_file():
            yield entry


def plan(inputs: Sequence[str], output: Optional[str], mask_only: bool, ext: str = ".png",
         recursive: bool = False) -> Plan:
    """Every (input, output) pair, or a BAD_REQUEST saying what to change. `ext` is the result extension for
    outputs that are not named by `-o FILE`."""
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
    clashing = {d for d in first if first.count(d) > 1}
    jobs, renamed = [], []
    for (src, root), dest in zip(found, first):
        if dest in clashing:
            dest = target(src, root, True)
            renamed.append((src, dest))
        jobs.append(Job(src, dest))
    return _checked(Plan(jobs, renamed, skipped))


def _checked(result: Plan) -> Plan:
    """Refuse a plan that would write onto one of its inputs or write one file twice."""
    sources = {os.path.realpath(j.source) for j in result.jobs}
    seen: set[str] = set()
    for job in result.jobs:
        real = os.path.realpath(job.dest)
        if real in sources:
            raise BgmaskError(E.BAD_REQUEST, f"{job.dest} is an input: its result would replace it; choose another -o")
        if real in seen:
            raise BgmaskError(E.BAD_REQUEST, f"two inputs would both be written to {job.dest}; choose another -o")
        seen.add(real)
    return result


def write_atomically(dest: Path, fill: Callable[[BinaryIO], None], overwrite: bool) -> bool:
    """Create `dest` from what fill(stream) writes, through a temporary file beside it that is renamed only
    when complete (removed on any failure or interrupt). Without `overwrite` an existing `dest` is kept and
    False returned; also when it appears while the result is written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".bgmask-part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            fill(stream)
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
