"""The `[cuda]` install and the half-working GPU set-up many users have: onnxruntime-gpu installed, the CUDA
provider listed, but it cannot start (here: no NVIDIA libraries, no GPU). A side venv gets what
`pip install '.[cuda]'` resolves to, minus the NVIDIA runtime wheels (~1.3 GB; onnxruntime-gpu itself is
~250 MB and comes from pip's cache after the first run), and real daemons run in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from bgmask.models import providers
from conftest import REPO, RunningDaemon, base_env, load_rgb, start_daemon

pytestmark = pytest.mark.ortgpu

RUNTIMES = set(providers.RUNTIME_DISTRIBUTIONS)


def _pip(python: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=timeout)


def _resolve(extra: str, tmp: Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution `pip install '.[extra]'` would install into an empty environment
    (pip reads the wheels' metadata only: nothing is installed)."""
    src = tmp / "src"  # a copy, so that building the project leaves nothing in the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".venv*", "results"))
    report = tmp / f"{extra}.json"
    r = _pip(Path(sys.executable), "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), f"{src}[{extra}]")
    if r.returncode != 0:
        pytest.skip(f"pip could not resolve .[{extra}] here (no package index?): {r.stderr.strip()[-300:]}")
    got = json.loads(report.read_text())["install"]
    return [(item["metadata"]["name"].lower().replace("_", "-"), item["metadata"]["version"]) for item in got]


@pytest.fixture(scope="module")
def cuda_resolution(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    return _resolve("cuda", tmp_path_factory.mktemp("resolve"))


@pytest.fixture(scope="module")
def gpu_python(tmp_path_factory: pytest.TempPathFactory, cuda_resolution: list[tuple[str, str]]) -> Path:
    """A venv with what `.[cuda]` brings except the NVIDIA wheels; bgmask itself comes from PYTHONPATH."""
    root = tmp_path_factory.mktemp("ortgpu") / "venv"
    venv.create(root, with_pip=True)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    wanted = [f"{name}=={version}" for name, version in cuda_resolution if name != "bgmask" and not name.startswith("nvidia-")]
    r = _pip(python, "install", "--quiet", *wanted)
    if r.returncode != 0:
        pytest.skip(f"onnxruntime-gpu could not be installed here: {r.stderr.strip()[-300:]}")
    return python


def _venv_runtime(python: Path) -> dict:
    code = ("import json, onnxruntime as o, sys; sys.path.insert(0, sys.argv[1]); from bgmask.models import providers; "
            "print(json.dumps({'dists': providers.installed_runtimes(), 'available': o.get_available_providers()}))")
    r = subprocess.run([str(python), "-c", code, str(REPO / "server")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_cuda_extra_brings_exactly_one_runtime_and_the_cuda_libraries(cuda_resolution: list) -> None:
    names = {name for name, _ in cuda_resolution}
    assert names & RUNTIMES == {"onnxruntime-gpu"}, sorted(names)
    assert any(n.startswith("nvidia-cudnn") for n in names) and "nvidia-cuda-runtime" in names
    assert any(n.startswith("nvidia-cublas") for n in names)


def test_the_cpu_extra_brings_the_cpu_runtime_and_the_base_install_none(tmp_path: Path) -> None:
    assert {n for n, _ in _resolve("cpu", tmp_path / "cpu")} & RUNTIMES == {"onnxruntime"}
    assert {n for n, _ in _resolve("test", tmp_path / "base")} & RUNTIMES == set()


def test_the_gpu_venv_has_one_runtime_with_the_cuda_provider_listed(gpu_python: Path) -> None:
    got = _venv_runtime(gpu_python)
    assert got["dists"] == ["onnxruntime-gpu"]
    assert "CUDAExecutionProvider" in got["available"]


def _cuda_cannot_start(gpu_python: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver: CUDA may well start here")


def test_device_gpu_exits_naming_cuda_and_the_missing_piece(gpu_python: Path, isolated_dirs: dict) -> None:
    _cuda_cannot_start(gpu_python)
    r = subprocess.run([str(gpu_python), "-m", "bgmask", "serve", "--device", "gpu"], env=base_env(isolated_dirs),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("bgmask: CUDA could not start:"), last
    assert ".so" in last and "is missing" in last and "pip install 'bgmask[cuda]'" in last
    assert "never serves from the CPU" in last
    assert not (Path(isolated_dirs["BGMASK_RUNTIME_DIR"]) / "daemon.json").exists(), "it never served"


@pytest.fixture(scope="module")
def auto_daemon(gpu_python: Path, tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> RunningDaemon:
    _cuda_cannot_start(gpu_python)
    from conftest import _dirs

    running = start_daemon(_dirs(tmp_path_factory.mktemp("auto"), model_cache), "--device", "auto",
                           "--default-model", "u2netp", python=str(gpu_python))
    yield running
    running.stop()


def _client(d: RunningDaemon):
    from bgmask.client.loader import load_client

    return load_client().Client(d.endpoint, d.token, timeout=120, autostart=False)


def test_device_auto_serves_masks_on_the_cpu_and_says_why(auto_daemon: RunningDaemon) -> None:
    data, w, h = load_rgb("astronaut.jpg", (300, 200))
    with _client(auto_daemon) as c:
        for _ in range(2):
            mask = c.remove(data, w, h, 3, "u8")
            assert len(mask) == w * h and 0 < max(mask) and min(mask) < 255
        hello = c.hello()
        status = c.status()
    for reply in (hello, status):
        assert reply["device"] == "cpu" and reply["provider"] == "CPUExecutionProvider"
        assert reply["requested_device"] == "auto"
        assert reply["device_note"].startswith("CUDA could not start") and "Running on the CPU instead" in reply["device_note"]
    model = next(m for m in status["models"] if m["name"] == "u2netp")
    assert model["state"] == "loaded" and model["provider"] == "CPUExecutionProvider"
    log = auto_daemon.log()
    assert log.count("GPU not used: CUDA could not start") == 1, "said once, not per request"
    assert "model u2netp loaded on CPUExecutionProvider" in log


def test_status_text_and_json_say_cpu_and_why(auto_daemon: RunningDaemon) -> None:
    env = dict(base_env(auto_daemon.env), **auto_daemon.env)
    text = subprocess.run([sys.executable, "-m", "bgmask", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "device    cpu (CPUExecutionProvider" in text.stdout and "--device auto" in text.stdout
    assert "GPU       not used: CUDA could not start" in text.stdout
    as_json = subprocess.run([sys.executable, "-m", "bgmask", "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    st = json.loads(as_json.stdout)
    assert st["device"] == "cpu" and st["device_note"].startswith("CUDA could not start")
