"""`bgmask remove` for frame sequences: animated GIF, WebP and APNG files, and `--frames` folders of numbered
frames. Every frame goes through the daemon as one sequence (pipelined, masks consistent from frame to frame
unless --no-temporal, docs/protocol.md); results are written only when every frame is done, atomically."""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import Any, Optional

from bgmask.files import outputs
from bgmask.errors import BgmaskError
from bgmask.cli.progressbar import ProgressBar


def frame_progress(count: int, label: str) -> tuple[Any, ProgressBar]:
    """A progress bar over `count` frames, and the on_progress callback that moves it as frames finish."""
    bar = ProgressBar(count, unit="frames", label=label)

    def on_progress(index: int, stage: str, fraction: Optional[float]) -> None:
        if stage == "refining" and fraction is not None and fraction >= 0.9:
            bar.update(index + 1)

    return on_progress, bar


def animation_dest(job: outputs.Job, source_format: str) -> Path:
    """Where an animation's result goes: an auto-named result (NAME-cutout.png, or NAME-gif-cutout.png beside
    a NAME.png) takes the input's own format (NAME-cutout.gif); a name the user gave is kept."""
    dest, src = Path(job.dest), Path(job.source)
    auto = (dest.suffix.lower() == ".png" and dest.stem.startswith(src.stem)
            and dest.stem.endswith((outputs.CUTOUT_SUFFIX, outputs.MASK_SUFFIX)))
    if auto and source_format != "PNG":
        return dest.with_suffix(src.suffix.lower())
    return dest


def names_an_animation(job: outputs.Job) -> bool:
    """Whether the job's result is named in a format only animations are written in (-o x.gif for an animated
    GIF): the still-image check of result names does not apply to it. From standard input that is only known
    once the image is read, so the job decides then (a still image refuses the name)."""
    from bgmask.files import animations, writing

    suffix = Path(job.dest).suffix.lower()
    if job.dest == outputs.STDIO or suffix not in animations.FORMATS or suffix in writing.FORMATS:
        return False
    return job.source == outputs.STDIO or animations.is_animation(job.source)


def run_animation(client: Any, job: outputs.Job, anim: Any, settings: Any, overwrite: bool, stop: Any,
                  temporal: bool) -> bool:
    """An animated file to an animation of its own format (or of -o's): a result on every frame, durations
    and loop count kept. False when an existing result was kept."""
    from bgmask.files import animations, reading
    from bgmask.client import removal

    if settings.depth == 16:
        raise BgmaskError("bad_request", "animations are written with 8 bits per sample: leave out --depth 16")
    frames = [reading.LoadedImage(f) for f in anim.frames]
    on_progress, bar = frame_progress(len(frames), "frames")
    stop.in_request = True
    try:
        results = removal.remove_frames(client, frames, settings, 8, on_progress, cancel=stop, temporal=temporal)
    finally:
        stop.in_request = False
        bar.close()
    if job.dest == outputs.STDIO:
        buffer = io.BytesIO()
        animations.write(buffer, anim.format, results, anim.durations, anim.loop)
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
        return True
    dest = animation_dest(job, anim.format)
    fmt = animations.format_for(dest.suffix)
    return outputs.write_atomically(dest, lambda s: animations.write(s, fmt, results, anim.durations, anim.loop),
                                    overwrite)


def numbered(folder: Path) -> list[Path]:
    """The image files of `folder` in frame order: by the numbers in their names (frame2 before frame10)."""
    files = [p for p in outputs.folder_images(folder, False, None) if not outputs.is_own_output(p)]
    key = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]  # noqa: E731
    return sorted(files, key=key)


def cmd_frames(args: argparse.Namespace, settings: Any, connect: Any, stop: Any) -> int:
    """`bgmask remove --frames FOLDER [-o OUT]`: every image of FOLDER as one sequence, results under the same
    names (.png) in OUT (default FOLDER-cutout or FOLDER-mask beside it)."""
    from bgmask.files import reading, writing
    from bgmask.client import removal

    if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
        print("bgmask: --frames takes one folder of numbered frames", file=sys.stderr)
        return 2
    folder = Path(args.inputs[0])
    out = Path(args.output) if args.output not in (None, outputs.STDIO) else folder.with_name(
        folder.name + (outputs.MASK_SUFFIX if settings.mask_only else outputs.CUTOUT_SUFFIX))
    files = numbered(folder)
    if not files:
        print(f"bgmask: {folder} has no image files", file=sys.stderr)
        return 2
    try:
        frames = [reading.load(p) for p in files]
    except BgmaskError as exc:
        print(f"bgmask: {exc.message}", file=sys.stderr)
        return 1
    depth = removal.result_depth(frames[0], settings)
    fmt = writing.format_for(".png", not settings.mask_only and settings.bg is None, depth)
    on_progress, bar = frame_progress(len(frames), "frames")
    stop.in_request = True
    try:
        results = removal.remove_frames(connect(), frames, settings, depth, on_progress, cancel=stop,
                                        temporal=not args.no_temporal)
    finally:
        stop.in_request = False
        bar.close()
    kept = 0
    for path, result in zip(files, results):
        dest = out / (path.stem + ".png")
        if not outputs.write_atomically(dest, lambda s, r=result: writing.write(s, fmt, r), args.overwrite):
            kept += 1
    print(f"{folder} -> {out}: {len(files) - kept} frames written" + (f", {kept} kept (--overwrite replaces them)" if kept else ""))
    return 0
