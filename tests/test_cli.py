"""The `bgmask` command as a user runs it: through a real daemon it starts itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, base_env, start_daemon


def bgmask(dirs: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgmask", *args], env=base_env(dirs), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli_dirs(isolated_dirs: dict):
    """Isolated per-user dirs; the daemon the CLI starts there uses u2netp by default (fast) and is stopped after."""
    isolated_dirs = dict(isolated_dirs)
    yield isolated_dirs
    record = Path(isolated_dirs["BGMASK_RUNTIME_DIR"]) / "daemon.json"
    if record.exists():
        pid = json.loads(record.read_text())["pid"]
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(200):
                os.kill(pid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            pass


def pid_of(dirs: dict) -> int:
    return json.loads((Path(dirs["BGMASK_RUNTIME_DIR"]) / "daemon.json").read_text())["pid"]


def test_remove_starts_a_daemon_writes_a_soft_cutout_and_leaves_the_daemon_running(cli_dirs: dict, tmp_path: Path) -> None:
    out = tmp_path / "cutout.png"
    r = bgmask(cli_dirs, "remove", str(EXAMPLES / "astronaut.jpg"), "-o", str(out), "--model", "u2netp")
    assert r.returncode == 0, r.stderr
    assert "bgmask: starting the daemon" in r.stderr or "bgmask: loading the model" in r.stderr, "no silent wait"
    cut = Image.open(out)
    src = Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")
    assert cut.mode == "RGBA" and cut.size == src.size
    rgba = np.asarray(cut)
    assert np.array_equal(rgba[..., :3], np.asarray(src)), "original pixels are untouched (straight alpha)"
    alpha = rgba[..., 3]
    assert alpha[150, 256] > 200 and alpha[5, 500] < 50  # face kept, top-right background gone
    assert np.count_nonzero((alpha > 10) & (alpha < 245)) > 100, "soft edges"
    pid = pid_of(cli_dirs)
    again = bgmask(cli_dirs, "remove", str(EXAMPLES / "chelsea.jpg"), "-o", str(tmp_path / "cat.png"), "--model", "u2netp")
    assert again.returncode == 0, again.stderr
    assert pid_of(cli_dirs) == pid, "the second call reuses the running daemon"
    status = bgmask(cli_dirs, "status")
    assert status.returncode == 0 and str(pid) in status.stdout and "u2netp" in status.stdout and "loaded" in status.stdout


def test_mask_only_16_bit(cli_dirs: dict, tmp_path: Path) -> None:
    out = tmp_path / "mask.png"
    r = bgmask(cli_dirs, "remove", str(EXAMPLES / "chelsea.jpg"), "-o", str(out), "--mask-only", "--depth", "16", "--model", "u2netp")
    assert r.returncode == 0, r.stderr
    mask = Image.open(out)
    assert mask.mode.startswith("I") and mask.size == (451, 300)
    values = np.asarray(mask)
    assert values.max() > 60000 and values.min() < 2000
    assert len(np.unique(values)) > 256, "16-bit masks carry more than 256 levels"


def test_cutout_of_a_transparent_png_never_becomes_more_opaque(cli_dirs: dict, tmp_path: Path) -> None:
    """The existing alpha is multiplied by the mask: holes stay holes, half-transparent stays at most half."""
    rgba = np.array(Image.open(EXAMPLES / "astronaut.jpg").convert("RGBA"))
    rgba[:, :128, 3] = 0
    rgba[:, 128:256, 3] = 128
    src = tmp_path / "layer.png"
    Image.fromarray(rgba).save(src)
    r = bgmask(cli_dirs, "remove", str(src), "-o", str(tmp_path / "cut.png"), "--model", "u2netp")
    assert r.returncode == 0, r.stderr
    cut = np.asarray(Image.open(tmp_path / "cut.png"))
    assert cut.shape == rgba.shape and np.array_equal(cut[..., :3], rgba[..., :3])
    alpha = cut[..., 3].astype(int)
    assert alpha[:, :128].max() == 0
    assert alpha[:, 128:256].max() <= 128 and alpha[:, 128:256].max() >= 100, "the subject keeps its half opacity"
    assert (alpha <= rgba[..., 3]).all()
    assert alpha[:, 256:].max() == 255 and alpha[:, 256:].min() == 0


def test_folder_with_a_bad_file_reports_it_and_goes_on(cli_dirs: dict, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("astronaut.jpg", "chelsea.jpg"):
        (src / name).write_bytes((EXAMPLES / name).read_bytes())
    (src / "broken.png").write_bytes(b"this is not a png")
    r = bgmask(cli_dirs, "remove", str(src), "-o", str(tmp_path / "out"), "--mask-only", "--model", "u2netp")
    assert r.returncode == 1
    assert "2 done, 1 failed" in r.stdout and "Traceback" not in r.stderr
    [line] = [line for line in r.stderr.splitlines() if "broken.png" in line]
    assert line.count("broken.png") == 1 and "save it again as PNG" in line, "the file once, and what to do"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut.png", "chelsea.png"]


def test_killed_daemon_is_restarted_by_the_next_call(cli_dirs: dict, tmp_path: Path) -> None:
    first = bgmask(cli_dirs, "remove", str(EXAMPLES / "chelsea.jpg"), "-o", str(tmp_path / "a.png"), "--model", "u2netp")
    assert first.returncode == 0, first.stderr
    old = pid_of(cli_dirs)
    os.kill(old, signal.SIGKILL)
    time.sleep(0.2)
    second = bgmask(cli_dirs, "remove", str(EXAMPLES / "chelsea.jpg"), "-o", str(tmp_path / "b.png"), "--model", "u2netp")
    assert second.returncode == 0, second.stderr
    assert pid_of(cli_dirs) != old
    assert Image.open(tmp_path / "b.png").size == (451, 300)


def test_stop_stops_the_daemon(cli_dirs: dict) -> None:
    d = start_daemon(cli_dirs, "--default-model", "u2netp", "--preload-delay", "-1")
    r = bgmask(cli_dirs, "stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert d.proc.wait(20) == 0 and not d.runtime_file.exists()
    assert "no daemon" in bgmask(cli_dirs, "stop").stdout


def test_status_without_a_daemon_says_remove_starts_one(cli_dirs: dict) -> None:
    r = bgmask(cli_dirs, "status")
    assert r.returncode == 1 and "no daemon is running; `bgmask remove` starts one" in r.stdout, r.stdout


def test_help_lists_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "bgmask", "--help"], env=base_env({}), capture_output=True, text=True)
    for command in ("remove", "watch", "serve", "stop", "status", "models", "install", "uninstall", "autostart"):
        assert command in r.stdout
