"""The GGUF file itself: encoding tensors, writing a file in one streamed pass, reading one back.

`write_planned` writes the tensor infos first and then each tensor's data, made one at a time by its
`PlannedTensor.make`, into a temp file that is fsynced and renamed over the destination, so a big
model never sits in memory whole and a failed write leaves nothing behind. `verify_planned` reads
the file back with gguf's reader. The Llama specifics are in
studio.ml.export.gguf_llama; used by studio.ml.export.gguf.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError

GGUF_DTYPES = ("f32", "f16", "bf16")
_BYTES = {"f32": 4, "f16": 2, "bf16": 2}


def ggml_type(dtype: str):
    import gguf

    if dtype not in GGUF_DTYPES:
        raise StudioError(f"Unknown GGUF type {dtype!r}.", hint=f"Use one of: {', '.join(GGUF_DTYPES)}.")
    return {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16}[dtype]


def file_type(dtype: str) -> int:
    import gguf

    return int({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])


def encode(array, dtype: str):
    """float32 numpy array -> the bytes-ready array gguf writes for `dtype` (norms stay f32)."""
    import gguf
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim <= 1 or dtype == "f32":  # llama.cpp wants 1-D tensors (norms) in f32
        return array
    return gguf.quants.quantize(array, ggml_type(dtype))


@dataclass
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # what it will be stored as
    make: Callable[[], Any]  # -> float32 numpy array, called once while writing


def write_planned(writer, planned: list[PlannedTensor], dest: Path, step: Callable[[str, float, str], None], start: float, end: float) -> None:
    """Tensor infos first, then each tensor's data in order; into a temp file renamed over `dest`."""
    import numpy as np

    for p in planned:
        n = int(np.prod(p.shape))
        kind = "f32" if len(p.shape) <= 1 else p.dtype
        if kind == "bf16":
            byte_shape = (*p.shape[:-1], p.shape[-1] * 2)
            writer.add_tensor_info(p.name, byte_shape, np.dtype(np.uint8), n * 2, raw_dtype=ggml_type("bf16"))
        else:
            writer.add_tensor_info(p.name, p.shape, np.dtype(np.float32 if kind == "f32" else np.float16),
                                   n * _BYTES[kind])
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        writer.write_header_to_file(path=Path(tmp))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, p in enumerate(planned):
            if i % 16 == 0:
                step("write", start + (end - start) * i / max(1, len(planned)),
                     f"Writing tensor {i + 1}/{len(planned)} ({p.name})…")
            data = encode(p.make(), p.dtype)
            if tuple(data.shape[:-1]) != p.shape[:-1]:
                raise StudioError(f"Tensor {p.name} came out as {data.shape}, not {p.shape}.")
            writer.write_tensor_data(data)
        writer.close()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        writer.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise



def read_gguf(path: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata key -> value, tensor name -> float32 numpy array in HF-style (rows, cols) shape)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    meta = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        with contextlib.suppress(Exception):
            meta[key] = fld.contents()
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # gguf lists dims innermost first
        data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        tensors[t.name] = np.asarray(data, dtype=np.float32).reshape(shape)
    return meta, tensors


def verify_planned(path: Path, planned: list[PlannedTensor], expected_meta: dict[str, Any]) -> None:
    """Every planned tensor is in the file with its shape, and the key metadata reads back."""
    meta, tensors = read_gguf(path)
    for key, value in expected_meta.items():
        if meta.get(key) != value:
            raise StudioError(f"The GGUF file reads back {key} = {meta.get(key)!r}, not {value!r}.")
    missing = [p.name for p in planned if p.name not in tensors or tensors[p.name].shape != tuple(p.shape)]
    if missing or len(tensors) != len(planned):
        raise StudioError(f"The GGUF file does not read back as written (tensors wrong or missing: "
                          f"{', '.join(missing[:5]) or len(tensors)}).")
