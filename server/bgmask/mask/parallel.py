"""Running independent pieces of numeric work (numpy, Pillow: both release the GIL) on all cores."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

THREADS = max(1, min(4, os.cpu_count() or 1))


def run(fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
    """fn over jobs, in order; on THREADS threads when there is more than one job."""
    if THREADS > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(min(THREADS, len(jobs))) as pool:
            return list(pool.map(fn, jobs))
    return [fn(job) for job in jobs]
