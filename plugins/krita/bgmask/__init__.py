"""bgmask for Krita: a Background Removal docker and a Layer > Remove Background action.

`bgmask install --krita` copies this package, plus plugins/common/bgmask_client.py into it, to
Krita's pykrita folder and enables it in kritarc.
"""

from .ui import register

register()
