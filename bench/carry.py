"""Bring large files to a machine that can only receive a few tens of MiB per call (the lent GPU machine: no
network, at most 64 MiB carried per call, files persist while it stays warm).

    python bench/carry.py pack FILE... --out bench/.carry [--batch-mib 48]   # here: pieces in batch folders
    python bench/carry.py receive bench/.carry/batch-03 --store DIR            # there, once per batch
    python bench/carry.py missing --store DIR                                   # there: batches still to send
    python bench/carry.py assemble --store DIR --out DIR2                       # there: the files, verified

Each file is cut into pieces of at most --batch-mib; pieces are grouped into batch folders of at most that size,
each with a copy of the manifest (names, sizes, SHA-256 of every piece and file), so any batch can arrive first
and a corrupt or missing piece is named. Standard library only: the device's Python needs nothing."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

MiB = 1 << 20
MANIFEST = "manifest.json"
CHUNK = 4 * MiB


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _copy_range(src: Path, dst: Path, start: int, length: int) -> str:
    """Copy `length` bytes of `src` from `start` into `dst`; returns their SHA-256."""
    h = hashlib.sha256()
    with open(src, "rb") as f, open(dst, "wb") as out:
        f.seek(start)
        left = length
        while left:
            block = f.read(min(CHUNK, left))
            if not block:
                raise ValueError(f"{src} is shorter than expected")
            h.update(block)
            out.write(block)
            left -= len(block)
    return h.hexdigest()


def pack(files: list[Path], out: Path, batch_bytes: int) -> dict[str, Any]:
    """Cut `files` into pieces and batches under `out` (emptied first); returns the manifest."""
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("two files with the same name")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest: dict[str, Any] = {"files": [], "batches": 0}
    batch, used = -1, 0
    for f in files:
        size = f.stat().st_size
        entry = {"name": f.name, "size": size, "sha256": _sha256(f), "pieces": []}
        offset = 0
        while offset < size or (size == 0 and not entry["pieces"]):
            length = min(batch_bytes, size - offset)
            if batch < 0 or used + length > batch_bytes:
                batch, used = batch + 1, 0
            folder = out / f"batch-{batch:02d}"
            folder.mkdir(exist_ok=True)
            piece = f"{f.name}.{len(entry['pieces']):03d}"
            digest = _copy_range(f, folder / piece, offset, length)
            entry["pieces"].append({"name": piece, "size": length, "sha256": digest, "batch": batch})
            offset += length
            used += length
        manifest["files"].append(entry)
    manifest["batches"] = batch + 1
    text = json.dumps(manifest, indent=1)
    for folder in sorted(out.glob("batch-*")):
        (folder / MANIFEST).write_text(text)
    (out / MANIFEST).write_text(text)
    return manifest


def receive(batch: Path, store: Path) -> int:
    """Copy a batch's pieces into `store`, checking each; returns how many arrived."""
    store.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((batch / MANIFEST).read_text())
    known = {p["name"]: p for f in manifest["files"] for p in f["pieces"]}
    count = 0
    for piece in sorted(batch.iterdir()):
        if piece.name == MANIFEST:
            continue
        want = known.get(piece.name)
        if want is None or _sha256(piece) != want["sha256"]:
            raise ValueError(f"{piece} is not a piece of this manifest or is corrupt")
        tmp = store / f".{piece.name}.part"
        shutil.copyfile(piece, tmp)
        os.replace(tmp, store / piece.name)
        count += 1
    (store / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return count


def missing(store: Path) -> list[int]:
    """The batch numbers whose pieces are not (all, intact by size) in `store` yet."""
    manifest = json.loads((store / MANIFEST).read_text())
    need = set()
    for f in manifest["files"]:
        for p in f["pieces"]:
            got = store / p["name"]
            if not got.exists() or got.stat().st_size != p["size"]:
                need.add(p["batch"])
    return sorted(need)


def assemble(store: Path, out: Path) -> list[Path]:
    """Join the pieces in `store` into the original files under `out`, each checked against its SHA-256."""
    lacking = missing(store)
    if lacking:
        raise ValueError(f"batches still to receive: {', '.join(map(str, lacking))}")
    manifest = json.loads((store / MANIFEST).read_text())
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for f in manifest["files"]:
        dst = out / f["name"]
        tmp = out / f".{f['name']}.part"
        with open(tmp, "wb") as w:
            for p in f["pieces"]:
                with open(store / p["name"], "rb") as r:
                    shutil.copyfileobj(r, w, CHUNK)
        if _sha256(tmp) != f["sha256"]:
            tmp.unlink()
            raise ValueError(f"{f['name']} does not match its SHA-256 after joining: receive its batches again")
        os.replace(tmp, dst)
        made.append(dst)
    return made


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-mib", type=float, default=48.0, help="at most this much per batch (default 48 MiB)")
    p = sub.add_parser("receive")
    p.add_argument("batch", type=Path)
    p.add_argument("--store", type=Path, required=True)
    p = sub.add_parser("missing")
    p.add_argument("--store", type=Path, required=True)
    p = sub.add_parser("assemble")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            m = pack(args.files, args.out, int(args.batch_mib * MiB))
            print(f"{len(m['files'])} files in {m['batches']} batches under {args.out}")
        elif args.command == "receive":
            print(f"received {receive(args.batch, args.store)} pieces into {args.store}")
        elif args.command == "missing":
            lacking = missing(args.store)
            print("all batches received" if not lacking else f"batches still to receive: {' '.join(map(str, lacking))}")
            return 3 if lacking else 0
        else:
            for path in assemble(args.store, args.out):
                print(path)
    except (OSError, ValueError) as exc:
        print(f"carry: {exc}", file=sys.stderr)
        return 3 if "still to receive" in str(exc) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
