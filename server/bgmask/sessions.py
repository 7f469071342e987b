"""A warm ONNX Runtime session for one matting/segmentation model.

The catalog entry carries everything that differs between families (input size, mean/std, sigmoid,
tensor names), so one class serves U2-Net, IS-Net and imported models alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from bgmask import errors as E
from bgmask.catalog import ModelSpec
from bgmask.errors import BgmaskError
from bgmask.providers import ProviderChoice


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
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(choice.providers))
        except Exception as exc:  # a corrupt or incompatible file
            raise BgmaskError(E.MODEL_UNAVAILABLE, f"ONNX Runtime could not load model {spec.name!r} from {path}: {exc}") from None
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        self.input_name = spec.input_name or inputs[0].name
        self.output_name = spec.output_name or outputs[0].name
        self.provider = self.session.get_providers()[0]
        self.size = (int(spec.input_size[0]), int(spec.input_size[1]))
        self._mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        self._inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).reshape(3, 1, 1)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """(3, h, w) sRGB in [0, 1] at the model size -> the normalised NCHW input tensor."""
        x = (rgb - self._mean) * self._inv_std
        return np.ascontiguousarray(x[np.newaxis], dtype=np.float32)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model; returns the raw first (or named) output as float32 (h, w)."""
        try:
            out = self.session.run([self.output_name], {self.input_name: tensor})[0]
        except Exception as exc:
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
