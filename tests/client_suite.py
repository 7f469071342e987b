"""Behaviour checks of plugins/common/bgmask_client.py against a real daemon.

tests/test_client.py runs every check twice: in-process, where pyzmq and msgpack import (transport "auto"
picks pyzmq), and as `python -I tests/client_suite.py CHECK` in a subprocess whose import hook makes zmq
and msgpack unimportable, as in GIMP's and Krita's Pythons (transport "auto" falls back to the built-in
ZMTP and msgpack code). The client finds the daemon through BGMASK_ENDPOINT / BGMASK_TOKEN; the daemon's
pid comes in BGMASK_TEST_DAEMON_PID. Images are decoded here with Pillow, never by the client.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLIENT_FILE = REPO / "plugins" / "common" / "bgmask_client.py"
ASTRONAUT = REPO / "examples" / "astronaut.jpg"
MODEL = "u2netp"
STAGES = {"queued", "downloading", "loading", "inferring", "refining"}
MASK_DTYPES = {"u8": np.dtype(np.uint8), "u16": np.dtype("<u2"), "f32": np.dtype("<f4")}

CHECKS: Dict[str, Callable[[ModuleType], None]] = {}


def check(fn: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
    CHECKS[fn.__name__] = fn
    return fn


def load_client() -> ModuleType:
    """A fresh import of the shipped client file, the way the plugins load it."""
    spec = importlib.util.spec_from_file_location("bgmask_client", CLIENT_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo(size: Tuple[int, int] = (0, 0), mode: str = "RGBA") -> Tuple[np.ndarray, int, int]:
    """examples/astronaut.jpg as an (H, W, C) uint8 array, optionally resized."""
    from PIL import Image

    img = Image.open(ASTRONAUT).convert(mode)
    if size != (0, 0):
        img = img.resize(size, Image.Resampling.BILINEAR)
    arr = np.asarray(img)
    return arr.reshape(img.height, img.width, -1), img.width, img.height


def mask_array(mask: bytes, width: int, height: int, sample_type: str = "u8") -> np.ndarray:
    return np.frombuffer(mask, MASK_DTYPES[sample_type]).reshape(height, width)


def expect_error(bc: ModuleType, code: str, fn: Callable[[], Any]) -> Any:
    """Run fn and return the BgmaskError it must raise with `code`."""
    try:
        fn()
    except bc.BgmaskError as exc:
        assert exc.code == code, "expected %s, got %s: %s" % (code, exc.code, exc.message)
        assert exc.message, "an error without a message for the user"
        return exc
    raise AssertionError("expected BgmaskError %s, nothing was raised" % code)


@check
def hello_reports_the_daemons_limits(bc: ModuleType) -> None:
    hello = bc.Client().hello()
    assert hello["protocol"] == 2
    assert {"remove", "cancel", "progress"} <= set(hello["capabilities"])
    assert hello["max_message_bytes"] >= 1 << 20 and hello["max_pixels"] > 0
    assert hello["default_model"] == MODEL
    assert not {"v", "id", "type"} & set(hello), "the envelope belongs to the client, not to the caller"


@check
def status_and_models_describe_the_running_daemon(bc: ModuleType) -> None:
    client = bc.Client()
    status = client.status()
    assert status["pid"] == int(os.environ["BGMASK_TEST_DAEMON_PID"])
    assert status["endpoint"] == os.environ["BGMASK_ENDPOINT"]
    models = {m["name"]: m for m in client.models()}
    assert {"u2netp", "isnet-general-use"} <= set(models)
    assert models[MODEL]["default"] is True
    assert all(m["state"] in ("not_downloaded", "downloaded", "loading", "loaded") for m in models.values())


@check
def mask_sizes_and_ranges_for_every_output_type(bc: ModuleType) -> None:
    arr, w, h = photo((97, 61), "RGB")  # odd sizes: no row padding may creep into the mask
    client = bc.Client()
    masks = {}
    for out in ("u8", "u16", "f32"):
        mask = client.remove(arr.tobytes(), w, h, 3, "u8", model=MODEL, out_sample_type=out)
        assert isinstance(mask, bytes)
        assert len(mask) == w * h * MASK_DTYPES[out].itemsize, (out, len(mask))
        masks[out] = mask_array(mask, w, h, out).astype(np.float64)
    assert np.isfinite(masks["f32"]).all() and masks["f32"].min() >= 0.0 and masks["f32"].max() <= 1.0
    assert masks["u8"].max() - masks["u8"].min() > 100, "a photo of a person gives a mask with contrast"
    assert np.abs(masks["u16"] / 65535 - masks["u8"] / 255).max() <= 1 / 255
    assert np.abs(masks["f32"] - masks["u8"] / 255).max() <= 1 / 255


@check
def photo_mask_is_high_on_the_subject_and_low_on_the_background(bc: ModuleType) -> None:
    arr, w, h = photo()
    a = mask_array(bc.Client().remove(arr.tobytes(), w, h, 4, "u8", model=MODEL), w, h) / 255.0
    q = h // 8
    assert a[3 * h // 8:5 * h // 8, 3 * w // 8:5 * w // 8].mean() > 0.7  # her face and suit
    # The portrait is cut at the waist: the bottom corners are the subject, the top corners the background.
    assert a[:q, :q].mean() < 0.1 and a[:q, -q:].mean() < 0.1


@check
def buffer_types_strides_and_sample_types_give_the_same_mask(bc: ModuleType) -> None:
    arr, w, h = photo((160, 160))
    client = bc.Client()
    reference = mask_array(client.remove(arr.tobytes(), w, h, 4, "u8", model=MODEL), w, h)
    row = w * 4
    padded = np.zeros((h, row + 12), np.uint8)
    padded[:, :row] = arr.reshape(h, row)
    variants = {
        "bytearray": (bytearray(arr.tobytes()), {}),
        "memoryview": (memoryview(arr), {}),  # a 3-D uint8 view: the client flattens it without copying
        "stride": (padded.tobytes(), {"stride": row + 12}),
        "stride, short last row": (padded.tobytes()[:-12], {"stride": row + 12}),
    }
    for name, (pixels, extra) in variants.items():
        mask = mask_array(client.remove(pixels, w, h, 4, "u8", model=MODEL, **extra), w, h)
        assert np.array_equal(mask, reference), name
    wide = arr.astype("<u2") * 257
    mask16 = mask_array(client.remove(wide.tobytes(), w, h, 4, "u16", model=MODEL), w, h)
    diff = np.abs(mask16.astype(int) - reference.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 32, (diff.mean(), diff.max())


@check
def fully_transparent_pixels_get_a_zero_mask(bc: ModuleType) -> None:
    arr, w, h = photo((128, 128))
    arr = arr.copy()
    arr[:, : w // 3, 3] = 0
    a = mask_array(bc.Client().remove(arr.tobytes(), w, h, 4, "u8", model=MODEL), w, h)
    assert a[:, : w // 3].max() == 0
    assert a[:, w // 3:].max() > 200


@check
def bad_sizes_fail_locally_in_the_daemons_words(bc: ModuleType) -> None:
    arr, w, h = photo((64, 48))
    data = arr.tobytes()
    client = bc.Client()
    local = expect_error(bc, "bad_image", lambda: client.remove(data[:-1], w, h, 4, "u8", model=MODEL))
    nowhere = bc.Client(endpoint="tcp://127.0.0.1:1", token="t", autostart=False)  # checked before connecting
    assert expect_error(bc, "bad_image", lambda: nowhere.remove(data[:-1], w, h, 4, "u8")).message == local.message
    # The same request sent past the local check: the daemon must say exactly the same.
    image = {"width": w, "height": h, "channels": 4, "sample_type": "u8", "linear": False}
    remote = expect_error(bc, "bad_image", lambda: client._call(
        "remove", {"image": image, "model": MODEL}, [memoryview(data[:-1])]))
    assert local.message == remote.message
    expect_error(bc, "bad_image", lambda: client.remove(data, w, h, 4, "u8", stride=w * 4 - 1))
    expect_error(bc, "bad_image", lambda: client.remove(data, w, h, 5, "u8"))
    expect_error(bc, "bad_image", lambda: client.remove(data, w, h, 4, "u12"))
    expect_error(bc, "bad_image", lambda: client.remove(data, 0, h, 4, "u8"))
    # The client stays usable after errors raised before anything was sent.
    assert len(client.remove(data, w, h, 4, "u8", model=MODEL)) == w * h


@check
def daemon_errors_arrive_with_their_codes(bc: ModuleType) -> None:
    arr, w, h = photo((64, 48))
    client = bc.Client()
    err = expect_error(bc, "unknown_model", lambda: client.remove(arr.tobytes(), w, h, 4, "u8", model="no-such-model"))
    assert "no-such-model" in err.message
    expect_error(bc, "bad_request", lambda: client.remove(arr.tobytes(), w, h, 4, "u8", out_sample_type="u12"))
    expect_error(bc, "unauthorized", lambda: bc.Client(token="x" * 43).hello())
    assert isinstance(err, Exception) and str(err).endswith("[unknown_model]")


@check
def progress_reports_known_stages(bc: ModuleType) -> None:
    arr, w, h = photo((200, 200))
    seen: List[Tuple[str, Any]] = []
    bc.Client().remove(arr.tobytes(), w, h, 4, "u8", model=MODEL, on_progress=lambda s, f: seen.append((s, f)))
    stages = [s for s, _ in seen]
    assert stages and stages[0] == "queued"
    assert set(stages) <= STAGES and "inferring" in stages, stages
    assert all(f is None or 0.0 <= f <= 1.0 for _, f in seen)


@check
def remove_full_returns_the_reply_header(bc: ModuleType) -> None:
    arr, w, h = photo((80, 60))
    result = bc.Client().remove_full(arr.tobytes(), w, h, 4, "u8", model=MODEL, options={"refine": False})
    assert result.header["mask"] == {"width": w, "height": h, "sample_type": "u8"}
    assert result.header["model"] == MODEL and result.header["timings"]["total"] > 0
    assert len(result.mask) == w * h and result.extra == []


@check
def cancel_callable_cancels_and_the_client_carries_on(bc: ModuleType) -> None:
    arr, w, h = photo((256, 256))
    client = bc.Client()
    expect_error(bc, "cancelled", lambda: client.remove(arr.tobytes(), w, h, 4, "u8", model=MODEL, cancel=lambda: True))
    # Late messages about the cancelled request must not be taken for the next one's answer.
    result = client.remove_full(arr[:100, :100].tobytes(), 100, 100, 4, "u8", model=MODEL)
    assert result.header["mask"]["width"] == 100 and len(result.mask) == 100 * 100


@check
def cancel_from_another_thread(bc: ModuleType) -> None:
    arr, w, h = photo((1024, 1024))
    client = bc.Client()
    started = threading.Event()
    canceller = threading.Thread(target=lambda: started.wait(60) and client.cancel())
    canceller.start()
    try:
        expect_error(bc, "cancelled", lambda: client.remove(arr.tobytes(), w, h, 4, "u8", model=MODEL,
                                                             on_progress=lambda s, f: started.set()))
    finally:
        canceller.join()
    assert client.hello()["protocol"] == 2


@check
def one_client_per_thread_runs_concurrently(bc: ModuleType) -> None:
    arr, w, h = photo((120, 90))
    results: Dict[int, bytes] = {}

    def work(n: int) -> None:
        results[n] = bc.Client().remove(arr.tobytes(), w, h, 4, "u8", model=MODEL)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results.values())) == 1 and len(results[0]) == w * h


@check
def pull_reports_the_model_file(bc: ModuleType) -> None:
    reply = bc.Client().pull(MODEL, on_progress=lambda s, f: None)
    assert reply["model"] == MODEL and reply["path"].endswith(".onnx") and reply["size"] > 1_000_000


class _BlockOptionalDeps(importlib.abc.MetaPathFinder):
    """Makes pyzmq and msgpack unimportable, like in the editors' bundled Pythons."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in ("zmq", "msgpack"):
            raise ModuleNotFoundError("No module named %r (blocked by the test)" % name, name=name)
        return None


def main(names: List[str]) -> int:
    sys.meta_path.insert(0, _BlockOptionalDeps())
    bc = load_client()
    assert not bc.HAVE_PYZMQ and bc.Client().transport == "builtin"
    for name in names:
        CHECKS[name](bc)
    assert "zmq" not in sys.modules and "msgpack" not in sys.modules
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
