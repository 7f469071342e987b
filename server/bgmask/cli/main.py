"""The `bgmask` command: remove backgrounds through the daemon, run and control the daemon, manage models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import NoReturn, Optional, Sequence

from bgmask import __version__
from bgmask.cli import install as cli_install, models as cli_models, remove as cli_remove, watch as cli_watch
from bgmask.daemon import runtime
from bgmask.client.loader import load_client
from bgmask.errors import BgmaskError

GiB = 1024**3

DESCRIPTION = """Remove image backgrounds locally: a daemon keeps U2-Net / IS-Net models warm and returns soft,
full-resolution masks to this command and to the GIMP and Krita plugins."""

EPILOG = """examples:
  bgmask remove photo.jpg -o cutout.png          cut-out PNG with a soft alpha channel
  bgmask remove photos/ -o out/ --mask-only      masks for every image in a folder
  bgmask remove photo.jpg -o flat.jpg --bg white flattened onto white
  bgmask watch inbox/ out/                       cut out images as they arrive, until Ctrl-C
  bgmask status                                  what the daemon is doing
  bgmask models pull u2netp                      download a model ahead of time"""


def cmd_serve(args: argparse.Namespace) -> int:
    from bgmask.models import providers

    try:
        providers.load_runtime()  # the base install has none: say which extra to install
    except BgmaskError as exc:
        print(f"bgmask: {exc.message}", file=sys.stderr)
        return 2
    from bgmask.daemon.server import Daemon, DaemonConfig  # ONNX Runtime is only imported by the daemon
    if not args.gpu_mem_limit > 0:
        print(f"bgmask: --gpu-mem-limit must be a positive number of GiB, got {args.gpu_mem_limit}.", file=sys.stderr)
        return 2
    if not args.request_memory >= 0:
        print(f"bgmask: --request-memory must be 0 (half of this machine's memory) or a positive number of GiB, "
              f"got {args.request_memory}.", file=sys.stderr)
        return 2

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
        gpu=providers.GpuSettings(mem_limit=int(args.gpu_mem_limit * GiB), arena_extend=args.gpu_arena_extend,
                                  conv_algo_search=args.cudnn_conv_algo_search, device_id=args.gpu_device_id),
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
    client_module = load_client()
    try:
        st = client_module.Client(autostart=False, timeout=args.timeout).status()
    except client_module.BgmaskError as exc:
        if exc.code == "not_running":
            print("bgmask: no daemon is running; `bgmask remove` starts one when it needs it (or run `bgmask serve`"
                  " to keep one in the foreground)")
        else:
            print(f"bgmask: {exc.message}")
        return 1
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    print(f"bgmask daemon {st['version']} (protocol {st['protocol']})")
    print(f"  endpoint  {st['endpoint']}")
    print(f"  pid       {st['pid']}, up {st['uptime']:.0f} s")
    asked = st.get("requested_device")
    print(f"  device    {st['device']} ({st['provider']}, {st['threads']} threads)" + (f", --device {asked}" if asked else ""))
    if st.get("device_note"):
        print(f"  GPU       not used: {st['device_note']}")
    print(f"  queue     {st['queue']} waiting, {st['running']} running")
    print(f"  memory    {_size(st['rss'])}")
    print("  models")
    for m in st["models"]:
        default = " (default)" if m["name"] == st["default_model"] else ""
        on = f" on {m['provider']}" if m.get("provider") else ""
        print(f"    {m['name']:<20} {m['state'].replace('_', ' ')}{on}{default}")
    return 0


class Parser(argparse.ArgumentParser):
    """Usage mistakes in one line that says where the full usage is (sub-commands' parsers are Parsers too)."""

    def error(self, message: str) -> "NoReturn":
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bgmask", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bgmask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cli_remove.add_commands(sub)
    cli_watch.add_commands(sub)

    p = sub.add_parser("serve", help="run the daemon in the foreground (what auto-start runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free port)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (prints a warning)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the best GPU provider that really starts, else the CPU (status says why); "
                        "gpu: exit with the reason if no GPU provider starts (default auto)")
    p.add_argument("--gpu-mem-limit", type=float, default=4.0,
                   help="GiB the GPU memory arena (CUDA, ROCm) may grow to, leaving the rest to other applications (default 4)")
    p.add_argument("--gpu-arena-extend", choices=("requested", "power-of-two"), default="requested",
                   help="grow the GPU arena by what a run asks for, or by doubling as ONNX Runtime does by default (default requested)")
    p.add_argument("--cudnn-conv-algo-search", choices=("heuristic", "exhaustive", "default"), default="heuristic",
                   help="how cuDNN picks convolution algorithms: heuristic (no trial runs), exhaustive (times each at the "
                        "first run), default (a fixed one); bench/gpu_check.py measures them (default heuristic)")
    p.add_argument("--gpu-device-id", type=int, default=0, help="which GPU to use when there are several (default 0)")
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
    p.add_argument("--json", action="store_true", help="print the daemon's status reply as JSON")
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
