"""`bgmask remove` and `bgmask watch` with folders of real files, through the session's real daemon: what ends
up on disk (originals byte for byte, names and number of results, 16-bit samples), exit codes and messages."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, RunningDaemon, base_env


def bgmask(daemon: RunningDaemon, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgmask", *args], env=base_env(daemon.env), capture_output=True,
                          input=stdin, timeout=300)


def err(r: subprocess.CompletedProcess) -> str:
    return r.stderr.decode(errors="replace")


def out(r: subprocess.CompletedProcess) -> str:
    return r.stdout.decode(errors="replace")


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in err(r), err(r)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def photo_folder(folder: Path) -> dict[str, bytes]:
    """a.jpg, a.png and c.webp: two inputs whose results would share a name."""
    folder.mkdir()
    src = Image.open(EXAMPLES / "chelsea.jpg")
    (folder / "a.jpg").write_bytes((EXAMPLES / "chelsea.jpg").read_bytes())
    src.save(folder / "a.png")
    Image.open(EXAMPLES / "coffee.jpg").save(folder / "c.webp", lossless=True)
    return snapshot(folder)


def png16_samples(path: Path) -> np.ndarray:
    """Decode a 16-bit PNG written by bgmask independently of bgmask: zlib, and the filters it writes (None, Up)."""
    data = path.read_bytes()
    pos, idat, header = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + n
    width, height, bits, colour = struct.unpack(">IIBB", header[:10])
    assert bits == 16
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[colour]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels * 2)
    assert set(np.unique(rows[:, 0])) <= {0, 2}
    raw = rows[:, 1:].copy()
    for y in range(1, height):
        if rows[y, 0] == 2:
            raw[y] += raw[y - 1]
    return raw.view(">u2").reshape(height, width, channels).astype(np.uint16)


def photo16(path: Path) -> np.ndarray:
    """A 16-bit RGB PNG with far more than 256 levels a channel (the photo x 257 plus noise)."""
    rgb = np.asarray(Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")).astype(np.int32) * 257
    rgb = np.clip(rgb + np.random.default_rng(1).integers(-100, 100, rgb.shape), 0, 65535).astype(np.uint16)
    from bgmask.files import writing

    with open(path, "wb") as f:
        writing.write(f, "PNG", rgb)
    return rgb


# -- no data loss -------------------------------------------------------------------------------------------

def test_a_folder_with_clashing_names_keeps_every_input_and_every_result(daemon: RunningDaemon, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    originals = photo_folder(folder)
    r = bgmask(daemon, "remove", str(folder))
    assert r.returncode == 0, err(r)
    no_traceback(r)
    assert "3 done, 0 failed" in out(r)
    assert "another input has the same name" in err(r)
    results = sorted(set(snapshot(folder)) - set(originals))
    assert results == ["a-jpg-cutout.png", "a-png-cutout.png", "c-cutout.png"]
    assert {k: v for k, v in snapshot(folder).items() if k in originals} == originals
    before = snapshot(folder)

    again = bgmask(daemon, "remove", str(folder))  # its own results are not inputs, existing ones are kept
    assert again.returncode == 0, err(again)
    assert "0 done, 0 failed, 3 kept" in out(again) and "--overwrite" in err(again)
    assert "skipped 3 file(s) named like earlier results" in err(again)
    assert snapshot(folder) == before

    to_dir = bgmask(daemon, "remove", str(folder / "a.jpg"), str(folder / "a.png"), "-o", str(tmp_path / "out"))
    assert to_dir.returncode == 0, err(to_dir)
    assert sorted(os.listdir(tmp_path / "out")) == ["a-jpg.png", "a-png.png"]


def test_overwrite_replaces_an_existing_result(daemon: RunningDaemon, tmp_path: Path) -> None:
    dest = tmp_path / "cut.png"
    dest.write_bytes(b"an older result")
    kept = bgmask(daemon, "remove", str(EXAMPLES / "chelsea.jpg"), "-o", str(dest))
    assert kept.returncode == 0 and dest.read_bytes() == b"an older result"
    assert f"{dest} exists, kept (--overwrite replaces it)" in err(kept)
    replaced = bgmask(daemon, "remove", str(EXAMPLES / "chelsea.jpg"), "-o", str(dest), "--overwrite")
    assert replaced.returncode == 0, err(replaced)
    assert Image.open(dest).size == (451, 300)


@pytest.mark.parametrize("args, says", [
    (["x.png", "-o", "x.png"], "x.png is an input"),
    (["x.png", "y.png", "-o", "out/two.png"], "names one file but there are 2 inputs"),
    (["x.png", "-o", "noext"], "cannot write no extension: name the output .png"),
    (["x.png", "-o", "x.gif"], "cannot write .gif"),
    (["x.png", "-o", "cut.jpg"], "JPEG has no transparency: name the output .png"),
    (["x.png", "-o", "cut.webp", "--depth", "16"], "name the output .png or .tif for --depth 16"),
    (["x.png", "--hardness", "2"], "out of range (0 .. 1)"),
])
def test_output_mistakes_are_refused_before_any_work(daemon: RunningDaemon, tmp_path: Path, args: list[str],
                                                      says: str) -> None:
    Image.open(EXAMPLES / "chelsea.jpg").save(tmp_path / "x.png")
    Image.open(EXAMPLES / "coffee.jpg").save(tmp_path / "y.png")
    before = snapshot(tmp_path)
    r = subprocess.run([sys.executable, "-m", "bgmask", "remove", *args], cwd=tmp_path, env=base_env(daemon.env),
                       capture_output=True, timeout=120)
    assert r.returncode == 2
    no_traceback(r)
    assert says in err(r) and len(err(r).strip().splitlines()) == 1, err(r)
    assert snapshot(tmp_path) == before, "nothing written, nothing replaced"


def test_sigint_cancels_the_batch_and_leaves_no_partial_files(daemon: RunningDaemon, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    big = Image.open(EXAMPLES / "astronaut.jpg").resize((2048, 2048))
    for i in range(12):
        big.save(folder / f"p{i:02d}.jpg", quality=90)  # quick to read, and masks are quick to write: the
        # request to the daemon is most of each image's time, so the signal most likely lands in one
    originals = snapshot(folder)
    results = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bgmask", "remove", str(folder), "-o", str(results), "--mask-only"],
                            env=base_env(daemon.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (results.is_dir() and any(p.suffix == ".png" for p in results.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)  # past the first result's writing and the next image's reading: inside its request
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
    summary = stdout.decode().strip().splitlines()[-1]
    done, failed, left = (int(w) for w in summary.replace(",", "").split()[::2][:3])
    assert summary == f"{done} done, {failed} failed, {left} not started (interrupted)"
    assert failed == 0 and done >= 1 and left >= 1 and done + left == 12
    names = sorted(os.listdir(results))
    assert names == [f"p{i:02d}.png" for i in range(done)], "only whole results, no temporary files"
    for name in names:
        assert Image.open(results / name).size == (2048, 2048)
    assert snapshot(folder) == originals


# -- formats and precision ----------------------------------------------------------------------------------

def test_16_bit_photos_give_16_bit_cutouts_with_the_samples_untouched(daemon: RunningDaemon, tmp_path: Path) -> None:
    src = tmp_path / "deep.png"
    rgb = photo16(src)
    assert len(np.unique(rgb[..., 0])) > 10000
    r = bgmask(daemon, "remove", str(src), "-o", str(tmp_path / "cut.png"))
    assert r.returncode == 0, err(r)
    cut = png16_samples(tmp_path / "cut.png")
    assert cut.shape == (512, 512, 4) and np.array_equal(cut[..., :3], rgb)
    alpha = cut[..., 3]
    assert alpha[150, 256] > 50000 and alpha[5, 500] < 13000
    assert len(np.unique(alpha)) > 256, "a 16-bit alpha, not an 8-bit one scaled"

    tif = bgmask(daemon, "remove", str(src), "-o", str(tmp_path / "cut.tif"))
    assert tif.returncode == 0, err(tif)
    with Image.open(tmp_path / "cut.tif") as img:  # uncompressed: read the strip as the file stores it
        offset = img.tile[0][2]
    raw = (tmp_path / "cut.tif").read_bytes()[offset:offset + 512 * 512 * 8]
    assert np.array_equal(np.frombuffer(raw, "<u2").reshape(512, 512, 4), cut)

    eight = bgmask(daemon, "remove", str(src), "-o", str(tmp_path / "cut8.png"), "--depth", "8")
    assert eight.returncode == 0 and Image.open(tmp_path / "cut8.png").mode == "RGBA"

    mask = bgmask(daemon, "remove", str(src), "-o", str(tmp_path / "mask.png"), "--mask-only")
    assert mask.returncode == 0 and Image.open(tmp_path / "mask.png").mode == "I;16"

    wide = bgmask(daemon, "remove", str(EXAMPLES / "chelsea.jpg"), "-o", str(tmp_path / "wide.png"), "--depth", "16")
    assert wide.returncode == 0, err(wide)
    samples = png16_samples(tmp_path / "wide.png")
    original = np.asarray(Image.open(EXAMPLES / "chelsea.jpg").convert("RGB")).astype(np.uint16) * 257
    assert np.array_equal(samples[..., :3], original)


def test_formats_follow_the_extension(daemon: RunningDaemon, tmp_path: Path) -> None:
    src = str(EXAMPLES / "astronaut.jpg")
    for name in ("cut.webp", "cut.tif", "cut.png"):
        r = bgmask(daemon, "remove", src, "-o", str(tmp_path / name))
        assert r.returncode == 0, err(r)
        img = Image.open(tmp_path / name)
        assert img.format == {"webp": "WEBP", "tif": "TIFF", "png": "PNG"}[name[4:]] and img.mode == "RGBA"
    rgba = np.asarray(Image.open(tmp_path / "cut.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cut.webp")), rgba), "lossless WebP"
    flat = bgmask(daemon, "remove", src, "-o", str(tmp_path / "flat.jpg"), "--bg", "white")
    assert flat.returncode == 0, err(flat)
    jpg = np.asarray(Image.open(tmp_path / "flat.jpg"))
    assert Image.open(tmp_path / "flat.jpg").format == "JPEG" and jpg.shape == (512, 512, 3)
    assert jpg[5, 500].min() > 230, "the background became white"
    exact = bgmask(daemon, "remove", src, "-o", str(tmp_path / "flat.png"), "--bg", "0,0,255")
    assert exact.returncode == 0
    flat_png = np.asarray(Image.open(tmp_path / "flat.png")).astype(int)
    a = rgba[..., 3:].astype(int)
    expected = (rgba[..., :3].astype(int) * a + np.array([0, 0, 255]) * (255 - a) + 127) // 255
    assert np.array_equal(flat_png, expected)


# -- every mask option --------------------------------------------------------------------------------------

def test_mask_options_reach_the_daemon(daemon: RunningDaemon, tmp_path: Path) -> None:
    src = str(EXAMPLES / "astronaut.jpg")

    def mask(*flags: str) -> np.ndarray:
        dest = tmp_path / f"m{len(os.listdir(tmp_path))}.png"
        r = bgmask(daemon, "remove", src, "-o", str(dest), "--mask-only", *flags)
        assert r.returncode == 0, err(r)
        return np.asarray(Image.open(dest)).astype(int)

    plain = mask()
    soft = lambda m: np.count_nonzero((m > 10) & (m < 245))  # noqa: E731
    assert soft(mask("--hardness", "1")) < soft(plain) / 2
    assert soft(mask("--feather", "12")) > soft(plain) * 2
    assert np.count_nonzero(mask("--shift-edge", "8") > 127) > np.count_nonzero(plain > 127)
    assert not np.array_equal(mask("--no-refine"), plain)
    cut = tmp_path / "clean.png"
    r = bgmask(daemon, "remove", src, "-o", str(cut), "--decontaminate")
    assert r.returncode == 0, err(r)
    clean = np.asarray(Image.open(cut))
    original = np.asarray(Image.open(EXAMPLES / "astronaut.jpg").convert("RGB"))
    opaque, edge = clean[..., 3] == 255, (clean[..., 3] > 20) & (clean[..., 3] < 235)
    assert np.array_equal(clean[opaque][:, :3], original[opaque]) and not np.array_equal(clean[edge][:, :3], original[edge])


def ring_and_dot(path: Path) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """A red ring (a hole of ~20000 px in the middle) and a separate red dot (~1500 px) on light gray: U2-Netp
    masks both and leaves the hole clear. Returns the centre of the hole and of the dot."""
    yy, xx = np.mgrid[:400, :400]
    img = np.full((400, 400, 3), 240, np.uint8)
    img[(np.hypot(yy - 200, xx - 200) < 150) & (np.hypot(yy - 200, xx - 200) > 85)] = (200, 30, 30)
    img[np.hypot(yy - 40, xx - 360) < 22] = (200, 30, 30)
    Image.fromarray(img).save(path)
    return (slice(190, 210), slice(190, 210)), (slice(35, 45), slice(355, 365))


def test_fill_holes_and_remove_specks_change_the_mask_where_they_say(daemon: RunningDaemon, tmp_path: Path) -> None:
    hole, dot = ring_and_dot(tmp_path / "ring.png")

    def mask(*flags: str) -> np.ndarray:
        dest = tmp_path / f"m{len(os.listdir(tmp_path))}.png"
        r = bgmask(daemon, "remove", str(tmp_path / "ring.png"), "-o", str(dest), "--mask-only", *flags)
        assert r.returncode == 0, err(r)
        return np.asarray(Image.open(dest)) > 127

    plain, filled, cleaned = mask(), mask("--fill-holes", "50000"), mask("--remove-specks", "3000")
    assert not plain[hole].any() and plain[dot].all(), "the image has a hole and a speck to begin with"
    assert filled[hole].all() and filled[dot].all()
    assert not cleaned[dot].any() and np.array_equal(cleaned[100:400, :300], plain[100:400, :300])
    assert np.array_equal(mask("--fill-holes", "100", "--remove-specks", "100"), plain), "smaller than either: kept"


# -- stdin / stdout, recursion, watch -----------------------------------------------------------------------

def test_stdin_to_stdout(daemon: RunningDaemon, tmp_path: Path) -> None:
    r = bgmask(daemon, "remove", "-", stdin=(EXAMPLES / "chelsea.jpg").read_bytes())
    assert r.returncode == 0, err(r)
    file_run = bgmask(daemon, "remove", str(EXAMPLES / "chelsea.jpg"), "-o", str(tmp_path / "c.png"))
    assert file_run.returncode == 0
    assert r.stdout == (tmp_path / "c.png").read_bytes(), "standard output holds the PNG and nothing else"
    to_file = bgmask(daemon, "remove", "-", "-o", str(tmp_path / "d.png"), stdin=(EXAMPLES / "chelsea.jpg").read_bytes())
    assert to_file.returncode == 0 and (tmp_path / "d.png").read_bytes() == r.stdout


def test_recursive_mirrors_sub_folders(daemon: RunningDaemon, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "top.jpg").write_bytes((EXAMPLES / "chelsea.jpg").read_bytes())
    (folder / "sub" / "deeper" / "low.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes())
    flat = bgmask(daemon, "remove", str(folder), "-o", str(tmp_path / "flat"))
    assert flat.returncode == 0 and os.listdir(tmp_path / "flat") == ["top.png"]
    r = bgmask(daemon, "remove", "-r", str(folder), "-o", str(folder / "out"), "--mask-only")
    assert r.returncode == 0, err(r)
    assert sorted(snapshot(folder / "out")) == ["sub/deeper/low.png", "top.png"]
    assert Image.open(folder / "out" / "sub" / "deeper" / "low.png").size == (600, 400)
    again = bgmask(daemon, "remove", "-r", str(folder), "-o", str(folder / "out"), "--mask-only")
    assert "2 kept" in out(again), "the output folder inside the input folder is not read as input"


def start_watch(daemon: RunningDaemon, inbox: Path, results: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bgmask", "watch", str(inbox), str(results), *flags],
                            env=base_env(daemon.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(proc: subprocess.Popen, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not done():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode() if proc.poll() else ""
        time.sleep(0.1)


def interrupt(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    """Ctrl-C after two more seconds of watching, and what the watch printed."""
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=60)


def test_watch_processes_files_once_they_are_complete(daemon: RunningDaemon, tmp_path: Path) -> None:
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "early.jpg").write_bytes((EXAMPLES / "chelsea.jpg").read_bytes())
    proc = start_watch(daemon, inbox, results)
    try:
        wait_for(proc, (results / "early.png").exists)  # what was there before the watch started
        data = (EXAMPLES / "coffee.jpg").read_bytes()
        with open(inbox / "sub" / "slow.jpg", "wb") as f:  # written in two halves, 3 s apart: it looks complete
            f.write(data[: len(data) // 2])  # (unchanged for a second) before it is
            f.flush()
            time.sleep(3)
            assert not (results / "sub" / "slow.png").exists(), "a half-written file is not taken"
            f.write(data[len(data) // 2:])
        wait_for(proc, (results / "sub" / "slow.png").exists)
        stdout, stderr = interrupt(proc)  # nothing is processed twice
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and b"Traceback" not in stderr, stderr.decode()
    assert stdout.decode().strip().splitlines()[-1] == "2 done, 0 failed (stopped)"
    assert Image.open(results / "sub" / "slow.png").size == (600, 400)
    assert sorted(snapshot(results)) == ["early.png", "sub/slow.png"]


def test_watch_names_results_from_the_folder_not_from_arrival_order(daemon: RunningDaemon, tmp_path: Path) -> None:
    """a.jpg and a.png both get NAME-ext results, whichever is taken first, as `remove` names them; a link to the
    folder itself is not followed."""
    inbox, results = tmp_path / "inbox", tmp_path / "results"
    photo_folder(inbox)
    (inbox / "again").symlink_to(".")
    proc = start_watch(daemon, inbox, results, "--mask-only")
    try:
        wait_for(proc, lambda: results.is_dir() and len(snapshot(results)) >= 3)
        stdout, stderr = interrupt(proc)  # nothing more comes
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and b"Traceback" not in stderr, stderr.decode()
    assert sorted(snapshot(results)) == ["a-jpg.png", "a-png.png", "c.png"]
    assert stdout.decode().strip().splitlines()[-1] == "3 done, 0 failed (stopped)"
    from bgmask.files import outputs
    assert sorted(Path(j.dest).name for j in outputs.plan([str(inbox)], str(results), True).jobs) == sorted(snapshot(results))


def test_quality_is_sent_only_when_given() -> None:
    """`--quality` maps to the protocol option `quality` (the daemon's quality lane); without it nothing is sent,
    so daemons without the option keep working. The flags' names are the protocol's with dashes."""
    from bgmask.cli.main import build_parser
    from bgmask.cli.remove import settings_from

    def options(*flags: str) -> dict:
        return settings_from(build_parser().parse_args(["remove", "x.png", *flags])).options

    assert options() == {}
    assert options("--quality", "best") == {"quality": "best"}
    assert options("--no-refine", "--hardness", "0.5", "--shift-edge", "-3", "--feather", "2", "--fill-holes", "40",
                   "--remove-specks", "9", "--decontaminate") == {
        "refine": False, "hardness": 0.5, "shift_edge": -3.0, "feather": 2.0, "fill_holes": 40.0,
        "remove_specks": 9.0, "decontaminate": True}


# -- modes, links, names, failures that are not the file's ----------------------------------------------------

def test_results_get_the_mode_of_a_new_file_or_of_the_file_they_replace(daemon: RunningDaemon, tmp_path: Path) -> None:
    src, dest = str(EXAMPLES / "chelsea.jpg"), tmp_path / "c.png"
    r = subprocess.run([sys.executable, "-m", "bgmask", "remove", src, "-o", str(dest)], env=base_env(daemon.env),
                       capture_output=True, timeout=300, preexec_fn=lambda: os.umask(0o027))
    assert r.returncode == 0, err(r)
    assert dest.stat().st_mode & 0o777 == 0o640, oct(dest.stat().st_mode)
    dest.chmod(0o604)
    r = bgmask(daemon, "remove", src, "-o", str(dest), "--overwrite")
    assert r.returncode == 0, err(r)
    assert dest.stat().st_mode & 0o777 == 0o604, oct(dest.stat().st_mode)


def test_recursion_does_not_follow_links_to_folders(daemon: RunningDaemon, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((EXAMPLES / "chelsea.jpg").read_bytes())
    (folder / "again").symlink_to(".")
    r = bgmask(daemon, "remove", "-r", str(folder), "-o", str(tmp_path / "out"), "--mask-only")
    assert r.returncode == 0, err(r)
    assert sorted(snapshot(tmp_path / "out")) == ["a.png"]


def test_a_destination_that_is_an_input_under_another_name_is_refused(daemon: RunningDaemon, tmp_path: Path) -> None:
    """A hard link stands in for a case-insensitive volume's A.PNG: another name, the same file."""
    src = tmp_path / "photo.png"
    Image.open(EXAMPLES / "chelsea.jpg").save(src)
    os.link(src, tmp_path / "other.png")
    before = src.read_bytes()
    r = bgmask(daemon, "remove", str(src), "-o", str(tmp_path / "other.png"), "--overwrite")
    assert r.returncode == 2 and "is an input" in err(r), err(r)
    assert src.read_bytes() == before


def test_names_that_differ_only_in_case_clash_where_the_volume_ignores_case(tmp_path: Path) -> None:
    from bgmask.files import outputs

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "A.jpg")
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    names = lambda plan: sorted(Path(j.dest).name for j in plan.jobs)  # noqa: E731
    assert names(outputs.plan([str(folder)], str(tmp_path / "out"), False, case_insensitive=True)) == ["A-jpg.png", "a-png.png"]
    assert names(outputs.plan([str(folder)], str(tmp_path / "out"), False, case_insensitive=False)) == ["A.png", "a.png"]


def test_an_area_beyond_the_protocols_range_is_a_usage_error(daemon: RunningDaemon, tmp_path: Path) -> None:
    r = bgmask(daemon, "remove", str(EXAMPLES / "chelsea.jpg"), "-o", str(tmp_path / "c.png"), "--fill-holes", "2e12")
    assert r.returncode == 2 and "out of range (0 .. 1e+12)" in err(r), err(r)
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("command", ["remove", "watch"])
def test_a_config_folder_that_cannot_be_made_is_one_line_not_a_traceback(daemon: RunningDaemon, tmp_path: Path,
                                                                         command: str) -> None:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "in").mkdir()
    env = base_env(dict(daemon.env, BGMASK_CONFIG_DIR=str(tmp_path / "file" / "bgmask")))
    args = [str(EXAMPLES / "chelsea.jpg"), "-o", str(tmp_path / "c.png")] if command == "remove" else \
        [str(tmp_path / "in"), str(tmp_path / "out")]
    r = subprocess.run([sys.executable, "-m", "bgmask", command, *args], env=env, capture_output=True, timeout=120)
    assert r.returncode == 1, err(r)
    no_traceback(r)
    assert err(r).strip().count("\n") == 0 and "bgmask:" in err(r), err(r)
    assert str(tmp_path / "file" / "bgmask") in err(r) and "BGMASK_CONFIG_DIR" in err(r), "name the folder and the fix"
