"""Animations and frame folders through `bgmask remove` and `bgmask.remove()`, against the session daemon
(U2-Netp): the same format out, a result with alpha on every frame, durations and loop count kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import RunningDaemon, base_env, load_rgb

DURATIONS = [40, 50, 60, 70]


def frames(n: int = 4) -> list[Image.Image]:
    """A pan across the astronaut photo: the subject is in every frame, a little further left each time."""
    data, w, h = load_rgb("astronaut.jpg", (200, 200))
    rgb = np.frombuffer(data, np.uint8).reshape(h, w, 3)
    return [Image.fromarray(np.ascontiguousarray(rgb[:160, 4 * k:4 * k + 160])) for k in range(n)]


def bgmask(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgmask", *args], env=base_env(daemon.env), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_an_animation_gives_an_animation_of_its_format_with_alpha_on_every_frame(
        daemon: RunningDaemon, tmp_path: Path, suffix: str) -> None:
    src = tmp_path / f"clip{suffix}"
    first, *rest = frames()
    first.save(src, save_all=True, append_images=rest, duration=DURATIONS, loop=3)
    run = bgmask(daemon, "remove", str(src), "--model", "u2netp")
    assert run.returncode == 0, run.stderr
    out = tmp_path / f"clip-cutout{suffix}"
    with Image.open(out) as im:
        assert im.format == {".gif": "GIF", ".webp": "WEBP", ".png": "PNG"}[suffix]
        assert im.n_frames == 4 and im.info.get("loop") == 3
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            rgba = np.asarray(im.convert("RGBA"))
            durations.append(int(im.info["duration"]))
            alpha = rgba[..., 3]
            assert rgba.shape == (160, 160, 4)
            assert alpha.min() == 0 and alpha.max() == 255  # a real cut-out on every frame
            assert np.median(alpha[100:150, 40:90]) == 255 and np.median(alpha[:15, -15:]) == 0
    assert durations == DURATIONS
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])  # nothing else left behind


def test_a_folder_of_numbered_frames_gives_a_folder_of_masks(daemon: RunningDaemon, tmp_path: Path) -> None:
    folder = tmp_path / "shot"
    folder.mkdir()
    for k, frame in enumerate(frames(3)):
        frame.save(folder / f"f{[2, 10, 1][k]}.png")  # numbered, not in name order
    from bgmask.cli import frames as cli_frames

    assert [p.name for p in cli_frames.numbered(folder)] == ["f1.png", "f2.png", "f10.png"]  # the sequence's order
    run = bgmask(daemon, "remove", "--frames", str(folder), "--mask-only", "--model", "u2netp")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "shot-mask"
    assert sorted(p.name for p in out.iterdir()) == ["f1.png", "f10.png", "f2.png"]
    for name in ("f1.png", "f2.png", "f10.png"):
        mask = np.asarray(Image.open(out / name))
        assert mask.shape == (160, 160) and mask.dtype == np.uint8 and mask.max() == 255 and mask.min() == 0


def test_the_python_api_takes_a_list_of_frames(client_env: dict) -> None:
    import bgmask

    pictures = [np.asarray(f) for f in frames(3)]
    together = bgmask.remove(pictures, mask_only=True, model="u2netp", temporal=False)
    assert isinstance(together, list) and len(together) == 3
    for picture, mask in zip(pictures, together):  # temporal off: each frame's own mask, exactly
        assert np.array_equal(mask, bgmask.remove(picture, mask_only=True, model="u2netp"))
    cutouts = bgmask.remove([Image.fromarray(p) for p in pictures], model="u2netp")
    assert [c.mode for c in cutouts] == ["RGBA"] * 3 and cutouts[0].size == (160, 160)


def test_o_names_an_animation_in_its_own_format_and_a_still_image_cannot_take_it(
        daemon: RunningDaemon, tmp_path: Path) -> None:
    src = tmp_path / "anim.gif"
    first, *rest = frames()
    first.save(src, save_all=True, append_images=rest, duration=DURATIONS, loop=0)
    run = bgmask(daemon, "remove", str(src), "-o", str(tmp_path / "x.gif"), "--model", "u2netp")
    assert run.returncode == 0, run.stderr
    with Image.open(tmp_path / "x.gif") as im:
        assert im.format == "GIF" and im.n_frames == 4
        for k in range(im.n_frames):
            im.seek(k)
            alpha = np.asarray(im.convert("RGBA"))[..., 3]
            assert alpha.min() == 0 and alpha.max() == 255
    still = tmp_path / "still.png"
    first.save(still)
    run = bgmask(daemon, "remove", str(still), "-o", str(tmp_path / "y.gif"), "--model", "u2netp")
    assert run.returncode == 2 and "cannot write .gif" in run.stderr  # refused before any work, one line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif", "still.png", "x.gif"]
