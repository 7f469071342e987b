"""The CPU copy of a model that the daemon writes into its cache is checked against the SHA-256 recorded when
it was written, at every load: a damaged copy is rebuilt (and the log says why), never used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bgmask.models import download, modelprep
from bgmask.models.catalog import Catalog


@pytest.fixture
def u2netp(monkeypatch: pytest.MonkeyPatch, model_cache: Path, tmp_path: Path) -> Path:
    """A private copy of the downloaded U2-Netp (the shared cache is never damaged)."""
    monkeypatch.setenv("BGMASK_CACHE_DIR", str(model_cache))
    src = tmp_path / "u2netp.onnx"
    src.write_bytes(download.ensure_model(Catalog.load().get("u2netp")).read_bytes())
    return src


def output(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 3, 320, 320), dtype=np.float32)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_a_damaged_prepared_copy_is_rebuilt_and_gives_the_same_output(u2netp: Path, tmp_path: Path) -> None:
    dst = tmp_path / "prepared" / "u2netp.cpu.onnx"
    assert modelprep.prepare(u2netp, dst) == dst
    good = dst.read_bytes()
    expected = output(dst)
    damaged = bytearray(good)
    middle = len(damaged) // 2
    damaged[middle:middle + 64] = bytes(b ^ 0xFF for b in damaged[middle:middle + 64])  # 64 flipped bytes
    dst.write_bytes(bytes(damaged))
    logs: list[str] = []
    assert modelprep.prepare(u2netp, dst, log=logs.append) == dst
    assert any(str(dst) in line and "SHA-256" in line for line in logs), logs
    assert dst.read_bytes() == good
    assert np.array_equal(output(dst), expected)
    logs.clear()
    assert modelprep.prepare(u2netp, dst, log=logs.append) == dst and logs == [], "an intact copy is reused"


def test_a_copy_stamped_by_the_previous_release_is_kept_and_its_digest_recorded(u2netp: Path, tmp_path: Path) -> None:
    """Stamps written before digests were recorded have no sha256: upgrading is no 'damaged model' and no rebuild."""
    import json

    dst = tmp_path / "prepared" / "u2netp.cpu.onnx"
    assert modelprep.prepare(u2netp, dst) == dst
    stamp = dst.with_suffix(".json")
    record = json.loads(stamp.read_text())
    digest = record.pop("sha256")
    stamp.write_text(json.dumps(record))  # what the previous release wrote
    before = dst.stat()
    logs: list[str] = []
    verified: list[Path] = []
    assert modelprep.prepare(u2netp, dst, verify=lambda a, b: verified.append(b) or True, log=logs.append) == dst
    assert len(logs) == 1 and "older bgmask" in logs[0] and "damaged" not in logs[0], logs
    assert verified == [] and (dst.stat().st_ino, dst.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert json.loads(stamp.read_text())["sha256"] == digest
    logs.clear()
    assert modelprep.prepare(u2netp, dst, log=logs.append) == dst and logs == []
