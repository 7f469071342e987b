"""A warm ONNX Runtime session for one matting/segmentation model.

The catalog entry carries everything that differs between families (input size, mean/std, sigmoid,
tensor names), so one class serves U2-Net, IS-Net and imported models alike."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort

from bgmask import errors as E
from bgmask.models import modelprep
from bgmask.models.catalog import ModelSpec
from bgmask.errors import BgmaskError
from bgmask.models.providers import CPU_PROVIDER, ProviderChoice


_arena_lock = threading.Lock()
_releaser: Optional[ort.InferenceSession] = None


def use_shared_arena(options: ort.SessionOptions) -> None:
    """Make a session allocate its CPU memory from one arena shared by every session of this process (created
    on first use): the activations of whichever model ran last can then be given back by release_arena()."""
    global _releaser
    with _arena_lock:
        if _releaser is None:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's default arena
            plain = ort.SessionOptions()
            plain.log_severity_level = 3
            plain.add_session_config_entry("session.use_env_allocators", "1")
            _releaser = ort.InferenceSession(modelprep.identity_model(), plain, providers=["CPUExecutionProvider"])
    options.add_session_config_entry("session.use_env_allocators", "1")


def release_arena() -> None:
    """Hand the shared CPU arena's free memory back to the system. ONNX Runtime shrinks an arena only at the
    end of a run that asks for it, so a one-node model runs with that request (well under a millisecond of
    work); the next inference pays the page faults of its activations again (~6 % of an IS-Net run here),
    which is why the daemon calls this only once it has been idle for a while."""
    with _arena_lock:
        if _releaser is None:
            return
        shrink = ort.RunOptions()
        shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        _releaser.run(None, {"x": np.zeros(1, dtype=np.float32)}, shrink)


class MattingSession:
    """Loads one model file and turns a model-sized RGB image into a soft prediction in [0, 1]."""

    def __init__(self, spec: ModelSpec, path: Path, choice: ProviderChoice) -> None:
        self.spec = spec
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = choice.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Measured in bench/speed.py --experiments: pool threads that spin between operators take the cores
        # from the daemon's own threads (transfer, refinement) and buy nothing here; without the memory
        # pattern (one block sized for every activation at once) the run's peak is ~30 % lower, at the
        # same speed.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_mem_pattern = False
        use_shared_arena(options)
        try:
            # GPU providers get their options (bounded arena, cuDNN search) and run the file as it is: an fp16
            # model (fp32 input and output, as both catalog fp16 files have) stays fp16 there.
            self.session = ort.InferenceSession(str(path), options, providers=choice.session_providers())
        except Exception as exc:  # a corrupt or incompatible file, or a GPU out of memory
            raise BgmaskError(E.MODEL_UNAVAILABLE, f"ONNX Runtime could not load model {spec.name!r} from {path}: {exc}") from None
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        self.input_name = spec.input_name or inputs[0].name
        self.output_name = spec.output_name or outputs[0].name
        # What the session really runs on (ONNX Runtime drops a provider that cannot start without an error).
        self.provider = self.session.get_providers()[0]
        self.size = (int(spec.input_size[0]), int(spec.input_size[1]))
        self._mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        self._inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).reshape(3, 1, 1)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """(3, h, w) sRGB in [0, 1] at the model size -> the normalised NCHW input tensor."""
        x = rgb - self._mean
        x *= self._inv_std
        return np.ascontiguousarray(x[np.newaxis], dtype=np.float32)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model; returns the raw first (or named) output as float32 (h, w)."""
        try:
            out = self.session.run([self.output_name], {self.input_name: tensor})[0]
        except Exception as exc:
            if self.provider != CPU_PROVIDER and "out of memory" in str(exc).lower():
                raise BgmaskError(E.DEVICE_UNAVAILABLE, f"The GPU ran out of memory running model {self.spec.name!r} "
                                  "(other applications hold it, or --gpu-mem-limit is too low).") from None
            raise BgmaskError(E.INFERENCE_FAILED, f"Model {self.spec.name!r} failed on this image: {exc}") from None
        out = np.asarray(out, dtype=np.float32)
        return out.reshape(out.shape[-2], out.shape[-1])

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        """Optional sigmoid, then min-max normalisation to [0, 1], kept in float."""
        pred = raw
        if self.spec.sigmoid:
            pred = 1.0 / (1.0 + np.exp(-pred))
        lo, hi = float(np.nanmin(pred)), float(np.nanmax(pred))
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise BgmaskError(E.INFERENCE_FAILED, f"Model {self.spec.name!r} produced non-finite values for this image.")
        if hi - lo < 1e-6:
            return np.full(pred.shape, 0.0 if hi < 0.5 else 1.0, dtype=np.float32)
        return ((pred - lo) * np.float32(1.0 / (hi - lo))).astype(np.float32)
