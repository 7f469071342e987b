"""`bgmask watch IN OUT`: a hot folder. Every image that appears in IN (sub-folders too, mirrored in OUT) is
processed once it is complete, until Ctrl-C: its size and modification time have not changed for STABLE_S,
and it decodes. A file that does not decode while it is younger than SETTLE_S is taken to be still written
(a copy that stalls, a download) and tried again; only an older one is reported as failed. A file that
changes later is taken again, but its earlier result is replaced only with --overwrite (kept otherwise).
Result names follow the folder as it is, as `remove` names them: OUT/NAME.png, or OUT/NAME-ext.png for every
image of a folder where another image has the same NAME. Ctrl-C stops and exits 130, as `remove` does."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bgmask.files import outputs
from bgmask.cli.remove import DAEMON_FAILURES, INTERRUPTED_EXIT, Downloads, Interruption, add_mask_arguments, \
    connect, result_format, run_job, settings_from
from bgmask.client.loader import load_client
from bgmask.errors import BgmaskError

POLL_S = 0.5
STABLE_S = 1.0  # unchanged this long: the program writing the file has probably finished
SETTLE_S = 30.0  # an unreadable file modified less than this long ago may still be being written

Stamp = tuple[int, int]  # size, mtime_ns


def _stamp(path: Path) -> "Stamp | None":
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class Watcher:
    """Which files of IN are ready, and where each one's result goes."""

    def __init__(self, folder: Path, out: Path, ext: str) -> None:
        self.folder, self.out, self.ext = folder, out, ext
        self.seen: dict[Path, tuple[Stamp, float]] = {}  # path -> (stamp, when it was first seen so)
        self.handled: dict[Path, Stamp] = {}

    def ready(self) -> list[Path]:
        now = time.monotonic()
        found = []
        exclude = self.out.resolve()
        for path in outputs.folder_images(self.folder, True, exclude):
            stamp = _stamp(path)
            if stamp is None or self.handled.get(path) == stamp:
                continue
            previous = self.seen.get(path)
            if previous is None or previous[0] != stamp:
                self.seen[path] = (stamp, now)
            elif now - previous[1] >= STABLE_S:
                found.append(path)
        return found

    def dest(self, src: Path) -> Path:
        """OUT/<sub-folders>/NAME.png; NAME-jpg.png when another image of src's folder has the same NAME
        (decided from the folder listing, so a restart or the order of arrival never changes it)."""
        sub = src.parent.relative_to(self.folder)
        stem = outputs.name_key(src.stem)
        twins = [p for p in outputs.folder_images(src.parent, False, None) if p != src and outputs.name_key(p.stem) == stem]
        name = f"{src.stem}-{src.suffix[1:].lower()}" if twins else src.stem
        return self.out / sub / (name + self.ext)


def cmd_watch(args: argparse.Namespace) -> int:
    client_module = load_client()
    folder, out = Path(args.folder), Path(args.out)
    try:
        settings = settings_from(args)
        if not folder.is_dir():
            raise BgmaskError("bad_request", f"{folder} is not a folder")
        if out.resolve() == folder.resolve():
            raise BgmaskError("bad_request", "OUT must be another folder than IN: results would be taken as new images")
        result_format(str(out / "x.png"), settings)
    except BgmaskError as exc:
        print(f"bgmask: {exc.message}", file=sys.stderr)
        return 2
    watcher = Watcher(folder, out, ".png")
    done, failed, interrupted = 0, 0, False
    with Interruption() as stop:
        try:
            client = connect(args.timeout, sys.stderr)
            print(f"bgmask: watching {folder} (results in {out}); Ctrl-C stops", file=sys.stderr, flush=True)
            downloads = Downloads()
            while not stop.requested:
                for src in watcher.ready():
                    stamp = _stamp(src)
                    dest = watcher.dest(src)
                    watcher.handled[src] = stamp  # type: ignore[assignment]
                    if not args.overwrite and dest.exists():
                        print(f"bgmask: {dest} exists, kept (--overwrite replaces it)", file=sys.stderr)
                        continue
                    outcome = _process(client, src, dest, settings, args.overwrite, stop, downloads, client_module,
                                       still_written=_young(src))
                    if outcome == "retry":
                        watcher.handled.pop(src, None)
                        watcher.seen.pop(src, None)  # wait for STABLE_S again, then try again
                        continue
                    if outcome is None:
                        break  # interrupted
                    if outcome == "done":
                        done += 1
                        print(f"{src} -> {dest}", flush=True)
                    elif outcome == "kept":
                        print(f"bgmask: {dest} appeared meanwhile, kept (--overwrite replaces it)", file=sys.stderr)
                    else:
                        failed += 1
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            interrupted = True
        except client_module.BgmaskError as exc:
            print(f"bgmask: {exc.message}", file=sys.stderr)
            return 1
        interrupted = interrupted or stop.requested
    print(f"{done} done, {failed} failed (stopped)", flush=True)
    return INTERRUPTED_EXIT if interrupted else 0


def _young(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < SETTLE_S
    except OSError:
        return False


def _process(client: Any, src: Path, dest: Path, settings: Any, overwrite: bool, stop: Interruption,
             downloads: Downloads, client_module: Any, still_written: bool) -> "str | None":
    """"done" when written, "kept" when a result appeared meanwhile (without --overwrite), "failed" (said on
    stderr), None when Ctrl-C cancelled it, "retry" when it does not decode but may still be being written."""
    try:
        written = run_job(client, outputs.Job(str(src), str(dest)), settings, overwrite, stop, downloads)
        return "done" if written else "kept"
    except (BgmaskError, client_module.BgmaskError) as exc:
        if exc.code == "cancelled" and stop.requested:
            return None
        if exc.code == "bad_image" and still_written:
            return "retry"
        print(f"bgmask: {src}: {exc.message}", file=sys.stderr, flush=True)
        if exc.code in DAEMON_FAILURES:
            raise
        return "failed"
    except OSError as exc:
        print(f"bgmask: {src}: could not write {dest} ({exc.strerror or exc}); check the folder", file=sys.stderr)
        return "failed"
    finally:
        downloads.close()


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `watch`."""
    p = subparsers.add_parser("watch", help="process images as they appear in a folder, until Ctrl-C",
                              description="Watch IN (and its sub-folders) and write a result into OUT for every "
                                          "image once it is completely written. Existing results are kept unless "
                                          "--overwrite; Ctrl-C stops (exit status 130).")
    p.add_argument("folder", metavar="IN", help="the folder to watch")
    p.add_argument("out", metavar="OUT", help="the folder for results (created; may not be IN)")
    add_mask_arguments(p)
    p.set_defaults(func=cmd_watch)
