"""bench/carry.py: large files cut into batches small enough for one device call, joined again there."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("carry", REPO / "bench" / "carry.py")
carry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carry)

BATCH = 1000


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    src = tmp_path / "src"
    src.mkdir()
    out = []
    for name, size in (("small.whl", 10), ("empty.bin", 0), ("exact.whl", BATCH), ("big.tar.xz", 2 * BATCH + 517)):
        path = src / name
        path.write_bytes(os.urandom(size))
        out.append(path)
    return out


def test_batches_stay_under_the_limit_and_join_back_byte_for_byte(files: list[Path], tmp_path: Path) -> None:
    manifest = carry.pack(files, tmp_path / "carry", BATCH)
    batches = sorted((tmp_path / "carry").glob("batch-*"))
    assert [b.name for b in batches] == [f"batch-{n:02d}" for n in range(manifest["batches"])] and len(batches) >= 3
    for b in batches:
        assert sum(p.stat().st_size for p in b.iterdir() if p.name != carry.MANIFEST) <= BATCH
    store = tmp_path / "store"
    for b in reversed(batches):  # any order
        carry.receive(b, store)
    assert carry.missing(store) == []
    made = carry.assemble(store, tmp_path / "out")
    assert [p.name for p in made] == [f.name for f in files]
    for f in files:
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()


def test_a_missing_batch_is_named_and_nothing_is_assembled(files: list[Path], tmp_path: Path) -> None:
    carry.pack(files, tmp_path / "carry", BATCH)
    batches = sorted((tmp_path / "carry").glob("batch-*"))
    store = tmp_path / "store"
    for b in batches[:-1]:
        carry.receive(b, store)
    assert carry.missing(store) == [len(batches) - 1]
    with pytest.raises(ValueError, match="still to receive"):
        carry.assemble(store, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    r = subprocess.run([sys.executable, str(REPO / "bench" / "carry.py"), "missing", "--store", str(store)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and f"batches still to receive: {len(batches) - 1}" in r.stdout


def test_a_corrupt_piece_is_refused_on_arrival(files: list[Path], tmp_path: Path) -> None:
    carry.pack(files, tmp_path / "carry", BATCH)
    batch = sorted((tmp_path / "carry").glob("batch-*"))[-1]
    piece = next(p for p in batch.iterdir() if p.name != carry.MANIFEST and p.stat().st_size)
    data = bytearray(piece.read_bytes())
    data[0] ^= 1
    piece.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        carry.receive(batch, tmp_path / "store")
