"""Runs inside bench/.venv-rembg: rembg's masks for a list of photos, with a given model file through rembg's
custom-model sessions (`u2net_custom`, `dis_custom`: rembg's own pre- and post-processing for that family, on
exactly the file bgmask runs). Writes <out>/<id>.png and prints one JSON line. Not imported by bgmask."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

SESSIONS = {"u2net": "u2net_custom", "isnet": "dis_custom"}


def main() -> None:
    args = json.loads(sys.argv[1])
    from PIL import Image
    from rembg import new_session, remove

    session = new_session(SESSIONS[args["family"]], model_path=args["model"])
    out = Path(args["out"])
    times = {}
    for key, path in args["images"].items():
        img = Image.open(path).convert("RGB")
        t = time.perf_counter()
        mask = remove(img, session=session, only_mask=True)
        times[key] = time.perf_counter() - t
        assert mask.size == img.size, (mask.size, img.size)
        mask.save(out / f"{key}.png")
    print(json.dumps({"seconds": times}))


if __name__ == "__main__":
    main()
