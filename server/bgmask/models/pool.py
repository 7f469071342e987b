"""Warm sessions: load each model once, share it between requests, drop the least recently used past a
memory budget and idle ones after a while, and let every waiter see the progress of a load in flight."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

from bgmask.models import download, modelprep
from bgmask import errors as E
from bgmask.models.catalog import Catalog, ModelSpec
from bgmask.errors import BgmaskError
from bgmask.models.providers import ProviderChoice
from bgmask.models.sessions import MattingSession

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, Optional[float]], None]
CancelFn = Callable[[], bool]

# Resident cost of a loaded model relative to its file (fp16 weights become fp32, plus ORT's buffers).
MEMORY_FACTOR = 3


class SessionPool:
    """Thread-safe cache of MattingSession objects keyed by model name."""

    def __init__(self, choice: ProviderChoice, memory_budget: int, idle_unload_s: float) -> None:
        self.choice = choice
        self.memory_budget = memory_budget
        self.idle_unload_s = idle_unload_s
        self._lock = threading.Lock()
        self._sessions: "OrderedDict[str, tuple[MattingSession, int, float]]" = OrderedDict()  # name -> (session, bytes, last use)
        self._load_locks: dict[str, threading.Lock] = {}
        self._loading: dict[str, tuple[str, Optional[float]]] = {}  # name -> (stage, fraction) while loading

    def catalog(self) -> Catalog:
        return Catalog.load()

    def state(self, spec: ModelSpec) -> str:
        with self._lock:
            if spec.name in self._sessions:
                return "loaded"
            if spec.name in self._loading:
                return self._loading[spec.name][0]
        return download.model_state(spec)

    def get(self, name: str, progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None) -> MattingSession:
        """The warm session for `name`, downloading and loading it first if needed."""
        spec = self.catalog().get(name)
        if spec.imported:
            self._drop_if_replaced(spec)
        with self._lock:
            hit = self._sessions.get(name)
            if hit is not None:
                self._sessions[name] = (hit[0], hit[1], time.monotonic())
                self._sessions.move_to_end(name)
                return hit[0]
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        while not load_lock.acquire(timeout=0.2):  # someone else is loading it: show their progress
            if cancel is not None and cancel():
                raise BgmaskError(E.CANCELLED, "The request was cancelled while the model was loading.")
            stage = self._loading.get(name)
            if stage is not None and progress is not None:
                progress(*stage)
        try:
            with self._lock:
                hit = self._sessions.get(name)
                if hit is not None:
                    return hit[0]
            return self._load(spec, progress, cancel)
        finally:
            load_lock.release()

    def _drop_if_replaced(self, spec: ModelSpec) -> None:
        """An imported model's file is the user's: it may change, vanish or be imported again while its session is
        loaded. Before each use its size and mtime are compared with the stamp (a full hash only when they differ);
        a session whose file no longer matches is dropped, and loading it again refuses a changed or deleted file
        with MODEL_UNAVAILABLE, as models/README.md says."""
        with self._lock:
            hit = self._sessions.get(spec.name)
        if hit is None:
            return
        found = download.installed(spec)
        if found is None or hit[0].spec.sources[0].sha256 != spec.sources[0].sha256:
            log.info("imported model %s changed on disk or was imported again: unloading it", spec.name)
            with self._lock:
                self._sessions.pop(spec.name, None)

    def fetch(self, name: str, progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None) -> download.Installed:
        """Download (if needed) and verify a model without loading it: the `pull` operation."""
        spec = self.catalog().get(name)
        download.distrust(spec)  # a pull vouches for the file: hash it in full
        download.ensure_model(spec, progress=self._download_progress(progress), cancel=cancel)
        found = download.installed(spec)
        if found is None:  # removed between the download and now
            raise BgmaskError(E.MODEL_UNAVAILABLE, f"Model {name!r} was downloaded but is no longer in the cache.")
        return found

    @staticmethod
    def _download_progress(progress: Optional[ProgressFn]) -> Callable[[str, int, Optional[int]], None]:
        def on_download(stage: str, done: int, total: Optional[int]) -> None:
            # the model manager's own stages: waiting, verifying (hashing a cached file), downloading, extracting
            if progress is not None:
                progress("loading" if stage == "verifying" else "downloading", (done / total) if total else None)

        return on_download

    def _load(self, spec: ModelSpec, progress: Optional[ProgressFn], cancel: Optional[CancelFn]) -> MattingSession:
        def report(stage: str, fraction: Optional[float]) -> None:
            self._loading[spec.name] = (stage, fraction)
            if progress is not None:
                progress(stage, fraction)

        try:
            if download.model_state(spec) != "downloaded":
                report("downloading", 0.0)
            download.distrust(spec)
            path = download.ensure_model(spec, progress=self._download_progress(report), cancel=cancel)
            report("loading", None)
            session = self._open(spec, path)
        finally:
            self._loading.pop(spec.name, None)
        size = path.stat().st_size * MEMORY_FACTOR
        with self._lock:
            self._sessions[spec.name] = (session, size, time.monotonic())
            self._evict_over_budget(keep=spec.name)
        return session

    def _open(self, spec: ModelSpec, path: Path) -> MattingSession:
        """A session on the verified file where a GPU provider really runs it (fp16 pays there), else on the
        CPU-ready copy of the model (see modelprep). A model the GPU cannot take (out of GPU memory, say) is an
        error under --device gpu and runs on the CPU under auto, with a warning in the log."""
        choice = self.choice
        if choice.device == "gpu":
            session = MattingSession(spec, path, choice)
            if session.provider == choice.provider:
                log.info("model %s loaded on %s", spec.name, session.provider)
                return session
            why = (f"ONNX Runtime could not run model {spec.name!r} on {choice.provider} (the GPU is probably out of "
                   "memory; see ONNX Runtime's message above)")
            if choice.requested == "gpu":
                raise BgmaskError(E.DEVICE_UNAVAILABLE, f"{why}; --device gpu never serves from the CPU.")
            log.warning("%s; this model runs on the CPU", why)
            choice = choice.on_cpu(why)
        session = self._open_cpu(spec, path, choice)
        log.info("model %s loaded on %s", spec.name, session.provider)
        return session

    def fall_back_to_cpu(self, failed: MattingSession, why: str) -> MattingSession:
        """Under --device auto, a CPU session (on the CPU-ready copy) in place of the GPU session `failed` that ran
        out of GPU memory at run time: the warning is logged once, as later requests find the CPU session here."""
        name = failed.spec.name
        with self._lock:
            hit = self._sessions.get(name)
            if hit is not None and hit[0] is not failed:  # another worker has already replaced it
                return hit[0]
        log.warning("%s; model %s now runs on the CPU (--device auto)", why, name)
        session = self._open_cpu(failed.spec, failed.path, self.choice.on_cpu(why))
        with self._lock:
            if name in self._sessions:
                self._sessions[name] = (session, self._sessions[name][1], time.monotonic())
        return session

    def _open_cpu(self, spec: ModelSpec, path: Path, choice: ProviderChoice) -> MattingSession:
        """A CPU session on the CPU-ready copy of the model; a copy that ONNX Runtime cannot load is dropped
        and the original used."""
        shape = (1, 3, spec.input_size[1], spec.input_size[0])

        def verify(original: Path, rewritten: Path) -> bool:
            return modelprep.same_outputs(original, rewritten, shape, spec.output_name)

        copy = modelprep.prepare(path, modelprep.cache_path(spec.name), spec.output_name, verify, log.info)
        if copy == path:
            return MattingSession(spec, path, choice)
        try:
            return MattingSession(spec, copy, choice)
        except BgmaskError as exc:
            log.warning("the CPU copy of %s did not load (%s); using the original file", spec.name, exc.message)
            modelprep.forget(copy)
            return MattingSession(spec, path, choice)

    def _evict_over_budget(self, keep: str) -> None:
        total = sum(s[1] for s in self._sessions.values())
        for name in list(self._sessions):
            if total <= self.memory_budget:
                break
            if name != keep:
                total -= self._sessions.pop(name)[1]

    def drop_idle(self) -> list[str]:
        """Unload sessions unused for idle_unload_s (0 = never); returns the names dropped."""
        if self.idle_unload_s <= 0:
            return []
        cutoff = time.monotonic() - self.idle_unload_s
        with self._lock:
            idle = [n for n, (_, _, last) in self._sessions.items() if last < cutoff]
            for name in idle:
                del self._sessions[name]
        return idle

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def loaded_providers(self) -> dict[str, str]:
        """Each loaded model and the provider its session really runs on."""
        with self._lock:
            return {name: entry[0].provider for name, entry in self._sessions.items()}
