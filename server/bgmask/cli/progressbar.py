"""A small progress bar on stderr for the CLI: downloads (bytes) and multi-file runs (items).

On a terminal it redraws one line (percent, amount, rate, ETA); into a pipe or a log it writes a plain
line at every further 10 %, so logs stay readable."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

REDRAW_S = 0.1
RATE_AFTER_S = 0.5  # a rate measured over less time than this is noise
_SI = ("B", "kB", "MB", "GB", "TB")


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as download sizes are usually quoted)."""
    for unit in _SI[:-1]:
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} {_SI[-1]}"


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """`unit`: "B" shows amounts as bytes, "" shows only the percentage, anything else counts items
    ("3/10 images"). Besides update(), the bar is a download progress callback (stage, done, total):
    each new stage starts a new line."""

    def __init__(self, total: Optional[int], unit: str = "B", label: str = "", stream: Optional[TextIO] = None,
                 width: int = 24) -> None:
        self.total = total
        self.unit = unit
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.stage = ""
        self._restart(base=0)

    def _restart(self, base: Optional[int]) -> None:
        self.started = time.monotonic()
        self.base = base  # the rate counts from here (None: from the first update)
        self.drawn_at = 0.0
        self.next_tenth = 1
        self.open_line = False

    def __call__(self, stage: str, done: int, total: Optional[int]) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self._restart(base=None)
        self.update(done, total)

    def update(self, done: int, total: Optional[int] = None) -> None:
        """Show `done` out of `total` (default: the total given before; None: unknown)."""
        if total is not None:
            self.total = total
        if self.base is None:
            self.base = done
        now = time.monotonic()
        total = self.total
        if self.tty:
            if (total is not None and done >= total) or now - self.drawn_at >= REDRAW_S:
                self.drawn_at = now
                self.stream.write("\r" + self.line(done, now) + "\x1b[K")
                self.stream.flush()
                self.open_line = True
        elif total:
            tenth = min(10, done * 10 // total)
            if tenth >= self.next_tenth:
                self.next_tenth = tenth + 1
                self.stream.write(self.line(done, now) + "\n")
                self.stream.flush()

    def close(self) -> None:
        """End the bar's line so that what is printed next starts on a fresh one."""
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False

    def _amount(self, n: float) -> str:
        return human_bytes(n) if self.unit == "B" else f"{n:.0f}"

    def line(self, done: int, now: Optional[float] = None) -> str:
        """The text of the bar for `done` (without terminal control characters)."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        rate = (done - (self.base or 0)) / elapsed if elapsed >= RATE_AFTER_S else 0.0
        head = " ".join(p for p in (self.label, self.stage) if p)
        rate_text = "" if rate <= 0 else {"B": f"{human_bytes(rate)}/s", "": ""}.get(self.unit, f"{rate:.1f} {self.unit}/s")
        total = self.total
        if not total:
            return " ".join(p for p in (head, self._amount(done) if self.unit else "", rate_text) if p)
        fraction = min(max(done / total, 0.0), 1.0)
        filled = int(fraction * self.width)
        amounts = "" if not self.unit else f"{self._amount(done)}/{self._amount(total)}" + ("" if self.unit == "B" else f" {self.unit}")
        if done >= total:
            timing = f"done in {_clock(elapsed)}"
        else:
            timing = f"ETA {_clock((total - done) / rate)}" if rate > 0 else "ETA --:--"
        parts = (head, f"[{'#' * filled}{'-' * (self.width - filled)}]", f"{fraction * 100:5.1f}%", amounts, rate_text, timing)
        return " ".join(p for p in parts if p)
