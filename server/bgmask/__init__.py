"""bgmask: a local daemon that turns a layer into a soft, full-resolution background mask."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 2
