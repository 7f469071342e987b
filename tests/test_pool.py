"""Warm sessions: sharing, memory budget, idle unloading, and the provider choice."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

from bgmask.models import providers
from bgmask.errors import BgmaskError
from bgmask.models.pool import SessionPool
from conftest import base_env


@pytest.fixture
def cache_env(monkeypatch: pytest.MonkeyPatch, isolated_dirs: dict) -> dict:
    for key, value in isolated_dirs.items():
        monkeypatch.setenv(key, value)
    return isolated_dirs


def test_concurrent_first_use_loads_once_and_shares_the_session(cache_env: dict) -> None:
    pool = SessionPool(providers.choose("cpu"), memory_budget=1 << 40, idle_unload_s=0)
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(pool.get("u2netp"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 3 and got[0] is got[1] is got[2]
    assert pool.loaded() == ["u2netp"]


def test_least_recently_used_session_is_dropped_past_the_budget(cache_env: dict) -> None:
    pool = SessionPool(providers.choose("cpu"), memory_budget=1, idle_unload_s=0)
    first = pool.get("u2netp")
    pool.get("isnet-general-use")
    assert pool.loaded() == ["isnet-general-use"], "u2netp was least recently used and over budget"
    assert pool.get("u2netp") is not first, "reloaded after eviction"


def test_idle_sessions_are_unloaded(cache_env: dict) -> None:
    pool = SessionPool(providers.choose("cpu"), memory_budget=1 << 40, idle_unload_s=0.2)
    pool.get("u2netp")
    assert pool.drop_idle() == []
    time.sleep(0.3)
    assert pool.drop_idle() == ["u2netp"] and pool.loaded() == []


def test_prediction_is_soft_and_normalised(cache_env: dict) -> None:
    session = SessionPool(providers.choose("cpu"), 1 << 40, 0).get("u2netp")
    rng = np.random.default_rng(0)
    pred = session.postprocess(session.infer(session.prepare(rng.random((3, 320, 320), dtype=np.float32))))
    assert pred.dtype == np.float32 and pred.shape == (320, 320)
    assert pred.min() == 0.0 and pred.max() == pytest.approx(1.0)


def test_forced_gpu_without_one_is_an_error_never_a_cpu_fallback() -> None:
    if any(p in ort.get_available_providers() for p in providers.GPU_PROVIDERS):
        pytest.skip("this machine has a GPU provider")
    with pytest.raises(BgmaskError) as err:
        providers.choose("gpu")
    assert err.value.code == "device_unavailable" and "GPU" in err.value.message
    assert providers.choose("auto").device == "cpu"


def test_serve_with_a_missing_gpu_exits_with_the_reason(isolated_dirs: dict) -> None:
    if any(p in ort.get_available_providers() for p in providers.GPU_PROVIDERS):
        pytest.skip("this machine has a GPU provider")
    r = subprocess.run([sys.executable, "-m", "bgmask", "serve", "--device", "gpu"], env=base_env(isolated_dirs),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "GPU" in r.stderr


def test_serve_refuses_a_non_loopback_host_without_the_flag(isolated_dirs: dict) -> None:
    r = subprocess.run([sys.executable, "-m", "bgmask", "serve", "--host", "0.0.0.0"], env=base_env(isolated_dirs),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--allow-remote" in r.stderr
