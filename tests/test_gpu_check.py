"""bench/gpu_check.py, the parts that run without a GPU: the refusal without one, and its ratios."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import onnxruntime as ort
import pytest

from bgmask.models import providers
from conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_without_a_gpu_provider_the_check_stops_with_the_daemons_sentence() -> None:
    if any(p in ort.get_available_providers() for p in providers.GPU_PROVIDERS):
        pytest.skip("this onnxruntime offers a GPU provider")
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "gpu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "gpu_check: A GPU was required (--device gpu)" in r.stdout


def test_ratios_divide_by_the_interleaved_floor_and_by_floor_plus_transfer() -> None:
    speed = {"by_model": {"isnet-general-use": {
        "floor": {"floor": {"min_s": 9.0}},  # own sittings: used only without an interleaved floor
        "bgmask": {
            "24mp": {"floor": {"min_s": 0.1}, "peak_rss": 1 << 30,
                     "runs": {"pyzmq/refine": {"min_s": 0.3, "timings": {"total": 0.22}}}},
            "1mp": {"peak_rss": 1, "runs": {"pyzmq/refine": {"min_s": 18.0, "timings": None}}},
        }}}}
    r = gpu_check.ratios(speed)["isnet-general-use"]
    assert r["24mp"]["e2e/floor"] == pytest.approx(3.0)
    assert r["24mp"]["transfer_s"] == pytest.approx(0.08)
    assert r["24mp"]["e2e/(floor+transfer)"] == pytest.approx(0.3 / 0.18)
    assert r["1mp"]["e2e/floor"] == pytest.approx(2.0) and r["1mp"]["e2e/(floor+transfer)"] is None
