"""Choosing ONNX Runtime execution providers and threads for this machine, and checking that a GPU provider
really starts: ONNX Runtime silently falls back to the CPU when one cannot (a missing CUDA library, no driver),
so a tiny session is created with it first and the provider it actually got decides."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from bgmask import errors as E
from bgmask.errors import BgmaskError

CUDA, ROCM, MIGRAPHX, DML, COREML = ("CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
                                     "DmlExecutionProvider", "CoreMLExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
# Best first, with the platforms where each is built. TensorRT (also in onnxruntime-gpu) is left out: it needs
# the separate TensorRT libraries and builds an engine per input shape, minutes on first use.
GPU_PROVIDERS = (CUDA, ROCM, MIGRAPHX, DML, COREML)
BUILT_FOR = {CUDA: ("linux", "win32"), ROCM: ("linux",), MIGRAPHX: ("linux",), DML: ("win32",), COREML: ("darwin",)}
DEVICES = ("auto", "cpu", "gpu")
# The PyPI distributions that each install the `onnxruntime` module: exactly one may be present.
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                         "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-migraphx", "onnxruntime-silicon")
INSTALL_HINT = ("pip install 'bgmask[cpu]' (or 'bgmask[cuda]' for an NVIDIA GPU, 'bgmask[directml]' for another "
                "GPU on Windows)")
CONV_ALGO_SEARCHES = ("heuristic", "exhaustive", "default")
ARENA_EXTEND = ("requested", "power-of-two")
GiB = 1024**3


def load_runtime() -> Any:
    """The onnxruntime module, or a typed error naming the install command when no runtime is installed
    (the base package has none, so that the CPU and GPU builds never end up side by side)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BgmaskError(E.DEVICE_UNAVAILABLE, f"ONNX Runtime is not installed ({exc}); install it with {INSTALL_HINT}.") from None
    return onnxruntime


def installed_runtimes() -> list[str]:
    """The ONNX Runtime distributions installed in this environment (more than one break each other)."""
    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def clash_warning(found: Sequence[str]) -> Optional[str]:
    """One sentence when several runtime distributions share the `onnxruntime` module, else None."""
    if len(found) < 2:
        return None
    return (f"{' and '.join(found)} are installed together and overwrite each other's files; keep one: "
            f"pip uninstall -y {' '.join(found)} && {INSTALL_HINT}.")


@dataclass(frozen=True)
class GpuSettings:
    """How a GPU session may use the card: a bounded arena, so that a second application keeps its share."""

    mem_limit: int = 4 * GiB
    arena_extend: str = "requested"  # grow the arena by what is asked ("power-of-two": ORT's doubling default)
    conv_algo_search: str = "heuristic"  # cuDNN: "exhaustive" times every algorithm at the first run
    device_id: int = 0


def provider_options(provider: str, gpu: GpuSettings) -> dict[str, str]:
    """ONNX Runtime's option strings for `provider` (the CPU takes its settings from the session options)."""
    arena = {"requested": "kSameAsRequested", "power-of-two": "kNextPowerOfTwo"}[gpu.arena_extend]
    if provider == CUDA:
        return {"device_id": str(gpu.device_id), "gpu_mem_limit": str(gpu.mem_limit), "arena_extend_strategy": arena,
                "cudnn_conv_algo_search": gpu.conv_algo_search.upper(), "do_copy_in_default_stream": "1"}
    if provider == ROCM:
        return {"device_id": str(gpu.device_id), "gpu_mem_limit": str(gpu.mem_limit), "arena_extend_strategy": arena,
                "miopen_conv_exhaustive_search": "1" if gpu.conv_algo_search == "exhaustive" else "0"}
    if provider in (MIGRAPHX, DML):
        return {"device_id": str(gpu.device_id)}
    return {}


@dataclass(frozen=True)
class ProviderChoice:
    """What every session of this daemon runs on, what was asked for, and why the GPU is not used (if so)."""

    providers: tuple[str, ...]
    device: str  # "gpu" or "cpu": where sessions are created
    threads: int
    requested: str = "auto"
    note: Optional[str] = None  # one sentence: why a GPU that was offered is not used
    gpu: GpuSettings = field(default_factory=GpuSettings)

    @property
    def provider(self) -> str:
        return self.providers[0]

    def session_providers(self) -> list[tuple[str, dict[str, str]]]:
        """The `providers` argument of an InferenceSession: each provider with its options."""
        return [(p, provider_options(p, self.gpu)) for p in self.providers]

    def on_cpu(self, note: str) -> "ProviderChoice":
        """This choice moved to the CPU, saying why."""
        return replace(self, providers=(CPU_PROVIDER,), device="cpu", note=note)


def device_of(provider: str) -> str:
    return "cpu" if provider == CPU_PROVIDER else "gpu"


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def candidates(device: str, available: Sequence[str], platform: str) -> tuple[str, ...]:
    """The GPU providers to try for `device` on `platform` (sys.platform), best first: those ONNX Runtime
    offers that are built for that platform; none for `cpu`."""
    if device not in DEVICES:
        raise BgmaskError(E.BAD_REQUEST, f"device must be one of {', '.join(DEVICES)}, got {device!r}.")
    if device == "cpu":
        return ()
    os_name = "linux" if platform.startswith("linux") else platform
    return tuple(p for p in GPU_PROVIDERS if p in available and os_name in BUILT_FOR[p])


def no_gpu_sentence(available: Sequence[str], platform: str) -> str:
    """Why `--device gpu` found no GPU provider at all, and what to install on this platform."""
    if platform == "darwin":
        how = "the CoreML provider is part of the standard onnxruntime wheel on macOS: pip install 'bgmask[cpu]'"
    elif platform == "win32":
        how = "install pip install 'bgmask[cuda]' for an NVIDIA GPU or pip install 'bgmask[directml]' for any other"
    else:
        how = ("install pip install 'bgmask[cuda]' for an NVIDIA GPU (AMD GPUs need an onnxruntime built with "
               "ROCm or MIGraphX, which is not on PyPI)")
    return (f"A GPU was required (--device gpu) but this ONNX Runtime offers none (available: {', '.join(available)}); "
            f"{how}, or use --device auto.")


_LIB_PIECES = (("cudnn", "cuDNN"), ("cublas", "cuBLAS"), ("cudart", "the CUDA runtime"), ("curand", "cuRAND"),
               ("cufft", "cuFFT"), ("nvrtc", "NVRTC"))


def explain_failure(provider: str, log_text: str, cuda_version: Optional[str] = None) -> str:
    """One sentence saying why `provider` did not start and what to install, read from what ONNX Runtime
    (and its preload_dlls()) printed while it tried. cuda_version: the CUDA the runtime was built with."""
    if provider != CUDA:
        name = {ROCM: "ROCm", MIGRAPHX: "MIGraphX", DML: "DirectML", COREML: "CoreML"}.get(provider, provider)
        detail = _last_error_line(log_text)
        return f"{name} ({provider}) could not start" + (f": {detail}" if detail else "") + "; the GPU driver may be missing or too old."
    need = re.search(r"Require cuDNN (\S+?) and CUDA (\S+?)[.]?\s", log_text)
    cuda_major = (need.group(2) if need else (cuda_version or "?")).split(".")[0]
    cudnn_major = need.group(1).split(".")[0] if need else "9"
    wanted = f"CUDA {cuda_major} and cuDNN {cudnn_major}"
    fix = f"install them with pip install 'bgmask[cuda]' (it brings {wanted} as Python wheels)"
    lower = log_text.lower()
    if "out of memory" in lower or "failed to allocate" in lower:
        return "CUDA could not start: the GPU is out of memory; close other GPU applications or lower --gpu-mem-limit."
    if "libcuda.so" in lower or "nvcuda.dll" in lower or "no cuda-capable device" in lower or "driver" in lower:
        return ("CUDA could not start: no usable NVIDIA driver or GPU was found (libcuda / nvcuda is the driver's "
                f"library); install an NVIDIA driver that supports CUDA {cuda_major}, or use --device cpu.")
    missing = re.findall(r"(lib\w+\.so(?:\.\d+)*|\w+64_\d+\.dll)", log_text)
    for lib in missing:
        for key, piece in _LIB_PIECES:
            if key in lib.lower():
                return f"CUDA could not start: {lib} ({piece}) is missing; onnxruntime-gpu needs {wanted}: {fix}."
    if need:
        return f"CUDA could not start: onnxruntime-gpu needs {wanted}, which were not found; {fix}."
    detail = _last_error_line(log_text)
    return "CUDA could not start" + (f" ({detail})" if detail else "") + f"; {fix}."


def _last_error_line(text: str) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else ""


_capture_lock = threading.Lock()


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Collect what native code writes to stdout/stderr (ONNX Runtime's C++ logger, preload_dlls' prints) while
    the block runs; the text is in the yielded list afterwards and is also passed on to the real stderr."""
    text: list[str] = []
    with _capture_lock, tempfile.TemporaryFile() as sink:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield text
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            raw = sink.read()
            text.append(raw.decode("utf-8", "replace"))
            os.write(2, raw)


def probe(ort: Any, provider: str, gpu: GpuSettings) -> Optional[str]:
    """None when a session with `provider` really runs on it; otherwise one sentence saying why not."""
    from bgmask.models import modelprep

    options = ort.SessionOptions()
    options.log_severity_level = 2  # keep ORT's "Failed to create ..." warning: it names what is missing
    options.enable_mem_pattern = False  # as in the daemon's sessions: DirectML refuses a session without these
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    with captured_output() as out:
        if provider == CUDA and hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()  # the CUDA/cuDNN wheels of bgmask[cuda], found in site-packages
            except Exception as exc:  # a broken nvidia package: the session below says what is missing
                print(f"preload_dlls: {exc}")
        try:
            session = ort.InferenceSession(modelprep.identity_model(), options,
                                           providers=[(provider, provider_options(provider, gpu)), CPU_PROVIDER])
            got = session.get_providers()
            session.run(None, {"x": np.zeros(1, dtype=np.float32)})
        except Exception as exc:
            print(f"{exc}")
            got = []
    if provider in got:
        return None
    return explain_failure(provider, "".join(out), cuda_build_version(ort))


def cuda_build_version(ort: Any) -> Optional[str]:
    """The CUDA version this onnxruntime-gpu was built with (e.g. "13.0"), if it says."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return None
    return getattr(info, "cuda_version", None) or None


def choose(device: str = "auto", threads: int = 0, gpu: GpuSettings = GpuSettings()) -> ProviderChoice:
    """`auto` takes the best GPU provider that really starts, else the CPU (with a note saying why); `gpu`
    without a working GPU is an error, never a silent CPU fallback. Threads default to the usable cores: one
    inference at a time uses all of them."""
    ort = load_runtime()
    available = ort.get_available_providers()
    tries = candidates(device, available, sys.platform)
    n = threads if threads > 0 else usable_cores()
    if device == "gpu" and not tries:
        raise BgmaskError(E.DEVICE_UNAVAILABLE, no_gpu_sentence(available, sys.platform))
    failures = []
    for provider in tries:
        why = probe(ort, provider, gpu)
        if why is None:
            return ProviderChoice((provider, CPU_PROVIDER), "gpu", n, device, None, gpu)
        failures.append(why)
    if failures and device == "gpu":
        raise BgmaskError(E.DEVICE_UNAVAILABLE, f"{failures[0]} (--device gpu never serves from the CPU; --device auto would.)")
    note = f"{failures[0]} Running on the CPU instead." if failures else None
    return ProviderChoice((CPU_PROVIDER,), "cpu", n, device, note, gpu)
