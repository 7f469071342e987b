"""rembg in its own virtual environment (bench/.venv-rembg): never a bgmask dependency, same ONNX Runtime.

rembg is what users compare bgmask with, so the benchmark runs it on the same machine, with the same model
files and the same onnxruntime version, but isolated: rembg[cli] pulls in a web UI stack that bgmask must
never depend on. `python bench/rembg_env.py` creates or repairs the environment and prints its python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import onnxruntime

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-rembg"
HOME = VENV / "u2net-home"  # rembg's U2NET_HOME: our cached model files, linked under rembg's names


def python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _installed() -> dict:
    """What the venv has: rembg and onnxruntime versions, or {} if it is missing or broken."""
    if not python().exists():
        return {}
    probe = ("import json, importlib.metadata as m, onnxruntime;"
             "print(json.dumps({'rembg': m.version('rembg'), 'onnxruntime': onnxruntime.__version__,"
             " 'cli': bool(__import__('importlib').util.find_spec('click'))}))")
    out = subprocess.run([str(python()), "-c", probe], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def ensure(log=print) -> dict:
    """Create or update the venv so it has rembg (with its CLI) and exactly our onnxruntime; CPU only."""
    want = onnxruntime.__version__
    have = _installed()
    if have.get("onnxruntime") == want and have.get("cli"):
        return have
    if not python().exists():
        log(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    log(f"installing rembg[cli] and onnxruntime=={want} into {VENV} (once)")
    subprocess.run([str(python()), "-m", "pip", "install", "--quiet", "rembg[cli]", f"onnxruntime=={want}"], check=True)
    have = _installed()
    if have.get("onnxruntime") != want:
        raise RuntimeError(f"the rembg venv has onnxruntime {have.get('onnxruntime')}, expected {want}")
    return have


def link_models(models: dict[str, Path]) -> Path:
    """Point rembg at our files: it uses `$U2NET_HOME/<name>.onnx` as is when present (no download, no md5)."""
    HOME.mkdir(parents=True, exist_ok=True)
    for name, path in models.items():
        link = HOME / f"{name}.onnx"
        if link.is_symlink() or link.exists():
            if link.resolve() == path.resolve():
                continue
            link.unlink()
        link.symlink_to(path.resolve())
    return HOME


def env() -> dict[str, str]:
    """Environment for rembg processes: our model home, and the same default threading as bgmask."""
    e = dict(os.environ, U2NET_HOME=str(HOME))
    e.pop("OMP_NUM_THREADS", None)  # rembg copies it into both thread counts; leave ORT's defaults
    return e


if __name__ == "__main__":
    print(json.dumps(ensure(log=lambda m: print(m, file=sys.stderr))))
    print(python())
