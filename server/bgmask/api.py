"""`bgmask.remove()`: the daemon's masks for scripts and notebooks, in the kind of image they already hold.

    import bgmask
    cutout = bgmask.remove(Image.open("photo.jpg"))          # PIL in, RGBA PIL out
    mask = bgmask.remove(array, mask_only=True)             # numpy in, numpy (H, W) out, same dtype
    png = bgmask.remove(Path("photo.jpg").read_bytes())     # file bytes in, PNG bytes out
    masks = bgmask.remove(frames, mask_only=True)            # a list of frames in, a list out (one sequence)

It goes through the same daemon as the CLI and the plugins (started on first use if none is running)."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from bgmask.files import cutouts, reading, writing
from bgmask.client import removal
from bgmask.daemon import runtime
from bgmask.client.loader import load_client
from bgmask.errors import BgmaskError as _ServerError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ImageLike = Union["PILImage", np.ndarray, bytes, str, Path]
Result = Union["PILImage", np.ndarray, bytes]

_shared: Any = None
_shared_lock = threading.Lock()


def _default_client() -> Any:
    global _shared
    with _shared_lock:
        if _shared is None:
            runtime.record_daemon_command()  # so that the client can start this Python's daemon, as the CLI does
            _shared = load_client().Client(timeout=60.0)
        return _shared


def remove(image: Union[ImageLike, Sequence[ImageLike]], *, mask_only: bool = False, model: Optional[str] = None, bg: Optional[str] = None,
           depth: Optional[int] = None, refine: bool = True, hardness: Optional[float] = None,
           shift_edge: Optional[float] = None, feather: Optional[float] = None, fill_holes: Optional[float] = None,
           remove_specks: Optional[float] = None, decontaminate: bool = False, quality: Optional[str] = None,
           temporal: bool = True, client: Any = None) -> Union[Result, list[Result]]:
    """The cut-out (original samples, the mask as straight alpha; flattened onto `bg` if given) or, with
    `mask_only`, the soft mask of `image`, in the kind given:

    - PIL image -> PIL image: RGBA (LA for gray; RGB with `bg`), 8 bits; the mask "L", or "I;16" with depth=16
    - numpy array (H, W) or (H, W, C), uint8/uint16/float32 -> array of the same dtype: (H, W, C+1) cut-out
      ((H, W, 3) with `bg`) or (H, W) mask; float results are in [0, 1] with 16-bit steps
    - bytes of an image file -> PNG bytes (16-bit files stay 16-bit)
    - a path (str or Path) -> PIL image, as for a PIL image
    - a list of frames (of one size and layout) -> a list of results: one sequence through the daemon, whose
      masks stay consistent from frame to frame where the picture did not change (`temporal`; False gives
      each frame its own mask)

    The options are the protocol's (docs/protocol.md); `client` is a `bgmask.Client` to use instead of the
    shared one. Every failure raises `bgmask.BgmaskError` with `.code` (the daemon's error code) and `.message`."""
    error = load_client().BgmaskError
    settings = removal.Settings(model=model, mask_only=mask_only, depth=depth)
    options = {"hardness": hardness, "shift_edge": shift_edge, "feather": feather, "fill_holes": fill_holes,
               "remove_specks": remove_specks, "quality": quality}
    settings.options = {k: v for k, v in options.items() if v is not None}
    if not refine:
        settings.options["refine"] = False
    if decontaminate:
        settings.options["decontaminate"] = True
    try:
        if bg is not None:
            settings.bg = cutouts.parse_colour(bg)
        if isinstance(image, (list, tuple)):
            if not image:
                raise _ServerError("bad_image", "bgmask.remove got an empty list of frames")
            frames = [_load(frame) for frame in image]
            loaded, kind = frames[0]
            results = removal.remove_frames(client or _default_client(), [f for f, _ in frames], settings,
                                            _depth(loaded, kind, settings), temporal=temporal)
            return [_as_kind(result, k, f.pixels.dtype) for result, (f, k) in zip(results, frames)]
        loaded, kind = _load(image)
        result = removal.remove(client or _default_client(), loaded, settings, _depth(loaded, kind, settings))
    except _ServerError as exc:
        raise error(exc.code, exc.message) from None
    return _as_kind(result, kind, loaded.pixels.dtype)


def _depth(loaded: reading.LoadedImage, kind: str, settings: removal.Settings) -> int:
    """The result's bits per sample: an array's own, a file's (or --depth), 8 for PIL (16 for a 16-bit mask)."""
    if kind == "array":
        return 8 if loaded.pixels.dtype == np.uint8 else 16
    if kind == "bytes":
        return removal.result_depth(loaded, settings)
    return 16 if (settings.mask_only and settings.depth == 16) else 8


def _load(image: ImageLike) -> tuple[reading.LoadedImage, str]:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return reading.load(bytes(image)), "bytes"
    if isinstance(image, (str, Path)):
        return reading.load(Path(image)), "pil"
    if isinstance(image, np.ndarray):
        return reading.LoadedImage(_array_pixels(image)), "array"
    if hasattr(image, "mode") and hasattr(image, "tobytes"):
        buffer = io.BytesIO()  # through a lossless file: the same decoding (EXIF, palettes, 16-bit) as for files
        image.save(buffer, "TIFF" if image.mode in ("I;16", "I;16L", "I;16B", "I", "F") else "PNG")
        return reading.load(buffer.getvalue()), "pil"
    raise _ServerError("bad_image", f"bgmask.remove takes a PIL image, a numpy array, file bytes or a path, not "
                                    f"{type(image).__name__}")


def _array_pixels(array: np.ndarray) -> np.ndarray:
    pixels = array[..., None] if array.ndim == 2 else array
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise _ServerError("bad_image", f"an array of shape {array.shape} is not an image; give (H, W) or (H, W, C) "
                                        "with C = 1 .. 4")
    if pixels.dtype == np.float64:
        pixels = pixels.astype(np.float32)
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        raise _ServerError("bad_image", f"arrays of {pixels.dtype} are not images; give uint8, uint16 or float32")
    return np.ascontiguousarray(pixels)


def _as_kind(result: np.ndarray, kind: str, dtype: np.dtype) -> Result:
    if kind == "array":
        return (result.astype(np.float32) / 65535.0) if dtype == np.float32 else result
    if kind == "bytes":
        buffer = io.BytesIO()
        writing.write(buffer, "PNG", result)
        return buffer.getvalue()
    from PIL import Image

    return Image.fromarray(result)  # (H, W) uint8 "L" or uint16 "I;16", (H, W, 2/3/4) uint8 "LA"/"RGB"/"RGBA"
