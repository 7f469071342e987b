"""The speed and memory optimisations change no mask: every one is checked against plain ONNX Runtime on the
shipped model file, on real photos, within 1/255 (bench/speed.py measures what they buy; no timings here)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from bgmask.models import download, modelprep, providers
from bgmask.mask import pipeline, pixels
from bgmask.models.catalog import Catalog
from bgmask.client.loader import load_client
from bgmask.protocol import ImageSpec, RemoveOptions
from bgmask.models.pool import SessionPool
from bgmask.models.sessions import MattingSession
from conftest import example, start_daemon

PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg")
FLOAT16 = 10


@pytest.fixture
def cache_env(monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> Path:
    monkeypatch.setenv("BGMASK_CACHE_DIR", str(model_cache))
    return model_cache


def shipped(name: str) -> tuple:
    spec = Catalog.load().get(name)
    return spec, download.ensure_model(spec)


def plain_session(spec, path: Path) -> MattingSession:
    """The daemon's session object with its inference swapped for ONNX Runtime's defaults on `path`: the
    reference every optimisation is compared with."""
    session = MattingSession(spec, path, providers.choose("cpu"))
    session.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session.input_name = session.session.get_inputs()[0].name
    session.output_name = spec.output_name or session.session.get_outputs()[0].name
    return session


def photo_rgba(name: str) -> tuple[bytes, ImageSpec]:
    """A real photo as RGBA8, its top-left corner made fully transparent (so the alpha path is covered)."""
    img = Image.open(example(name)).convert("RGBA")
    arr = np.array(img)
    arr[: arr.shape[0] // 8, : arr.shape[1] // 8, 3] = 0
    h, w = arr.shape[:2]
    return arr.tobytes(), ImageSpec(w, h, 4, "u8", w * 4, False)


def mask(session: MattingSession, data: bytes, spec: ImageSpec, refine: bool = True) -> np.ndarray:
    result = pipeline.compute_mask(session, data, spec, RemoveOptions(refine=refine), "u8", lambda *_: None, lambda: False)
    return np.frombuffer(result.mask, dtype=np.uint8).reshape(spec.height, spec.width).astype(np.int16)


def assert_same_masks(a: MattingSession, b: MattingSession) -> None:
    for name in PHOTOS:
        data, spec = photo_rgba(name)
        for refine in (True, False):
            ma, mb = mask(a, data, spec, refine), mask(b, data, spec, refine)
            assert ma.shape == mb.shape == (spec.height, spec.width)
            assert np.abs(ma - mb).max() <= 1, f"{name} refine={refine}: masks differ by more than 1/255"
            assert ma.max() == 255 and ma.min() == 0, f"{name}: the mask should span background to foreground"


def daemon_session(name: str) -> MattingSession:
    """The session the daemon itself runs for `name` on the CPU."""
    return SessionPool(providers.choose("cpu"), 8 << 30, 0).get(name)


def test_daemon_session_gives_the_masks_of_plain_onnxruntime(cache_env: Path) -> None:
    """Whatever the daemon's session does for speed (rewritten file, arena and thread settings), masks stay."""
    spec, path = shipped("u2netp")
    session = daemon_session("u2netp")
    assert session.path == modelprep.cache_path("u2netp"), "the CPU runs the prepared copy"
    assert_same_masks(session, plain_session(spec, path))


def test_a_prepared_copy_that_does_not_load_is_replaced_by_the_original(cache_env: Path) -> None:
    """Bit rot in the derived file must not take the model down: the verified original runs, and the copy is
    rebuilt at the next load."""
    spec, path = shipped("u2netp")
    copy = daemon_session("u2netp").path
    good = copy.read_bytes()
    try:
        copy.write_bytes(good[: len(good) // 2])
        stamp = copy.with_suffix(".json")  # a copy that passes its digest check (tests/test_prepared_digest.py
        record = json.loads(stamp.read_text())  # has the other case) but that ONNX Runtime cannot load
        stamp.write_text(json.dumps(dict(record, sha256=hashlib.sha256(good[: len(good) // 2]).hexdigest())))
        session = daemon_session("u2netp")
        assert session.path == path and not copy.exists()
        data, ispec = photo_rgba("chelsea.jpg")
        assert mask(session, data, ispec).max() == 255
        assert daemon_session("u2netp").path == copy and copy.read_bytes() == good
    finally:
        if not copy.exists() or copy.read_bytes() != good:
            modelprep.forget(copy)


def test_prepared_u2netp_gives_the_same_masks(cache_env: Path, tmp_path: Path) -> None:
    spec, path = shipped("u2netp")
    prepared = modelprep.prepare(path, dst=tmp_path / "u2netp.cpu.onnx")
    assert prepared == tmp_path / "u2netp.cpu.onnx"
    outputs = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_outputs()
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()
    assert [o.name for o in outputs] == [original[0].name], "only the fused output is kept"
    assert_same_masks(plain_session(spec, prepared), plain_session(spec, path))


def test_prepared_u2netp_resizes_in_half_pixel_mode(cache_env: Path) -> None:
    """The NCHWc layout pass only takes half_pixel Resize; the rewrite must convert all 38 of U2-Net's."""
    _, path = shipped("u2netp")
    _, stats = modelprep.rewrite(path.read_bytes())
    assert stats["resizes"] == 38
    assert stats["outputs_removed"] == 6
    data, again = modelprep.rewrite(modelprep.rewrite(path.read_bytes())[0])
    assert again["resizes"] == again["outputs_removed"] == again["nodes_removed"] == 0, "the rewrite is idempotent"


@pytest.mark.isnet
def test_prepared_isnet_is_fp32_and_gives_the_same_masks(cache_env: Path, tmp_path: Path) -> None:
    """fp32 activations where the fp16 file rounded some to fp16 move IS-Net's prediction by ~0.1/255. The
    guided-filter refinement can amplify such a change in flat, low-contrast windows (astronaut: 12 pixels
    out of 262144 at 2/255), so refined masks get 2/255 there and everything else the usual 1/255."""
    spec, path = shipped("isnet-general-use")
    prepared = modelprep.prepare(path, dst=tmp_path / "isnet.cpu.onnx")
    assert prepared != path
    _, stats = modelprep.rewrite(prepared.read_bytes())
    assert stats["fp16_tensors"] == stats["casts"] == stats["nodes_removed"] == 0, "no fp16 left, nothing dead"
    session = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output"]
    assert all(i.type == "tensor(float)" for i in session.get_inputs())
    a, b = plain_session(spec, prepared), plain_session(spec, path)
    data, ispec = photo_rgba("astronaut.jpg")
    tensor = a.prepare(pixels.model_rgb(data, ispec, a.size))
    assert np.abs(a.postprocess(a.infer(tensor)) - b.postprocess(b.infer(tensor))).max() <= 0.5 / 255
    assert np.abs(mask(a, data, ispec, refine=False) - mask(b, data, ispec, refine=False)).max() <= 1
    refined = np.abs(mask(a, data, ispec) - mask(b, data, ispec))
    assert refined.max() <= 2 and np.count_nonzero(refined > 1) <= refined.size // 10000


def test_prepare_is_done_once_and_redone_when_the_model_changes(cache_env: Path, tmp_path: Path) -> None:
    _, path = shipped("u2netp")
    src = tmp_path / "model.onnx"
    src.write_bytes(path.read_bytes())
    dst = tmp_path / "prepared" / "model.cpu.onnx"
    first = modelprep.prepare(src, dst)
    assert first == dst
    built = first.stat().st_mtime_ns
    assert modelprep.prepare(src, dst) == first and first.stat().st_mtime_ns == built, "reused, not rebuilt"
    src.write_bytes(path.read_bytes())  # a re-download: same name, new file
    assert modelprep.prepare(src, dst) == first and first.stat().st_mtime_ns != built
    assert sorted(p.name for p in dst.parent.iterdir()) == sorted([first.name, first.with_suffix(".json").name]), \
        "no partial files are left behind"


def test_a_file_the_rewrite_cannot_read_is_used_as_it_is(tmp_path: Path) -> None:
    src = tmp_path / "truncated.onnx"
    src.write_bytes(example("coffee.jpg").read_bytes()[:1000])
    dst = tmp_path / "model.cpu.onnx"
    assert modelprep.prepare(src, dst) == src
    assert modelprep.prepare(src, dst) == src, "the verdict is remembered"
    assert not list(tmp_path.glob(".*.part")) and not dst.exists()


def test_a_rewrite_that_verify_rejects_keeps_the_original(cache_env: Path, tmp_path: Path) -> None:
    _, path = shipped("u2netp")
    src = tmp_path / "model.onnx"
    src.write_bytes(path.read_bytes())
    dst = tmp_path / "model.cpu.onnx"
    assert modelprep.prepare(src, dst, verify=lambda original, rewritten: False) == src
    assert not dst.exists() and not list(tmp_path.glob(".*.part"))


def test_verify_tells_a_faithful_rewrite_from_a_wrong_one(cache_env: Path, tmp_path: Path) -> None:
    _, path = shipped("u2netp")
    shape = (1, 3, 320, 320)
    faithful, wrong = tmp_path / "faithful.onnx", tmp_path / "wrong.onnx"
    faithful.write_bytes(modelprep.rewrite(path.read_bytes())[0])
    wrong.write_bytes(modelprep.rewrite(path.read_bytes(), keep_output="1960")[0])  # a side output instead
    assert modelprep.same_outputs(path, faithful, shape)
    assert not modelprep.same_outputs(path, wrong, shape)


def test_an_idle_daemon_gives_inference_memory_back(isolated_dirs: dict[str, str]) -> None:
    """A warm daemon between requests holds its loaded model, not the GiB a running model and a 12 MP request
    need: once idle for --release-memory-after seconds most of that goes back (here: 90 -> 305 -> 155 MiB; with
    IS-Net it falls below the loaded level, as the model's preparation is given back too)."""
    running = start_daemon(isolated_dirs, "--default-model", "u2netp", "--release-memory-after", "1")
    try:
        with load_client().Client(running.endpoint, running.token, autostart=False) as client:
            deadline = time.monotonic() + 60
            while {m["name"]: m["state"] for m in client.status()["models"]}["u2netp"] != "loaded":
                assert time.monotonic() < deadline, "u2netp was not preloaded"
                time.sleep(0.2)
            idle = client.status()["rss"]
            big = Image.open(example("coffee.jpg")).convert("RGBA").resize((4000, 3000))
            for _ in range(2):
                mask = client.remove(big.tobytes(), big.width, big.height, 4, "u8")
                assert len(mask) == big.width * big.height
            busy = client.status()["rss"]
            deadline = time.monotonic() + 20
            while (after := client.status()["rss"]) > idle + (busy - idle) // 2 and time.monotonic() < deadline:
                time.sleep(0.5)
        assert busy - idle > 150 << 20, "a 12 MP request should need memory (else this test shows nothing)"
        assert after <= idle + (busy - idle) // 2, f"RSS idle {idle >> 20} MiB, busy {busy >> 20}, after {after >> 20}"
    finally:
        running.stop()


def test_a_copy_keeping_another_output_is_checked_against_that_output(cache_env: Path, tmp_path: Path) -> None:
    """A catalog entry may read an output other than the first: the check must compare that one, else a
    faithful copy would be refused (and a wrong one could pass)."""
    _, path = shipped("u2netp")
    shape = (1, 3, 320, 320)
    side = modelprep.prepare(path, tmp_path / "side.onnx", keep_output="1960",
                             verify=lambda original, rewritten: modelprep.same_outputs(original, rewritten, shape, "1960"))
    assert side == tmp_path / "side.onnx"
    fused = tmp_path / "fused.onnx"
    fused.write_bytes(modelprep.rewrite(path.read_bytes())[0])
    assert not modelprep.same_outputs(path, fused, shape, "1960")
