"""Which execution provider the daemon picks on each platform, the options its GPU sessions get, and the one
sentence a user reads when a GPU provider is offered but cannot start (from ONNX Runtime's own messages)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from bgmask.models import modelprep, providers
from bgmask.errors import BgmaskError
from bgmask.models.pool import SessionPool
from conftest import base_env

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
DML, COREML, ROCM, MIGX = "DmlExecutionProvider", "CoreMLExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider"

# What onnxruntime-gpu 1.31.1 printed on this CPU-only machine without the NVIDIA wheels (preload_dlls, then the
# session's attempt), colour codes included.
MISSING_CUBLAS = """Failed to load libcublasLt.so.13: libcublasLt.so.13: cannot open shared object file: No such file or directory
Please follow https://onnxruntime.ai/docs/install/#cuda-and-cudnn to install CUDA.
\x1b[1;31m2026-12-06 05:54:06.928760464 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library /venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file: No such file or directory
\x1b[m
\x1b[0;93m2026-12-06 05:54:06.928805448 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:1295 CreateExecutionProviderFactoryInstance] Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*. Please install all dependencies as mentioned in the GPU requirements page (https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements), make sure they're in the PATH, and that your GPU is supported.\x1b[m
"""
REQUIRE = ("Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 12.*. Please install all dependencies "
           "as mentioned in the GPU requirements page")


@pytest.mark.parametrize("platform, available, expected", [
    ("linux", [TRT, CUDA, CPU], (CUDA,)),  # TensorRT needs its own libraries: never picked
    ("win32", [DML, CPU], (DML,)),
    ("win32", [CUDA, DML, CPU], (CUDA, DML)),
    ("darwin", [COREML, "AzureExecutionProvider", CPU], (COREML,)),
    ("linux", [MIGX, ROCM, CPU], (ROCM, MIGX)),
    ("linux", [DML, COREML, CPU], ()),  # not built for Linux: ignored
    ("linux", ["AzureExecutionProvider", CPU], ()),
])
def test_gpu_candidates_follow_the_platform(platform: str, available: list, expected: tuple) -> None:
    assert providers.candidates("auto", available, platform) == expected
    assert providers.candidates("gpu", available, platform) == expected
    assert providers.candidates("cpu", available, platform) == ()


def test_an_unknown_device_is_a_bad_request() -> None:
    with pytest.raises(BgmaskError) as err:
        providers.candidates("tpu", [CPU], "linux")
    assert err.value.code == "bad_request"


def test_cuda_sessions_get_a_bounded_arena_and_the_chosen_cudnn_search() -> None:
    gpu = providers.GpuSettings(mem_limit=3 << 30, arena_extend="requested", conv_algo_search="exhaustive")
    opts = providers.provider_options(CUDA, gpu)
    assert opts["gpu_mem_limit"] == str(3 << 30)
    assert opts["arena_extend_strategy"] == "kSameAsRequested"
    assert opts["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert providers.provider_options(ROCM, gpu)["miopen_conv_exhaustive_search"] == "1"
    assert providers.provider_options(CUDA, providers.GpuSettings(arena_extend="power-of-two"))["arena_extend_strategy"] == "kNextPowerOfTwo"
    assert providers.provider_options(DML, gpu) == {"device_id": "0"}
    assert providers.provider_options(CPU, gpu) == {}
    choice = providers.ProviderChoice((CUDA, CPU), "gpu", 2, "auto", None, gpu)
    assert choice.session_providers() == [(CUDA, opts), (CPU, {})]


@pytest.mark.parametrize("log_text, says", [
    (MISSING_CUBLAS, ["CUDA", "libcublasLt.so.13", "cuBLAS", "CUDA 13", "cuDNN 9", "bgmask[cuda]"]),
    ("Failed to load library libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared object "
     f"file: No such file or directory\n{REQUIRE}.\n", ["libcudnn.so.9", "cuDNN", "CUDA 12", "bgmask[cuda]"]),
    ("Failed to load library libonnxruntime_providers_cuda.so with error: libcudart.so.12: cannot open shared object "
     f"file\n{REQUIRE}.\n", ["libcudart.so.12", "CUDA runtime", "CUDA 12"]),
    # onnxruntime-gpu 1.31.1 with all the [cuda] wheels on this machine, which has no NVIDIA driver:
    ("FAIL : Failed to load library /venv/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so with error: "
     f"libcuda.so.1: cannot open shared object file: No such file or directory\n{REQUIRE}.\n", ["driver", "CUDA 12"]),
    ("CUDA failure 100: no CUDA-capable device is detected ; GPU=0 ; expr=cudaSetDevice(info_.device_id);\n", ["driver"]),
    ("CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version\n", ["driver"]),
    ("CUDA failure 2: out of memory ; GPU=0\n", ["out of memory", "--gpu-mem-limit"]),
    (f"{REQUIRE}.\n", ["CUDA 12 and cuDNN 9", "bgmask[cuda]"]),
])
def test_a_cuda_failure_is_one_sentence_naming_the_missing_piece(log_text: str, says: list) -> None:
    sentence = providers.explain_failure(CUDA, log_text, "13.0")
    assert sentence.startswith("CUDA could not start") and sentence.count("\n") == 0 and "\x1b" not in sentence
    for word in says:
        assert word in sentence, (word, sentence)


def test_without_any_gpu_provider_the_sentence_says_what_to_install_on_this_platform() -> None:
    assert "CoreML" in providers.no_gpu_sentence([CPU], "darwin")
    assert "bgmask[directml]" in providers.no_gpu_sentence([CPU], "win32")
    linux = providers.no_gpu_sentence([CPU], "linux")
    assert "bgmask[cuda]" in linux and "ROCm" in linux and "not on PyPI" in linux


def test_two_runtime_distributions_side_by_side_are_named() -> None:
    assert providers.clash_warning(["onnxruntime"]) is None
    warning = providers.clash_warning(["onnxruntime", "onnxruntime-gpu"])
    assert warning is not None and "onnxruntime and onnxruntime-gpu" in warning and "pip uninstall" in warning


def test_this_environment_has_exactly_one_runtime() -> None:
    assert len(providers.installed_runtimes()) == 1, providers.installed_runtimes()


def test_serve_without_any_runtime_names_the_install_command(isolated_dirs: dict) -> None:
    """The base package has no ONNX Runtime: serve says which extra to install instead of a traceback."""
    hide = "import sys; sys.modules['onnxruntime'] = None; from bgmask.cli.main import main; sys.exit(main(['serve']))"
    r = subprocess.run([sys.executable, "-c", hide], env=base_env(isolated_dirs), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "ONNX Runtime is not installed" in r.stderr and "pip install 'bgmask[cpu]'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def cache_env(monkeypatch: pytest.MonkeyPatch, isolated_dirs: dict) -> dict:
    for key, value in isolated_dirs.items():
        monkeypatch.setenv(key, value)
    return isolated_dirs


def _lost_gpu_choice(requested: str) -> providers.ProviderChoice:
    """A GPU choice whose provider the session cannot get: the CPU onnxruntime has no CUDA, so ONNX Runtime
    creates the session on the CPU, as onnxruntime-gpu does when the card is out of memory."""
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    return providers.ProviderChoice((CUDA, CPU), "gpu", 2, requested)


def test_a_model_that_lands_on_the_cpu_under_auto_runs_the_cpu_copy(cache_env: dict) -> None:
    session = SessionPool(_lost_gpu_choice("auto"), 1 << 40, 0).get("u2netp")
    assert session.provider == CPU
    assert session.path == modelprep.cache_path("u2netp"), "the CPU-optimised copy follows the provider really used"


def test_a_model_that_lands_on_the_cpu_under_device_gpu_is_an_error(cache_env: dict) -> None:
    pool = SessionPool(_lost_gpu_choice("gpu"), 1 << 40, 0)
    with pytest.raises(BgmaskError) as err:
        pool.get("u2netp")
    assert err.value.code == "device_unavailable" and "never serves from the CPU" in err.value.message
    assert pool.loaded() == []


def test_loaded_models_report_the_provider_they_really_run_on(cache_env: dict) -> None:
    pool = SessionPool(providers.choose("cpu"), 1 << 40, 0)
    pool.get("u2netp")
    assert pool.loaded_providers() == {"u2netp": CPU}


def test_a_gpu_memory_limit_that_is_not_positive_is_refused(isolated_dirs: dict) -> None:
    r = subprocess.run([sys.executable, "-m", "bgmask", "serve", "--gpu-mem-limit", "0"], env=base_env(isolated_dirs),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--gpu-mem-limit must be a positive number of GiB" in r.stderr


class _GpuOutOfMemory:
    """What onnxruntime-gpu's session.run raises when the card is full mid-request (no GPU here to fill)."""

    def run(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory ; GPU=0")


@pytest.mark.parametrize("requested", ["auto", "gpu"])
def test_a_gpu_out_of_memory_at_run_time_falls_back_to_the_cpu_only_under_auto(
        cache_env: dict, requested: str, caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses

    import zmq

    from bgmask import protocol
    from bgmask.daemon.server import Daemon, DaemonConfig, Job

    d = Daemon(DaemonConfig(preload_delay=-1, device="cpu", default_model="u2netp"))
    try:
        d.choice = dataclasses.replace(d.choice, requested=requested)  # as if a GPU had started under --device X
        on_gpu = d.pool.get("u2netp")
        on_gpu.provider, on_gpu.session = CUDA, _GpuOutOfMemory()
        image = {"width": 64, "height": 48, "channels": 3, "sample_type": "u8"}
        spec = protocol.parse_image(image, 10**6, 10**9)
        jobs = [Job(b"c", n, "remove", "u2netp", spec, zmq.Frame(bytes(64 * 48 * 3))) for n in range(2)]
        if requested == "gpu":
            with pytest.raises(BgmaskError) as err:
                d._compute_mask(jobs[0], lambda *_: None)
            assert err.value.code == "device_unavailable" and "ran out of memory" in err.value.message
            return
        for job in jobs:
            session, result = d._compute_mask(job, lambda *_: None)
            assert session.provider == CPU and len(result.mask) == 64 * 48
        assert d.pool.loaded_providers() == {"u2netp": CPU}
        assert caplog.text.count("now runs on the CPU") == 1
    finally:
        d.ctx.term()
