"""The `bgmask` command: remove backgrounds through the daemon, run and control the daemon, manage models."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from bgmask import __version__, cli_install, cli_models, images, runtime
from bgmask.clientlib import load_client
from bgmask.errors import BgmaskError
from bgmask.progressbar import ProgressBar

GiB = 1024**3

DESCRIPTION = """Remove image backgrounds locally: a daemon keeps U2-Net / IS-Net models warm and returns soft,
full-resolution masks to this command and to the GIMP and Krita plugins."""

EPILOG = """examples:
  bgmask remove photo.jpg -o cutout.png          cut-out PNG with a soft alpha channel
  bgmask remove photos/ -o out/ --mask-only      masks for every image in a folder
  bgmask status                                  what the daemon is doing
  bgmask models pull u2netp                      download a model ahead of time"""


# Failures of the daemon connection rather than of one file: stop instead of failing every file alike.
DAEMON_FAILURES = {"not_running", "connection_lost", "timeout", "unauthorized", "protocol_error", "device_unavailable"}


def _client(timeout: float) -> Any:
    runtime.record_daemon_command()
    return load_client().Client(timeout=timeout)


def _inputs(paths: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in images.EXTENSIONS and q.is_file()))
        else:
            found.append(p)
    return found


def _output_for(src: Path, out: Optional[str], many: bool, mask_only: bool) -> Path:
    suffix = "-mask.png" if mask_only else "-cutout.png"
    if out is None:
        return src.with_name(src.stem + suffix)
    target = Path(out)
    if many or target.is_dir() or out.endswith(("/", "\\")):
        target.mkdir(parents=True, exist_ok=True)
        return target / (src.stem + ".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def cmd_remove(args: argparse.Namespace) -> int:
    sources = _inputs(args.inputs)
    if not sources:
        print("bgmask: no images found in the given paths.", file=sys.stderr)
        return 2
    many = len(sources) > 1
    out_type = "u16" if args.mask_only and args.depth == 16 else "u8"
    options = {"refine": not args.no_refine}
    client_module = load_client()
    try:
        client = _client(args.timeout)
    except client_module.BgmaskError as exc:
        print(f"bgmask: {exc.message}", file=sys.stderr)
        return 1
    bar = ProgressBar(len(sources), unit="images", label="removing") if many else None
    failed: list[tuple[Path, str]] = []
    download_bar: Optional[ProgressBar] = None

    def on_progress(stage: str, fraction: Optional[float]) -> None:
        nonlocal download_bar
        if stage == "downloading":
            if download_bar is None:
                print("bgmask: downloading the model (once)...", file=sys.stderr)
                download_bar = ProgressBar(1000, unit="", label="model")
            download_bar.update(int((fraction or 0.0) * 1000))

    started = time.perf_counter()
    for n, src in enumerate(sources, 1):
        try:
            img = images.load(src)
            mask = client.remove(img.data, img.width, img.height, img.channels, img.sample_type, model=args.model,
                                 options=options, out_sample_type=out_type, on_progress=on_progress)
            mask_img = images.mask_image(mask, img.width, img.height, out_type)
            dest = _output_for(src, args.output, many, args.mask_only)
            if args.mask_only:
                images.save_mask(dest, mask_img)
            else:
                images.save_cutout(dest, img.picture, mask_img)
            if not many:
                print(f"{src} -> {dest}")
        except (BgmaskError, client_module.BgmaskError) as exc:
            failed.append((src, exc.message))
            if exc.code in DAEMON_FAILURES:
                break  # the daemon itself is the problem: every other file would fail the same way
        except OSError as exc:
            failed.append((src, f"could not write the result ({exc.strerror or exc})"))
        if download_bar is not None:
            download_bar.close()
            download_bar = None
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    for src, why in failed:
        print(f"bgmask: {src}: {why}", file=sys.stderr)
    if many or failed:
        done = len(sources) - len(failed)
        print(f"{done} done, {len(failed)} failed, {time.perf_counter() - started:.1f} s")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bgmask.daemon import Daemon, DaemonConfig  # ONNX Runtime is only imported by the daemon

    log_file = os.environ.get("BGMASK_LOG_FILE")  # set by a client that auto-starts the daemon
    try:
        handlers = [runtime.RotatingLog(log_file)] if log_file else None
    except OSError as exc:
        print(f"bgmask: cannot open the log {log_file} ({exc.strerror or exc}); remove it and start again.",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = DaemonConfig(
        host=args.host, port=args.port, allow_remote=args.allow_remote, device=args.device, threads=args.threads,
        max_message_bytes=args.max_message_bytes, max_pixels=args.max_pixels, queue_limit=args.queue_limit,
        idle_unload_s=args.idle_unload, memory_budget=int(args.memory_budget * GiB), preload_delay=args.preload_delay,
        release_memory_after_s=args.release_memory_after, request_memory=int(args.request_memory * GiB),
        default_model=args.default_model,
    )
    try:
        return Daemon(config).serve()
    except BgmaskError as exc:
        print(f"bgmask: {exc.message}", file=sys.stderr)
        return 2


def cmd_stop(args: argparse.Namespace) -> int:
    record = runtime.read_runtime()
    if record is None:
        print("bgmask: no daemon is running.")
        return 0
    client = load_client().Client(autostart=False, timeout=args.timeout)
    try:
        client.shutdown()
    except Exception as exc:
        print(f"bgmask: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while runtime.read_runtime() is not None and time.monotonic() < deadline:  # removed just before it exits
        time.sleep(0.05)
    print(f"bgmask: daemon (pid {record['pid']}) stopped.")
    return 0


def _size(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / 1024**2:.0f} MiB"


def cmd_status(args: argparse.Namespace) -> int:
    try:
        st = load_client().Client(autostart=False, timeout=args.timeout).status()
    except Exception as exc:
        print(f"bgmask: {getattr(exc, 'message', exc)}")
        return 1
    print(f"bgmask daemon {st['version']} (protocol {st['protocol']})")
    print(f"  endpoint  {st['endpoint']}")
    print(f"  pid       {st['pid']}, up {st['uptime']:.0f} s")
    print(f"  device    {st['device']} ({st['provider']}, {st['threads']} threads)")
    print(f"  queue     {st['queue']} waiting, {st['running']} running")
    print(f"  memory    {_size(st['rss'])}")
    print("  models")
    for m in st["models"]:
        default = " (default)" if m["name"] == st["default_model"] else ""
        print(f"    {m['name']:<20} {m['state'].replace('_', ' ')}{default}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgmask", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bgmask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("remove", help="remove the background of images (starts the daemon if needed)",
                       description="Write a cut-out PNG (original pixels, soft alpha) or the mask for each image.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file (one input) or folder (several); default: beside each input as NAME-cutout.png / NAME-mask.png")
    p.add_argument("--mask-only", action="store_true", help="write the mask as a grayscale PNG instead of a cut-out")
    p.add_argument("--depth", type=int, choices=(8, 16), default=8, help="bit depth of --mask-only PNGs (default 8)")
    p.add_argument("--model", default=None, help="model name (see `bgmask models`; default: the daemon's default)")
    p.add_argument("--no-refine", action="store_true", help="plain resize of the prediction instead of edge-aware refinement")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without any sign of life from the daemon before giving up")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("serve", help="run the daemon in the foreground (what auto-start runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free port)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (prints a warning)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: best GPU provider if any, else CPU; gpu: fail if no GPU (default auto)")
    p.add_argument("--threads", type=int, default=0, help="inference threads (default: all usable cores)")
    p.add_argument("--default-model", default=None, help="model used when a request names none")
    p.add_argument("--preload-delay", type=float, default=0.0,
                   help="seconds after start to load the default model; negative: load only on demand (default 0)")
    p.add_argument("--queue-limit", type=int, default=16, help="requests that may wait before `busy` (default 16)")
    p.add_argument("--max-message-bytes", type=int, default=2 * GiB, help="largest accepted frame (default 2 GiB)")
    p.add_argument("--max-pixels", type=int, default=250_000_000, help="largest accepted image in pixels (default 250 M)")
    p.add_argument("--idle-unload", type=float, default=1800.0, help="unload models unused this many seconds (0: never)")
    p.add_argument("--memory-budget", type=float, default=6.0, help="GiB of loaded models before the least recently used is dropped")
    p.add_argument("--request-memory", type=float, default=0.0,
                   help="GiB one remove request may need (about 60 bytes a pixel); larger ones get too_large "
                        "(default: half of this machine's memory)")
    p.add_argument("--release-memory-after", type=float, default=5.0,
                   help="idle seconds before the memory a running model needs goes back to the system (default 5)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stop", help="stop the running daemon")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("status", help="version, endpoint, device, queue, memory and model states of the daemon")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_status)

    cli_models.add_commands(sub)
    cli_install.add_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)
