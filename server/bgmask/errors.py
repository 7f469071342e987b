"""One exception type for every failure a user can see, with the protocol's stable error codes."""

from __future__ import annotations

BAD_REQUEST = "bad_request"
UNSUPPORTED_VERSION = "unsupported_version"
UNAUTHORIZED = "unauthorized"
UNKNOWN_OP = "unknown_op"
UNKNOWN_MODEL = "unknown_model"
BAD_IMAGE = "bad_image"
TOO_LARGE = "too_large"
BUSY = "busy"
CANCELLED = "cancelled"
MODEL_UNAVAILABLE = "model_unavailable"
DEVICE_UNAVAILABLE = "device_unavailable"
INFERENCE_FAILED = "inference_failed"
SHUTTING_DOWN = "shutting_down"
INTERNAL = "internal"
UNSAFE_RUNTIME_DIR = "unsafe_runtime_dir"  # local only (daemon start, clients): never sent on the wire

ERROR_CODES = frozenset({
    BAD_REQUEST, UNSUPPORTED_VERSION, UNAUTHORIZED, UNKNOWN_OP, UNKNOWN_MODEL, BAD_IMAGE, TOO_LARGE,
    BUSY, CANCELLED, MODEL_UNAVAILABLE, DEVICE_UNAVAILABLE, INFERENCE_FAILED, SHUTTING_DOWN, INTERNAL,
})  # the codes a reply may carry (docs/protocol.md, Errors)
LOCAL_CODES = frozenset({UNSAFE_RUNTIME_DIR})  # raised here, never sent on the wire


class BgmaskError(Exception):
    """A failure with a stable protocol code and a sentence meant for the user."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES or code in LOCAL_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"
