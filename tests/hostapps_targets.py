"""The real host applications the plug-ins are tested in, and the chroots that hold them.

Three Debian chroots (tests/hostapps/setup-chroot.sh) give five applications:

    trixie                   GIMP 3.0, Krita 5.2 (PyQt5)
    sid                      GIMP 3.2, Krita 5.3 (PyQt5)
    sid-krita-experimental   Krita 6 (Qt 6, PyQt6)   (its GIMP 3.2 is sid's again: not tested twice)

Each application gets the same real-app tests. What costs is a launch, not a case (the in-app scripts run
every case in one launch), so each version runs every case with its Python's pyzmq; the launches without
pyzmq (the client's own transport, the same code whatever the version) run every case on the first GIMP
and a core subset elsewhere. The exact version of each application is read from the chroot's dpkg
database and shown in the test ids (`gimp-3.2.6`); pytest's summary lists each launch and its time.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HOSTAPPS = Path(__file__).resolve().parent / "hostapps"
CANNOT_BUILD = {77, 78}  # setup-chroot.sh: not root / no network


@dataclass(frozen=True)
class Target:
    """One host application in one chroot."""

    app: str          # "gimp" or "krita"; also the Debian package
    series: str       # the version it stands for: "3.0", "5.3", "6"
    suite: str        # HOSTAPPS_SUITE
    krita_from: str = ""  # HOSTAPPS_KRITA_FROM

    @property
    def root(self) -> Path:
        name = self.suite + (f"-krita-{self.krita_from}" if self.krita_from else "")
        return Path("/var/tmp/hostapps") / name

    @property
    def env(self) -> dict[str, str]:
        """What the hostapps scripts need to find (or build) this chroot."""
        return {"HOSTAPPS_SUITE": self.suite, "HOSTAPPS_KRITA_FROM": self.krita_from,
                "HOSTAPPS_ROOT": str(self.root)}

    def installed_version(self) -> Optional[str]:
        """The application's Debian version in the chroot ("3.2.6-1", "1:5.3.4.1+dfsg-1"), if built."""
        try:
            status = (self.root / "var/lib/dpkg/status").read_text(errors="replace")
        except OSError:
            return None
        match = re.search(rf"^Package: {self.app}\n(?:.+\n)*?Version: (\S+)", status, re.M)
        return match.group(1) if match else None

    @property
    def id(self) -> str:
        """`gimp-3.2.6` once the chroot is built (the upstream version), else `gimp-3.2`."""
        version = self.installed_version()
        if version is None:
            return f"{self.app}-{self.series}"
        return f"{self.app}-{version.split(':')[-1].split('+')[0].split('-')[0]}"

    def problem(self) -> Optional[str]:
        """None when the chroot is ready (building it if $CI is set), else why its tests must be skipped."""
        if not (self.root / ".hostapps-ready").exists() and not os.environ.get("CI"):
            return (f"no hostapps chroot at {self.root}: build it with `sudo env HOSTAPPS_SUITE={self.suite} "
                    f"HOSTAPPS_KRITA_FROM={self.krita_from} bash tests/hostapps/setup-chroot.sh` "
                    "(or set CI=1 to let the tests build it)")
        proc = subprocess.run(["bash", str(HOSTAPPS / "setup-chroot.sh")], capture_output=True, text=True,
                              timeout=1800, env=dict(os.environ, **self.env))
        if proc.returncode in CANNOT_BUILD:
            return (proc.stderr.strip().splitlines() or ["setup-chroot.sh gave no reason"])[-1]
        if proc.returncode != 0:
            raise RuntimeError(f"setup-chroot.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return None


TRIXIE, SID = Target("gimp", "3.0", "trixie"), Target("gimp", "3.2", "sid")
GIMPS = [TRIXIE, SID]
KRITAS = [Target("krita", "5.2", "trixie"), Target("krita", "5.3", "sid"),
          Target("krita", "6", "sid", "experimental")]

# (application and exact version, launch, seconds): printed in pytest's summary (conftest.py)
LAUNCHES: list[tuple[str, str, float]] = []


def record_launch(target: Target, what: str, seconds: float) -> None:
    """Note how long one launch of a real application took, for the summary."""
    LAUNCHES.append((f"{target.app} {target.installed_version()} ({target.root.name})", what, seconds))
