"""Absurd but well-typed sizes get a clear error naming the limit, never `internal` or a swapping machine."""

from __future__ import annotations

import pytest

import client_suite
from bgmask import errors as E
from bgmask import protocol
from bgmask.errors import BgmaskError
from conftest import start_daemon


@pytest.mark.parametrize("stride", [2**63, 2**64 - 1, (2 << 30) + 1])
def test_a_stride_beyond_any_message_is_too_large(stride: int) -> None:
    image = {"width": 4, "height": 1, "channels": 3, "sample_type": "u8", "stride": stride}
    with pytest.raises(BgmaskError) as err:
        protocol.parse_image(image, max_pixels=1000, max_bytes=2 << 30)
    assert err.value.code == E.TOO_LARGE and "stride" in err.value.message and "2,147,483,648" in err.value.message


def test_a_request_over_the_memory_budget_is_too_large_and_says_the_limit(isolated_dirs: dict) -> None:
    bc = client_suite.load_client()
    d = start_daemon(isolated_dirs, "--default-model", "u2netp", "--preload-delay", "-1", "--request-memory", "0.05")
    try:
        client = bc.Client(endpoint=d.endpoint, token=d.token, timeout=60, autostart=False)
        with pytest.raises(bc.BgmaskError) as err:
            client.remove(bytes(1000 * 1000 * 3), 1000, 1000, 3, "u8")  # ~60 MB of working memory
        assert err.value.code == "too_large"
        assert "1000x1000 image needs about 60 MiB" in err.value.message
        assert "allows 51 MiB per request (bgmask serve --request-memory)" in err.value.message
        assert len(client.remove(bytes(300 * 200 * 3), 300, 200, 3, "u8")) == 300 * 200  # within the budget
        client.close()
    finally:
        d.stop()


def test_a_negative_request_memory_is_refused_at_start(isolated_dirs: dict) -> None:
    import subprocess
    import sys

    from conftest import base_env

    r = subprocess.run([sys.executable, "-m", "bgmask", "serve", "--request-memory", "-1"], env=base_env(isolated_dirs),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--request-memory must be 0" in r.stderr and "got -1.0" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_local_runtime_dir_code_is_not_a_wire_code() -> None:
    assert E.UNSAFE_RUNTIME_DIR not in E.ERROR_CODES  # a reply never carries it (docs/protocol.md, Errors)
    assert BgmaskError(E.UNSAFE_RUNTIME_DIR, "x").code == E.UNSAFE_RUNTIME_DIR  # still raised locally
