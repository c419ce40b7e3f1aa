"""Extractor base class, the registry of extractors, and the feature SPEC syntax.

An extractor is a small class with a config dataclass, registered by name (lhotse's pattern)::

    @register
    class MyExtractor(Extractor):
        name = "my-feature"; modality = "audio"; kind = "vector"; needs = ("audio",)
        Config = MyConfig
        def extract(self, clip): return Feature(data=...)

SPEC syntax (``--features``): ``NAME`` or ``NAME:key=value[,key=value...]``; several SPECs are
separated by commas too: a comma-separated token that has ``=`` before any ``:`` continues the
options of the SPEC before it. Example::

    librosa,egemaps,hf-audio:model=facebook/hubert-base-ls960,layers=all,hf-text:model=./my-bert
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import platform
import types
import time
import typing
from dataclasses import asdict, dataclass, fields

from .cache import Feature, config_hash
from .media import Clip, DecodeConfig

REGISTRY: dict[str, type["Extractor"]] = {}


class SpecError(ValueError):
    """A --features SPEC that cannot be understood (unknown extractor or option, bad value)."""


class ExtractionError(Exception):
    """An extractor cannot produce a value for this clip; the message is stored as the reason."""


def register(cls: type["Extractor"]) -> type["Extractor"]:
    if cls.name in REGISTRY:
        raise ValueError(f"extractor {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


@dataclass
class NoConfig:
    pass


class Extractor:
    """Base class. Subclasses set the class attributes and implement :meth:`extract`."""

    name: typing.ClassVar[str]
    modality: typing.ClassVar[str]  # audio | face | visual | text | knowledge
    kind: typing.ClassVar[str]  # vector | layers | series | record
    needs: typing.ClassVar[tuple[str, ...]] = ()  # from media.NEEDS
    # what its output can feed to later extractors of the same clip: ("text",) for ASR, whose
    # record["text"] becomes the transcript of clips that --transcripts does not cover
    provides: typing.ClassVar[tuple[str, ...]] = ()
    # names of extractors whose output for the same clip this one reads (run after them)
    after: typing.ClassVar[tuple[str, ...]] = ()
    # False: the runner records a clip that lacks one of ``needs`` (clip.missing) as this set's
    # failure without calling extract(), and extract() called directly on such a clip raises
    # ExtractionError. True: extract() receives the clip anyway and decides (hf-text's on_missing, a
    # VLM asked without a transcript), raising ExtractionError when it cannot answer
    handles_missing: typing.ClassVar[bool] = False
    version: typing.ClassVar[str] = "1"
    #: the cache folder of the run this extractor works for (set by the runner before the first
    #: clip): extractors that read earlier results of the same cache (vlm-text) look there
    cache_root: str | None = None
    #: CPU threads per process the run gives this extractor's own thread pool (set by the runner to
    #: --threads, or more for a latency-bound single process, the Recogniser; None: its default)
    run_threads: int | None = None
    Config: typing.ClassVar[type] = NoConfig
    libraries: typing.ClassVar[tuple[str, ...]] = ("numpy",)
    description: typing.ClassVar[str] = ""

    def __init__(self, config=None, decode: DecodeConfig = DecodeConfig(), device: str = "cpu"):
        self.config = config if config is not None else self.Config()
        self.decode = decode
        self.device = device
        self.loaded = False

    # -- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Load models/weights. Called once per worker process, before the first clip."""

    def ensure_loaded(self) -> "Extractor":
        if not self.loaded:
            before = set(self.__dict__)
            try:
                self.load()
            finally:  # what load() set (models, detectors, even a load error) stays in this process
                self._loaded_attrs = getattr(self, "_loaded_attrs", set()) | (set(self.__dict__) - before)
            self.loaded = True
        return self

    def __getstate__(self):
        """Sent to a worker process without what load() created: each worker loads its own once."""
        state = self.__dict__.copy()
        for name in state.pop("_loaded_attrs", ()):
            state.pop(name, None)
        state["loaded"] = False
        return state

    def preflight(self, load: bool) -> None:
        """Checked in the main process before any clip: raise if this extractor cannot work
        (e.g. its model is missing). ``load`` is True when the main process is also the worker,
        so loading here costs nothing extra and provenance (revision) is known before meta.json."""
        if load:
            self.ensure_loaded()

    def check_device(self) -> None:
        """Raise if the requested device is absent where this runs (``cuda`` without a GPU). Checked
        where clips are computed: before any clip in the main process of a local run; on a Dask
        cluster by each worker as it loads (its warm-up reports the error to the client)."""

    def runs_without(self, missing) -> bool:
        """Whether extract() computes something for a clip that lacks the inputs ``missing`` (some of
        ``needs``; none missing: True): False lets the runner record the clip as a failure without
        loading the model, and skip loading it up front when no clip of the run can have them (no
        transcript, no ASR)."""
        return not missing or self.handles_missing

    def close(self) -> None:
        """Release what load() opened (landmarkers, SDK clients). Called at the end of a run."""

    def extract(self, clip: Clip) -> Feature:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- identity and provenance -------------------------------------------------------------
    @classmethod
    def pinned_config(cls, config: dict, model: dict | None) -> dict | None:
        """A recorded ``config`` with the options that resolve per machine (``auto``) replaced by what
        they resolved to where the set was computed (``model``: its recorded model provenance), so
        the same set can be computed on another machine (an exported bundle); None: nothing to pin."""
        return None

    def key_payload(self) -> dict:
        """Everything that changes the output: name, version, config, relevant decode params."""
        return {"extractor": self.name, "version": self.version, "config": asdict(self.config),
                "decode": self.decode.for_needs(self.needs)}

    @property
    def key(self) -> str:
        """``<name>-<hash of key_payload()>``, computed once: the payload can hash files (model
        weights, an imported answers file) and the key is read several times per clip."""
        if "_key" not in self.__dict__:
            self._key = f"{self.name}-{config_hash(self.key_payload())}"
        return self._key

    def filed_as(self, key: str) -> "Extractor":
        """This extractor with its sets filed under ``key``: only for a key that is its own payload
        with a moved model's path put back (ensemble/relocate.py checks it, weights checksum included)."""
        self._key = key
        return self

    def channels(self) -> list[str] | None:
        """Names of the output channels (last axis), where they have names."""
        return None

    def model_provenance(self) -> dict:
        """Model id and revision/checksum where known (neural extractors override)."""
        return {}

    def provenance(self) -> dict:
        key, payload = self.key, self.key_payload()
        return {
            "key": key,
            "extractor": self.name,
            "extractor_version": self.version,
            "modality": self.modality,
            "kind": self.kind,
            "config": payload["config"],
            "decode": payload["decode"],
            "config_hash": key.rsplit("-", 1)[1],
            "model": self.model_provenance(),
            "channels": self.channels(),
            "libraries": library_versions(("numpy", "h5py", "av") + tuple(self.libraries)),
            "python": platform.python_version(),
            "toolkit_version": toolkit_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def toolkit_version() -> str:
    """This toolkit's installed version, recorded with every output (cache, run dir, predictions)."""
    try:
        return importlib.metadata.version("moe-emotion")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def library_versions(names) -> dict:
    return {name: _installed_version(name) for name in dict.fromkeys(names)}


@functools.lru_cache(maxsize=None)
def _installed_version(name: str) -> str | None:
    """Read once per process (4-5 ms a package; a loaded Recogniser writes provenance on every call):
    the modules imported already are the versions that compute, whatever pip does meanwhile."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def split_specs(text: str) -> list[str]:
    """Split a --features value into SPECs (see the module docstring)."""
    specs: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        colon, eq = token.find(":"), token.find("=")
        continues = eq != -1 and (colon == -1 or eq < colon)
        if continues:
            if not specs:
                raise SpecError(f"{token!r}: an option needs an extractor before it, e.g. librosa:{token}")
            specs[-1] += ("," if ":" in specs[-1] else ":") + token
        else:
            specs.append(token)
    return specs


def _convert(value: str, typ, field_name: str, spec: str):
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null", ""):
            return None
        typ = args[0]
    try:
        if typ is bool:
            low = value.lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return low in ("1", "true", "yes", "on")
        if typ in (int, float, str):
            return typ(value)
    except ValueError:
        raise SpecError(f"{spec}: option {field_name}={value!r} is not a valid {typ.__name__}") from None
    return value


def parse_spec(spec: str) -> tuple[type[Extractor], object]:
    """``NAME[:k=v,...]`` -> (extractor class, config instance). Raises SpecError."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in REGISTRY:
        raise SpecError(f"unknown extractor {name!r}; registered: {', '.join(sorted(REGISTRY))} "
                        "(see `cli.py features`)")
    cls = REGISTRY[name]
    hints = typing.get_type_hints(cls.Config)
    valid = {f.name for f in fields(cls.Config)}
    kwargs = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise SpecError(f"{spec}: option {item!r} must look like key=value")
        if key not in valid:
            raise SpecError(f"{spec}: unknown option {key!r} for {name}; options: {', '.join(sorted(valid)) or 'none'}")
        kwargs[key] = _convert(value.strip(), hints[key], key, spec)
    try:
        config = cls.Config(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{spec}: {exc}") from None
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            raise SpecError(f"{spec}: {exc}") from None
    return cls, config


def build(spec: str, decode: DecodeConfig = DecodeConfig(), device: str = "cpu") -> Extractor:
    cls, config = parse_spec(spec)
    return cls(config, decode=decode, device=device)


def describe(cls: type[Extractor]) -> dict:
    defaults = {}
    for f in fields(cls.Config):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            defaults[f.name] = f.default_factory()  # type: ignore[misc]
    return {"name": cls.name, "modality": cls.modality, "kind": cls.kind, "needs": list(cls.needs),
            "version": cls.version, "defaults": defaults, "description": cls.description}


def load_all() -> dict[str, type[Extractor]]:
    """Import every module that registers extractors; return the registry."""
    from . import extractors  # noqa: F401  (registers on import)

    return REGISTRY
