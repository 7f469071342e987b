"""An imported model whose file changes or disappears is refused by a daemon that already has it loaded, as
models/README.md promises (and one imported again is used in its new form)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLES, _dirs, base_env, start_daemon

NORMALISE = ["--size", "320x320", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def test_a_running_daemon_refuses_a_changed_or_deleted_imported_model(tmp_path: Path, model_cache: Path) -> None:
    u2netp = model_cache / "models" / "u2netp.onnx"
    assert u2netp.is_file(), "the shared cache holds u2netp (other tests download it)"
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(u2netp.read_bytes())
    dirs = _dirs(tmp_path / "bgmask", tmp_path / "cache")  # stamps of this test stay in its own cache

    def bgmask(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bgmask", *args], env=base_env(daemon.env), capture_output=True,
                              text=True, timeout=180)

    daemon = None
    imported = subprocess.run([sys.executable, "-m", "bgmask", "models", "import", str(mine), "--as", "mine", *NORMALISE],
                              env=base_env(dirs), capture_output=True, text=True, timeout=180)
    assert imported.returncode == 0, imported.stderr
    daemon = start_daemon(dirs, "--default-model", "mine", "--preload-delay", "-1")
    try:
        photo = str(EXAMPLES / "chelsea.jpg")
        first = bgmask("remove", photo, "-o", str(tmp_path / "a.png"), "--model", "mine")
        assert first.returncode == 0, first.stderr

        with open(mine, "ab") as f:
            f.write(b"\0")  # changed after the import, while the daemon has it loaded
        changed = bgmask("remove", photo, "-o", str(tmp_path / "b.png"), "--model", "mine")
        assert changed.returncode == 1 and "has changed since it was imported" in changed.stderr, changed.stderr
        assert not (tmp_path / "b.png").exists()

        mine.unlink()
        gone = bgmask("remove", photo, "-o", str(tmp_path / "c.png"), "--model", "mine")
        assert gone.returncode == 1 and "is gone" in gone.stderr, gone.stderr

        mine.write_bytes(u2netp.read_bytes())  # the original again: a new mtime, the same digest
        back = bgmask("remove", photo, "-o", str(tmp_path / "d.png"), "--model", "mine")
        assert back.returncode == 0, back.stderr
    finally:
        daemon.stop()
