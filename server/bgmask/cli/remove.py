"""`bgmask remove`: files and folders through the daemon, without ever losing a file (see files/outputs.py).

Ctrl-C cancels the request in flight (the daemon drops it), removes any half-written result, prints
`N done, M failed, K not started (interrupted)` and exits 130; a second Ctrl-C stops at once."""

from __future__ import annotations

import argparse
import io
import math
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Optional, TextIO

from bgmask.files import outputs
from bgmask.daemon import runtime
from bgmask.client.loader import load_client
from bgmask.errors import BgmaskError
from bgmask.client.mask_options import MASK_OPTIONS, QUALITIES
from bgmask.cli.progressbar import ProgressBar

if TYPE_CHECKING:  # numpy and Pillow load only when images are processed: `bgmask status` starts ~0.3 s sooner
    from bgmask.client.removal import ProgressFn, Settings

INTERRUPTED_EXIT = 130
START_NOTICE_S = 1.0  # say that the daemon is starting when connecting takes longer than this

# Failures of the daemon connection rather than of one file: stop instead of failing every file alike.
# device_unavailable is not one of them: a request can run out of GPU memory where a smaller one fits
# (with no usable device at all `serve --device gpu` does not start, so connecting fails before any file).
DAEMON_FAILURES = {"not_running", "connection_lost", "timeout", "unauthorized", "protocol_error"}


class Interruption:
    """Ctrl-C as a request to stop: inside a daemon request it only sets a flag that the client polls
    (it sends `cancel` and the request ends with `cancelled`); anywhere else, or pressed twice, it raises
    KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.requested = False
        self.in_request = False
        self._previous: Any = None

    def __enter__(self) -> "Interruption":
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: Optional[FrameType]) -> None:
        again = self.requested
        self.requested = True
        if again or not self.in_request:
            raise KeyboardInterrupt

    def __call__(self) -> bool:
        return self.requested


def bounded(lowest: float, highest: float) -> Callable[[str], float]:
    """An argparse type: a number in the protocol's range, or a usage error saying the range."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(f"{text} is out of range ({lowest:g} .. {highest:g})")
        return value
    return parse


def add_mask_arguments(p: argparse.ArgumentParser) -> None:
    """The result and mask options shared by `remove` and `watch` (protocol names, dashes for underscores)."""
    p.add_argument("--mask-only", action="store_true", help="write the mask (grayscale) instead of a cut-out")
    p.add_argument("--depth", type=int, choices=(8, 16), default=None,
                   help="bits per sample of the result (default: the input's, 16 for 16-bit images where the format holds it)")
    p.add_argument("--bg", metavar="COLOR", default=None,
                   help="flatten the cut-out onto this colour (white, #rrggbb, R,G,B): no alpha, so .jpg works too")
    p.add_argument("--model", default=None, help="model name (see `bgmask models`; default: the daemon's default)")
    p.add_argument("--quality", choices=QUALITIES, default=None,
                   help="speed/quality trade-off of the daemon (sent only when given)")
    p.add_argument("--no-refine", action="store_true", help="plain resize of the prediction instead of edge-aware refinement")
    for name, (lowest, highest, metavar, what) in MASK_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), type=bounded(lowest, highest), default=None, metavar=metavar,
                       help=what)
    p.add_argument("--decontaminate", action="store_true",
                   help="cut-outs get decontaminated colours: the background's colour spill removed at the edges")
    p.add_argument("--overwrite", action="store_true", help="replace existing results (default: skip them)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without any sign of life from the daemon before giving up")


def settings_from(args: argparse.Namespace) -> "Settings":
    """The removal settings of parsed arguments; a BAD_REQUEST for combinations that make no sense."""
    from bgmask.files.cutouts import parse_colour
    from bgmask.client.removal import Settings

    options: dict[str, Any] = {}
    if args.no_refine:
        options["refine"] = False
    for name in MASK_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.decontaminate:
        if args.mask_only:
            raise BgmaskError("bad_request", "--decontaminate changes the cut-out's colours; it does nothing with --mask-only")
        options["decontaminate"] = True
    if args.quality is not None:
        options["quality"] = args.quality
    if args.bg is not None and args.mask_only:
        raise BgmaskError("bad_request", "--bg flattens a cut-out; it does nothing with --mask-only")
    bg = parse_colour(args.bg) if args.bg is not None else None
    return Settings(model=args.model, options=options, mask_only=args.mask_only, bg=bg, depth=args.depth)


def result_format(dest: str, settings: "Settings") -> str:
    """The format of a result file (PNG on standard output), or a BAD_REQUEST naming what would work."""
    from bgmask.files import writing

    suffix = ".png" if dest == outputs.STDIO else Path(dest).suffix
    has_alpha = not settings.mask_only and settings.bg is None
    return writing.format_for(suffix, has_alpha, settings.depth)


def connect(timeout: float, notice: TextIO) -> Any:
    """A client with a live connection; says so on `notice` when the daemon takes more than a second to answer
    (it is being started, or it is busy loading). Every failure to get one, the client's own or a refused
    config or runtime folder, raises the client's BgmaskError: the caller prints one line."""
    client_module = load_client()
    try:
        return _connect(client_module, timeout, notice)
    except BgmaskError as exc:
        raise client_module.BgmaskError(exc.code, exc.message) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise client_module.BgmaskError("not_running", f"could not reach or start the daemon: "
                                                       f"{exc.strerror or exc}{where}") from None


def _connect(client_module: Any, timeout: float, notice: TextIO) -> Any:
    runtime.record_daemon_command()
    client = client_module.Client(timeout=timeout)
    starting = runtime.read_runtime() is None
    text = "bgmask: starting the daemon (a few seconds)..." if starting else "bgmask: waiting for the daemon..."
    timer = threading.Timer(START_NOTICE_S, lambda: print(text, file=notice, flush=True))
    timer.daemon = True
    timer.start()
    try:
        client.hello()
    finally:
        timer.cancel()
    return client


class Downloads:
    """The model download bar, shown only when the daemon downloads (once per model), and a line when it loads
    a model (seconds on a CPU, once per daemon and model), so that neither wait is silent."""

    def __init__(self) -> None:
        self.bar: Optional[ProgressBar] = None
        self.loading_said = False

    def __call__(self, stage: str, fraction: Optional[float]) -> None:
        if stage == "loading" and not self.loading_said:
            self.loading_said = True
            print("bgmask: loading the model (once per daemon start)...", file=sys.stderr, flush=True)
        if stage == "downloading":
            if self.bar is None:
                print("bgmask: downloading the model (once)...", file=sys.stderr)
                self.bar = ProgressBar(1000, unit="", label="model")
            self.bar.update(int((fraction or 0.0) * 1000))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_job(client: Any, job: outputs.Job, settings: "Settings", overwrite: bool, stop: Interruption,
            on_progress: "ProgressFn", temporal: bool = True) -> bool:
    """One input to its result file (or standard output); False when an existing result was kept. An animated
    GIF, WebP or PNG gives an animation (cli_frames)."""
    from bgmask.files import animations, reading, writing
    from bgmask.cli import frames as cli_frames
    from bgmask.client import removal

    stdin = job.source == outputs.STDIO
    source = sys.stdin.buffer.read() if stdin else Path(job.source)
    img = reading.load(source)
    anim = animations.load(source) if img.animated else None
    if anim is not None:
        return cli_frames.run_animation(client, job, anim, settings, overwrite, stop, temporal)
    if img.animated:
        print(f"bgmask: {job.source}: several frames in a format bgmask does not animate; only the first is used",
              file=sys.stderr)
    fmt = result_format(job.dest, settings)
    depth = removal.result_depth(img, settings, fmt in writing.SIXTEEN_BIT)
    stop.in_request = True
    try:
        result = removal.remove(client, img, settings, depth, on_progress, cancel=stop)
    finally:
        stop.in_request = False
    if job.dest == outputs.STDIO:
        buffer = io.BytesIO()  # all of it, or nothing: an interrupted run writes no half image into a pipe
        writing.write(buffer, fmt, result)
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
        return True
    return outputs.write_atomically(Path(job.dest), lambda stream: writing.write(stream, fmt, result), overwrite)


def cmd_frames(args: argparse.Namespace) -> int:
    """`bgmask remove --frames FOLDER`: one folder of numbered frames as one sequence (cli_frames)."""
    from bgmask.cli import frames as cli_frames

    client_module = load_client()
    try:
        settings = settings_from(args)
    except BgmaskError as exc:
        print(f"bgmask: {exc.message}", file=sys.stderr)
        return 2
    with Interruption() as stop:
        try:
            return cli_frames.cmd_frames(args, settings, lambda: connect(args.timeout, sys.stderr), stop)
        except KeyboardInterrupt:
            stop.requested = True
        except (BgmaskError, client_module.BgmaskError) as exc:
            if not (exc.code == "cancelled" and stop.requested):
                print(f"bgmask: {exc.message}", file=sys.stderr)
                return 1
    print("no frames written (interrupted)", file=sys.stderr)
    return INTERRUPTED_EXIT


def cmd_remove(args: argparse.Namespace) -> int:
    if args.frames:
        return cmd_frames(args)
    from bgmask.cli import frames as cli_frames

    client_module = load_client()
    try:
        settings = settings_from(args)
        plan = outputs.plan(args.inputs, args.output, settings.mask_only, recursive=args.recursive)
        for job in plan.jobs:
            if not cli_frames.names_an_animation(job):  # an animation's name is checked when it is written
                result_format(job.dest, settings)
    except BgmaskError as exc:
        print(f"bgmask: {exc.message}", file=sys.stderr)
        return 2
    jobs = plan.jobs
    to_stdout = jobs[0].dest == outputs.STDIO
    report = sys.stderr if to_stdout else sys.stdout  # standard output may be the image itself
    many = len(jobs) > 1
    if plan.skipped_outputs:
        print(f"bgmask: skipped {plan.skipped_outputs} file(s) named like earlier results (*-cutout.*, *-mask.*); "
              "name them directly to process them", file=sys.stderr)
    for src, dest in plan.renamed:
        print(f"bgmask: {src} -> {dest} (another input has the same name)", file=sys.stderr)
    done, skipped, failed = 0, 0, []  # whatever is in none of these was not started (or was cancelled)
    started = time.perf_counter()
    with Interruption() as stop:
        try:
            client = connect(args.timeout, sys.stderr)
        except KeyboardInterrupt:
            print(f"0 done, 0 failed, {len(jobs)} not started (interrupted)", file=report)
            return INTERRUPTED_EXIT
        except client_module.BgmaskError as exc:
            print(f"bgmask: {exc.message}", file=sys.stderr)
            return 1
        bar = ProgressBar(len(jobs), unit="images", label="removing") if many else None
        downloads = Downloads()
        try:
            for job in jobs:
                if stop.requested:
                    break
                if not args.overwrite and job.dest != outputs.STDIO and Path(job.dest).exists():
                    print(f"bgmask: {job.dest} exists, kept (--overwrite replaces it)", file=sys.stderr)
                    skipped += 1
                    continue
                try:
                    if run_job(client, job, settings, args.overwrite, stop, downloads, not args.no_temporal):
                        done += 1
                        if not many and not to_stdout:
                            print(f"{job.source} -> {job.dest}", file=report)
                    else:
                        print(f"bgmask: {job.dest} appeared meanwhile, kept (--overwrite replaces it)", file=sys.stderr)
                        skipped += 1
                except (BgmaskError, client_module.BgmaskError) as exc:
                    if exc.code == "cancelled" and stop.requested:
                        break  # nothing of it was written: it counts as not started
                    failed.append((job.source, exc.message))
                    if exc.code in DAEMON_FAILURES:
                        break  # the daemon itself is the problem: every other file would fail the same way
                except OSError as exc:
                    failed.append((job.source, f"could not write {job.dest} ({exc.strerror or exc}); check the folder"))
                downloads.close()
                if bar is not None:
                    bar.update(done + skipped + len(failed))
        except KeyboardInterrupt:
            stop.requested = True
        finally:
            downloads.close()
            if bar is not None:
                bar.close()
    for src, why in failed:
        print(f"bgmask: {src}: {why}", file=sys.stderr)
    left = len(jobs) - done - skipped - len(failed)
    if stop.requested:
        print(f"{done} done, {len(failed)} failed, {left} not started (interrupted)", file=report)
        return INTERRUPTED_EXIT
    if many or failed or left:
        kept = f", {skipped} kept" if skipped else ""
        not_started = f", {left} not started" if left else ""
        print(f"{done} done, {len(failed)} failed{kept}{not_started}, {time.perf_counter() - started:.1f} s", file=report)
    return 1 if failed or left else 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `remove`."""
    p = subparsers.add_parser(
        "remove", help="remove the background of images (starts the daemon if needed)",
        description="Write a cut-out (original pixels, soft alpha) or the mask for each image. Results go beside "
                    "each input as NAME-cutout.png / NAME-mask.png, or into -o. Inputs are never overwritten, "
                    "existing results are kept unless --overwrite, and a result appears only when complete.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="output formats follow -o's extension: .png, .tif (both 8 or 16 bits), .webp, .jpg (with --bg);\n"
               "'-' reads standard input / writes a PNG to standard output.\n"
               "animated GIF, WebP and PNG (APNG) give an animation of the same format (or -o's .gif/.webp/.png):\n"
               "alpha on every frame, durations and loop count kept (GIF: on/off transparency at 50 %).")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders; - for standard input")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file (one input), folder (several; created), or - for standard output")
    p.add_argument("-r", "--recursive", action="store_true", help="include sub-folders, mirrored in the -o folder")
    p.add_argument("--frames", action="store_true",
                   help="IN is one folder of numbered frames: one sequence, results under the same names (.png) in "
                        "-o (default IN-cutout or IN-mask beside it)")
    p.add_argument("--no-temporal", action="store_true",
                   help="frames of animations and --frames each get their own mask (default: consistent from frame "
                        "to frame, no flicker)")
    add_mask_arguments(p)
    p.set_defaults(func=cmd_remove)
