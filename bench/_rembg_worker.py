"""Runs inside bench/.venv-rembg: rembg's warm `remove(..., only_mask=True)` on one image, one process per size
so that VmHWM is the peak of that size alone. Prints one JSON line. Not imported by bgmask."""

from __future__ import annotations

import json
import sys
import time


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    args = json.loads(sys.argv[1])
    from PIL import Image
    from rembg import new_session, remove

    img = Image.open(args["image"])
    img.load()
    t = time.perf_counter()
    session = new_session(args["model"])
    load = time.perf_counter() - t
    model_file = getattr(session.inner_session, "_model_path", None)
    idle = _status("VmRSS:")
    times = []
    for _ in range(args["repeat"] + 1):  # the first call is the warm-up
        t = time.perf_counter()
        mask = remove(img, session=session, only_mask=True)
        times.append(time.perf_counter() - t)
    assert mask.size == img.size, (mask.size, img.size)
    print(json.dumps({"model_file": model_file, "load_s": load, "first_s": times[0], "times": times[1:],
                      "min_s": min(times[1:]), "idle_rss": idle, "rss_after": _status("VmRSS:"),
                      "peak_rss": _status("VmHWM:")}))


if __name__ == "__main__":
    main()
