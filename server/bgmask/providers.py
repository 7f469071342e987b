"""Choosing ONNX Runtime execution providers and threads for this machine."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnxruntime as ort

from bgmask import errors as E
from bgmask.errors import BgmaskError

# Best first. Only providers that run these models without extra set-up are listed.
GPU_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class ProviderChoice:
    """What every session of this daemon runs on."""

    providers: tuple[str, ...]
    device: str  # "gpu" or "cpu"
    threads: int

    @property
    def provider(self) -> str:
        return self.providers[0]


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def choose(device: str = "auto", threads: int = 0) -> ProviderChoice:
    """`auto` takes the best available GPU provider, else the CPU; `gpu` without a GPU is an error, never a
    silent CPU fallback. Threads default to the usable cores: one inference at a time uses all of them."""
    if device not in DEVICES:
        raise BgmaskError(E.BAD_REQUEST, f"device must be one of {', '.join(DEVICES)}, got {device!r}.")
    available = ort.get_available_providers()
    gpus = [p for p in GPU_PROVIDERS if p in available]
    n = threads if threads > 0 else usable_cores()
    if device == "gpu" and not gpus:
        raise BgmaskError(
            E.DEVICE_UNAVAILABLE,
            "A GPU was required (--device gpu) but ONNX Runtime offers none here "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device auto.",
        )
    if device != "cpu" and gpus:
        return ProviderChoice((gpus[0], CPU_PROVIDER), "gpu", n)
    return ProviderChoice((CPU_PROVIDER,), "cpu", n)
