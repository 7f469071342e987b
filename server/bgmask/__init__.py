"""bgmask: a local daemon that turns a layer into a soft, full-resolution background mask.

For scripts: `bgmask.remove(image, **options)` (see bgmask.api), `bgmask.Client` for streaming use and
`bgmask.BgmaskError`. They load on first use, so `import bgmask` stays cheap for the daemon and the CLI."""

from typing import Any

__version__ = "0.1.0"
PROTOCOL_VERSION = 2
__all__ = ["remove", "Client", "BgmaskError", "RemoveResult", "__version__", "PROTOCOL_VERSION"]


def __getattr__(name: str) -> Any:
    if name == "remove":
        from bgmask.api import remove

        return remove
    if name in ("Client", "BgmaskError", "RemoveResult"):
        from bgmask.client.loader import load_client

        return getattr(load_client(), name)
    raise AttributeError(f"module 'bgmask' has no attribute {name!r}")
