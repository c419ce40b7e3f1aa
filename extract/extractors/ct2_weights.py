"""Reading a CTranslate2 ``model.bin`` (the one owner of that format here): its variables by name as
numpy arrays, so another runtime can run the same weights (`whisper` on the CPU in bfloat16, which
CTranslate2's CPU backend lacks: see whisper_torch.py).

The layout is the one ``ctranslate2.specs.model_spec.ModelSpec._serialize`` writes (binary version 6
in ctranslate2 4.x): uint32 version, the spec's name, uint32 revision, uint32 count, then per variable
its name, uint8 rank, uint32 dims, uint8 dtype id (float32, int8, int16, int32, float16, bfloat16), uint32
byte count and the bytes; then the aliases (name -> variable). Strings are uint16 length (with the NUL)
+ UTF-8 + NUL; integers little-endian as written by struct on x86/ARM.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
KNOWN_VERSIONS = range(2, 7)  # 2 added the spec name and revision, 6 is ctranslate2 4.x's


class CT2FormatError(ValueError):
    """Not a CTranslate2 model file this reader understands."""


@dataclass
class CT2Weights:
    spec: str  # e.g. WhisperSpec
    revision: int
    variables: dict = field(default_factory=dict)  # name -> np.ndarray (bfloat16 as uint16 bits)
    dtypes: dict = field(default_factory=dict)  # name -> dtype name as stored

    def float32(self, name: str) -> np.ndarray:
        """A stored floating-point variable as a new, writable float32 array (bfloat16 bits widened
        exactly)."""
        if name not in self.variables:
            raise CT2FormatError(f"the model has no variable {name!r}")
        a, dt = self.variables[name], self.dtypes[name]
        if dt == "bfloat16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if dt not in ("float32", "float16"):
            raise CT2FormatError(f"variable {name} is {dt} (a quantised model): convert the model without "
                                 "--quantization to run it outside CTranslate2")
        return a.astype(np.float32)


def read_ct2_weights(path, prefix: str = "") -> CT2Weights:
    """The variables of ``path`` whose names start with ``prefix`` (the others are skipped, not read
    into memory); aliases to kept variables are resolved."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _read(fh, prefix, path)
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, CT2FormatError):
            raise
        raise CT2FormatError(f"{path} is not a CTranslate2 model file ({type(exc).__name__}: {exc})") from None


def _read(fh, prefix: str, path: Path) -> CT2Weights:
    def num(fmt: str):
        size = struct.calcsize(fmt)
        raw = fh.read(size)
        if len(raw) != size:
            raise CT2FormatError(f"{path} ends early: it is truncated or not a CTranslate2 model file")
        return struct.unpack("<" + fmt, raw)[0]

    def text() -> str:
        n = num("H")
        raw = fh.read(n)
        if len(raw) != n or not raw.endswith(b"\0"):
            raise CT2FormatError(f"{path}: a malformed name: not a CTranslate2 model file")
        return raw[:-1].decode("utf-8")

    version = num("I")
    if version not in KNOWN_VERSIONS:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version}, this reader knows "
                             f"{KNOWN_VERSIONS.start}-{KNOWN_VERSIONS.stop - 1}")
    out = CT2Weights(spec=text(), revision=num("I"))
    where: dict[str, tuple] = {}  # every variable: (offset, shape, dtype, byte count)

    def load(name: str) -> None:
        offset, shape, dtype, size = where[name]
        fh.seek(offset)
        raw = fh.read(size)
        np_dtype = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if len(raw) != size or size != count * np.dtype(np_dtype).itemsize:
            raise CT2FormatError(f"{path} ends early or variable {name} has {len(raw)} bytes for shape {shape} "
                                 f"{dtype}: it is truncated or not a CTranslate2 model file")
        out.variables[name] = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
        out.dtypes[name] = dtype

    for _ in range(num("I")):
        name = text()
        shape = tuple(num("I") for _ in range(num("B")))
        dtype_id = num("B")
        if dtype_id >= len(DTYPES):
            raise CT2FormatError(f"{path}: variable {name} has an unknown dtype id {dtype_id}")
        size = num("I")
        where[name] = (fh.tell(), shape, DTYPES[dtype_id], size)
        fh.seek(size, 1)  # read below, only the variables asked for
    aliases = {}
    for _ in range(num("I")):
        alias = text()
        aliases[alias] = text()
    # the converter stores equal variables once and aliases the others to it (zero biases, say)
    for name, target in aliases.items():
        if name.startswith(prefix) and target not in where:
            raise CT2FormatError(f"{path}: alias {name} points at an absent variable {target}")
    for name in where:
        if name.startswith(prefix):
            load(name)
    for name, target in aliases.items():
        if name.startswith(prefix):
            if target not in out.variables:
                load(target)
            out.variables[name], out.dtypes[name] = out.variables[target], out.dtypes[target]
    return CT2Weights(out.spec, out.revision, {k: v for k, v in out.variables.items() if k.startswith(prefix)},
                      {k: v for k, v in out.dtypes.items() if k.startswith(prefix)})
