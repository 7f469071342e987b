"""`bgmask.remove()` for scripts and notebooks, against the session's real daemon: each kind of image in gives
the same kind out, with the original samples untouched; failures are `bgmask.BgmaskError` with a code."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bgmask
from conftest import EXAMPLES, base_env
from test_cli_files import png16_samples

PHOTO = EXAMPLES / "chelsea.jpg"


def test_a_pil_image_gives_an_rgba_image_with_its_pixels(client_env: dict) -> None:
    src = Image.open(PHOTO)
    cut = bgmask.remove(src)
    assert isinstance(cut, Image.Image) and cut.mode == "RGBA" and cut.size == src.size
    assert np.array_equal(np.asarray(cut)[..., :3], np.asarray(src.convert("RGB")))
    alpha = np.asarray(cut)[..., 3]
    assert alpha.max() == 255 and alpha.min() == 0
    mask = bgmask.remove(src, mask_only=True)
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), alpha)
    assert bgmask.remove(str(PHOTO), mask_only=True).tobytes() == mask.tobytes(), "a path gives a PIL image too"


def test_numpy_arrays_keep_their_dtype_and_samples(client_env: dict) -> None:
    rgb8 = np.asarray(Image.open(PHOTO).convert("RGB"))
    rgb16 = rgb8.astype(np.uint16) * 257
    cut16 = bgmask.remove(rgb16, hardness=0.5)
    assert cut16.dtype == np.uint16 and cut16.shape == (300, 451, 4)
    assert np.array_equal(cut16[..., :3], rgb16)
    assert len(np.unique(cut16[..., 3])) > 256
    mask8 = bgmask.remove(rgb8, mask_only=True, hardness=0.5)
    assert mask8.dtype == np.uint8 and mask8.shape == (300, 451)
    assert np.abs(mask8.astype(int) - cut16[..., 3].astype(int) // 257).mean() < 3, "the same subject at both depths"
    floats = bgmask.remove(rgb8.astype(np.float32) / 255, mask_only=True, hardness=0.5)
    assert floats.dtype == np.float32 and 0.0 <= floats.min() and floats.max() <= 1.0
    flat = bgmask.remove(rgb8, bg="white")
    assert flat.shape == (300, 451, 3) and flat.dtype == np.uint8


def test_file_bytes_give_png_bytes(client_env: dict, tmp_path: Path) -> None:
    png = bgmask.remove(PHOTO.read_bytes(), feather=3)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    assert img.mode == "RGBA" and img.size == (451, 300)
    rgb16 = np.asarray(Image.open(PHOTO).convert("RGB")).astype(np.uint16) * 257 + 7
    tiff = io.BytesIO()
    from bgmask.files import writing

    writing.write(tiff, "TIFF", rgb16)  # a 16-bit RGB TIFF, which Pillow alone reads as 8-bit
    (tmp_path / "cut.png").write_bytes(bgmask.remove(tiff.getvalue()))
    cut = png16_samples(tmp_path / "cut.png")
    assert cut.shape == (300, 451, 4) and np.array_equal(cut[..., :3], rgb16)


def test_failures_are_one_exception_type_with_the_daemons_code(client_env: dict) -> None:
    with pytest.raises(bgmask.BgmaskError) as bad:
        bgmask.remove(np.zeros((4, 4, 5), np.uint8))
    assert bad.value.code == "bad_image"
    with pytest.raises(bgmask.BgmaskError) as unknown:
        bgmask.remove(np.zeros((4, 4, 3), np.uint8), model="no-such-model")
    assert unknown.value.code == "unknown_model" and "no-such-model" in unknown.value.message
    with pytest.raises(bgmask.BgmaskError) as unreadable:
        bgmask.remove(b"not an image")
    assert unreadable.value.code == "bad_image"


def test_the_client_class_is_exported_for_streaming_use(client_env: dict) -> None:
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    with bgmask.Client() as client:
        first = bgmask.remove(rgb, mask_only=True, client=client)
        again = client.remove(rgb.tobytes(), 451, 300, 3, "u8")
    assert np.array_equal(np.frombuffer(again, np.uint8).reshape(300, 451), first)


@pytest.mark.parametrize("module", ["bgmask", "bgmask.cli.main"])
def test_import_bgmask_loads_nothing_heavy(module: str) -> None:
    """The daemon, every CLI command and scripts import bgmask: numpy and Pillow load only to process images."""
    code = f"import sys, {module}; print(sorted(m for m in ('numpy', 'PIL', 'zmq', 'onnxruntime') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], env=base_env({}), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_the_readme_example_starts_a_daemon_when_none_runs(isolated_dirs: dict, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("```python\nimport bgmask") + len("```python\n")
    example = readme[start:readme.index("```", start)]
    env = base_env(isolated_dirs)
    (tmp_path / "examples").symlink_to(EXAMPLES)  # the example's relative paths, its result outside the checkout
    run = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    try:
        assert run.returncode == 0, run.stderr
        assert Image.open(tmp_path / "astronaut-api.png").mode == "RGBA"
    finally:
        subprocess.run([sys.executable, "-m", "bgmask", "stop"], env=env, capture_output=True, timeout=60)
