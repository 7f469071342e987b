"""`bgmask models`: list the catalog with the local download state, pull a model into the cache, or
import an ONNX file of one's own. These work on the local cache directly, with or without a daemon."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

# The catalog and the downloader (http.client, ssl, certifi) are imported by the commands that use them:
# `bgmask remove` parses these subcommands too, and its start-up time is the user's waiting time.
from bgmask.errors import BgmaskError
from bgmask.cli.progressbar import ProgressBar, human_bytes


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `models` (= `models list`), `models pull NAME` and `models import FILE --as NAME ...`."""
    p = subparsers.add_parser("models", help="list, download or import models (default: list)")
    p.set_defaults(func=cmd_list)
    actions = p.add_subparsers(dest="models_action", metavar="{list,pull,import}")

    actions.add_parser("list", help="the catalog with sizes, licences and what is downloaded").set_defaults(func=cmd_list)

    pull = actions.add_parser("pull", help="download a model into the local cache and verify it")
    pull.add_argument("name", help="model name, as `bgmask models` lists it")
    pull.set_defaults(func=cmd_pull)

    imp = actions.add_parser("import", help="add an ONNX model file of your own to the catalog")
    imp.add_argument("file", help="the .onnx file (it stays where it is)")
    imp.add_argument("--as", dest="name", required=True, help="name to use it under")
    imp.add_argument("--size", required=True, type=_size, help="model input size, W or WxH (e.g. 320 or 1024x1024)")
    imp.add_argument("--mean", required=True, type=_triple, help="per-channel mean of the inputs in [0, 1], R,G,B")
    imp.add_argument("--std", required=True, type=_triple, help="per-channel standard deviation, R,G,B")
    imp.add_argument("--sigmoid", action="store_true", help="the output is logits: apply a sigmoid")
    imp.add_argument("--input-name", default=None, help="input tensor to feed (default: the first)")
    imp.add_argument("--output-name", default=None, help="output tensor holding the mask (default: the first)")
    imp.add_argument("--description", default="", help="one line shown by `bgmask models`")
    imp.set_defaults(func=cmd_import)


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected W or WxH with positive integers, got {text!r}")
    return (parts[0], parts[-1])


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def _fail(exc: BgmaskError) -> int:
    print(f"bgmask: {exc.message}", file=sys.stderr)
    return 1


def cmd_list(args: argparse.Namespace) -> int:
    from bgmask.models import download
    from bgmask.models.catalog import Catalog

    try:
        catalog = Catalog.load()
    except BgmaskError as exc:
        return _fail(exc)
    rows = [("NAME", "FAMILY", "INPUT", "SIZE", "STATE", "LICENCE")]
    for spec in catalog.entries():
        got = download.installed(spec)
        size: Optional[int] = got.size if got else spec.size
        state = "not downloaded" if got is None else "downloaded" if got.variant in (None, "fp32") else f"downloaded ({got.variant})"
        name = spec.name + (" *" if spec.default else "") + (" (imported)" if spec.imported else "")
        rows.append((name, spec.family, "x".join(map(str, spec.input_size)), human_bytes(size) if size else "?", state, spec.licence))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print(f"\n* default model. Weights are kept in {download.model_path(catalog.get(catalog.default_name())).parent}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from bgmask.models import download
    from bgmask.models.catalog import Catalog

    try:
        spec = Catalog.load().get(args.name)
        bar = ProgressBar(None, label=spec.name)
        try:
            download.ensure_model(spec, progress=bar)
        finally:
            bar.close()
        got = download.installed(spec)
    except BgmaskError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print("bgmask: interrupted; run the same command again to resume the download.", file=sys.stderr)
        return 130
    if got is None:  # the file vanished right after it was verified
        print(f"bgmask: model {args.name!r} is not in place after downloading; try again.", file=sys.stderr)
        return 1
    details = "  ".join(p for p in (human_bytes(got.size), got.variant, f"from {got.source}") if p)
    print(f"{got.path}\nsha256 {got.sha256}  {details}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from bgmask.models.catalog import Catalog

    try:
        spec = Catalog.load().import_model(
            args.file, args.name, input_size=args.size, mean=args.mean, std=args.std, sigmoid=args.sigmoid,
            input_name=args.input_name, output_name=args.output_name, description=args.description)
    except BgmaskError as exc:
        return _fail(exc)
    source = spec.sources[0]
    print(f"imported {spec.name}: {source.path} ({human_bytes(source.size or 0)}, sha256 {source.sha256}), "
          f"input {spec.input_size[0]}x{spec.input_size[1]}")
    return 0
