"""Frame sequences: the remove requests of one animation or clip, sent as a stream and handled as one job.

Each frame is an ordinary remove request with a `sequence` field (docs/protocol.md): the client sends frame
k + 1 while frame k is inferred, so uploads overlap inference, the daemon starts frame k + 1's inference once
frame k's is done (its refinement and temporal steps overlap it), and each frame has its own progress, reply
and cancel. The daemon keeps, per sequence, the order the frames must arrive in and the temporal filter's state;
it frees that state on the final frame, on a failed or cancelled frame, and after an idle timeout, so a
client that vanishes mid-sequence leaks nothing. The socket thread admits frames (admit); the workers run
each frame's temporal steps in order (frame) and report frames done (finish)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from bgmask import errors as E
from bgmask.errors import BgmaskError
from bgmask.mask.temporal import TemporalFilter

MAX_SEQUENCES = 8  # live sequences per daemon (each holds ~1.6 MB and 4 bytes a pixel of a frame of history)
IDLE_S = 60.0  # a sequence with no frame admitted or finished for this long is dropped
MAX_INDEX = 2**31 - 1
SequenceKey = tuple[bytes, Any]


@dataclass(frozen=True)
class SequenceField:
    """The `sequence` map of a remove request."""

    id: Any
    index: int
    final: bool
    temporal: bool


def parse_sequence(d: Any) -> Optional[SequenceField]:
    """Validate the optional `sequence` map: {id: int | str, index: int >= 0, final: bool, temporal: bool}."""
    if d is None:
        return None
    if not isinstance(d, dict):
        raise BgmaskError(E.BAD_REQUEST, "sequence must be a map {id, index, final, temporal}.")
    unknown = sorted(str(k) for k in set(d) - {"id", "index", "final", "temporal"})
    if unknown:
        raise BgmaskError(E.BAD_REQUEST, f"Unknown sequence field(s): {', '.join(unknown)}; known: final, id, index, temporal.")
    sid = d.get("id")
    if isinstance(sid, bool) or not isinstance(sid, (int, str)) or (isinstance(sid, str) and not 0 < len(sid) <= 256) \
            or (isinstance(sid, int) and not -(2**63) <= sid < 2**64):
        raise BgmaskError(E.BAD_REQUEST, f"sequence.id must be an integer or a string of 1 to 256 characters, got {sid!r}.")
    index = d.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_INDEX:
        raise BgmaskError(E.BAD_REQUEST, f"sequence.index must be an integer from 0 to {MAX_INDEX}, got {index!r}.")
    flags = {}
    for key, default in (("final", False), ("temporal", True)):
        value = d.get(key, default)
        if not isinstance(value, bool):
            raise BgmaskError(E.BAD_REQUEST, f"sequence.{key} must be true or false, got {value!r}.")
        flags[key] = value
    return SequenceField(sid, index, flags["final"], flags["temporal"])


@dataclass(eq=False)
class Sequence:
    """One live sequence: which frame may arrive next, which frame went through its temporal steps last, the
    filter's history."""

    key: SequenceKey
    temporal: bool
    expected: int = 1  # index of the next frame the socket thread accepts
    blended: int = -1  # index of the last frame through its temporal steps (or past them by a failure)
    closed: bool = False  # the final frame was admitted
    dropped: Optional[str] = None  # why the sequence ended early; later frames fail with this
    pending: int = 1  # frames admitted and not yet finished
    touched: float = field(default_factory=time.monotonic)
    filter: TemporalFilter = field(default_factory=TemporalFilter)


class SequenceTable:
    """Every live sequence of the daemon, keyed by (connection, sequence id); thread-safe."""

    def __init__(self, limit: int = MAX_SEQUENCES, idle_s: float = IDLE_S) -> None:
        self.limit, self.idle_s = limit, idle_s
        self._live: dict[SequenceKey, Sequence] = {}
        self._cv = threading.Condition()

    def __len__(self) -> int:
        with self._cv:
            return len(self._live)

    def admit(self, ident: bytes, f: SequenceField) -> Sequence:
        """Accept frame f.index of a sequence (socket thread, after every other check of the request passed):
        index 0 starts it (replacing one of the same id), any other index must be the next one."""
        key = (ident, f.id)
        with self._cv:
            seq = self._live.get(key)
            if f.index == 0:
                if seq is not None:
                    self._drop(seq, "it was restarted at frame 0")
                if len(self._live) >= self.limit:
                    raise BgmaskError(E.BUSY, f"The daemon already holds {self.limit} frame sequences; finish or cancel one first.")
                seq = Sequence(key, f.temporal)
                self._live[key] = seq
            elif seq is None:
                raise BgmaskError(E.BAD_REQUEST, f"Sequence {f.id!r} is not running (it never started with frame 0, "
                                                 "ended, failed, was cancelled or sat idle); start it again at frame 0.")
            elif seq.closed:
                raise BgmaskError(E.BAD_REQUEST, f"Sequence {f.id!r} already had its final frame; frame {f.index} comes after it.")
            elif f.index != seq.expected:
                raise BgmaskError(E.BAD_REQUEST, f"Frame {f.index} of sequence {f.id!r} arrived, but the next one must be "
                                                 f"frame {seq.expected}: frames are sent in order.")
            elif f.temporal != seq.temporal:
                raise BgmaskError(E.BAD_REQUEST, f"sequence.temporal must stay the same for every frame of sequence {f.id!r}.")
            else:
                seq.expected += 1
                seq.pending += 1
            seq.closed = f.final
            seq.touched = time.monotonic()
            return seq

    def frame(self, seq: Sequence, index: int, model: str, cancel: Callable[[], bool]) -> "FrameBlend":
        """The temporal steps of frame `index` (worker thread), for pipeline.compute_mask."""
        return FrameBlend(self, seq, index, model, cancel)

    def wait_turn(self, seq: Sequence, index: int, cancel: Callable[[], bool]) -> None:
        """Wait until the frame before `index` went through its temporal steps. Several workers may run frames
        of one sequence; the earlier frame is always dequeued first, so the wait ends."""
        with self._cv:
            while seq.blended < index - 1 and seq.dropped is None:
                if cancel():
                    raise BgmaskError(E.CANCELLED, "The request was cancelled.")
                self._cv.wait(0.05)
            self.check(seq)

    def turn_done(self, seq: Sequence, index: int) -> None:
        with self._cv:
            seq.blended = max(seq.blended, index)
            self._cv.notify_all()

    def check(self, seq: Sequence) -> None:
        """Raise `cancelled` when the sequence ended early: its later frames are not worth computing."""
        if seq.dropped is not None:
            raise BgmaskError(E.CANCELLED, f"This frame was not processed: its sequence ended because {seq.dropped}.")

    def finish(self, seq: Sequence, index: int, ok: bool) -> None:
        """A frame's final message is on its way (worker or socket thread); a failed frame ends its sequence."""
        with self._cv:
            seq.pending -= 1
            seq.touched = time.monotonic()
            if not ok:
                self._drop(seq, f"frame {index} failed or was cancelled")
            elif seq.closed and seq.pending == 0 and self._live.get(seq.key) is seq:  # not a restart's successor
                del self._live[seq.key]
            seq.blended = max(seq.blended, index)
            self._cv.notify_all()

    def drop_idle(self, now: float) -> None:
        """Forget sequences nobody sent or finished a frame of for idle_s (a client that went away)."""
        with self._cv:
            for seq in [s for s in self._live.values() if s.pending == 0 and now - s.touched > self.idle_s]:
                self._drop(seq, f"no frame came for {self.idle_s:g} s")

    def _drop(self, seq: Sequence, why: str) -> None:
        if seq.dropped is None:
            seq.dropped = why
        if self._live.get(seq.key) is seq:
            del self._live[seq.key]  # its history goes with the last job that holds it
        self._cv.notify_all()


class FrameBlend:
    """One frame's temporal steps, in frame order: prediction() (waits for the frame before to finish its
    own) decides the frame's blend weights from the model's prediction, mask() blends the full-resolution mask
    and hands the turn on."""

    def __init__(self, table: SequenceTable, seq: Sequence, index: int, model: str, cancel: Callable[[], bool]) -> None:
        self.table, self.seq, self.index, self.model, self.cancel = table, seq, index, model, cancel

    def prediction(self, image: np.ndarray, pred: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        self.table.wait_turn(self.seq, self.index, self.cancel)
        return self.seq.filter.prediction(image, pred, (self.model, box))

    def mask(self, alpha: np.ndarray) -> np.ndarray:
        out = self.seq.filter.mask(alpha)
        self.table.turn_done(self.seq, self.index)
        return out
