"""Read and check safetensors files without torch: header parsing and integrity checks.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the raw data. Checking the header against the file size catches
truncated and corrupt files before anything is loaded.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from studio.core.errors import StudioError

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


# For each float dtype: the unsigned view of one element and the mask of its exponent bits. An
# element whose exponent bits are all set is an Inf or a NaN, whatever the format.
FLOAT_EXPONENT = {
    "F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000),
    "F64": ("<u8", 0x7FF0000000000000), "F8_E5M2": ("u1", 0x7C),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int = field(default=0, compare=False)  # where its data starts in the file


def read_header(path: Path | str) -> dict[str, TensorInfo]:
    """Tensor name -> info, after checking the file is a whole, well-formed safetensors file.

    Raises StudioError naming the file and the fault (truncated, corrupt header, overlapping data).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise StudioError(f"{path.name} is not a safetensors file: it is only {size} bytes long.")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise StudioError(f"{path.name} is corrupt or truncated: its header claims {header_len} "
                                  f"bytes but the file has {size}.")
            header = json.loads(handle.read(header_len).decode("utf-8"))
    except OSError as err:
        raise StudioError(f"Could not read {path}: {err.strerror or err}.") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudioError(f"{path.name} is not a valid safetensors file (its header is not JSON).") from err
    except RecursionError as err:
        raise StudioError(f"{path.name} is not a valid safetensors file (its header is nested too deeply).") from err
    if not isinstance(header, dict):
        raise StudioError(f"{path.name} is not a valid safetensors file (unexpected header).")
    data_size = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise StudioError(f"{path.name} has a malformed entry for tensor {name!r}.") from err
        if dtype not in DTYPE_BYTES:
            raise StudioError(f"{path.name}: tensor {name!r} has unknown dtype {dtype!r}.")
        nbytes = prod(shape) * DTYPE_BYTES[dtype]
        if end - start != nbytes or start < 0:
            raise StudioError(f"{path.name} is corrupt: tensor {name!r} has {end - start} bytes of data "
                              f"for shape {list(shape)} ({nbytes} expected).")
        if end > data_size:
            raise StudioError(f"{path.name} is truncated: tensor {name!r} ends at byte {end} but only "
                              f"{data_size} bytes of data are present.",
                              hint="Copy or download the file again.")
        spans.append((start, end, name))
        tensors[name] = TensorInfo(name, dtype, shape, nbytes, offset=8 + header_len + start)
    spans.sort()
    for (_, prev_end, prev_name), (start, _, name) in zip(spans, spans[1:], strict=False):
        if start < prev_end:
            raise StudioError(f"{path.name} is corrupt: tensors {prev_name!r} and {name!r} overlap.")
    return tensors


def total_bytes(tensors: dict[str, TensorInfo]) -> int:
    return sum(t.nbytes for t in tensors.values())


def nonfinite_tensors(path: Path | str, tensors: dict[str, TensorInfo]) -> list[str]:
    """The names of the float tensors in `path` holding a NaN or an Inf (from `read_header`'s infos).

    Reads the raw bits through a numpy memory map, so no torch and no copy of the file in memory.
    F8_E4M3 has no Inf and a single NaN pattern, which this exponent test does not look for.
    """
    import numpy as np

    bad: list[str] = []
    try:
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as err:  # ValueError: an empty file cannot be mapped
        raise StudioError(f"Could not read {Path(path).name}: {err}.") from err
    for name, info in tensors.items():
        if info.dtype not in FLOAT_EXPONENT or not info.nbytes:
            continue
        view, mask = FLOAT_EXPONENT[info.dtype]
        bits = mapped[info.offset:info.offset + info.nbytes].view(np.dtype(view))
        if np.any((bits & np.array(mask, dtype=bits.dtype)) == mask):
            bad.append(name)
    return bad
