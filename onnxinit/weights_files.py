"""Weights files written tensor by tensor: safetensors and ``.npz`` streamed to an open file,
so a model larger than memory (its tensors memory-mapped) is exported without a copy of it.

safetensors layout (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length, a JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {str: str}}`` padded with spaces to a multiple of 8 bytes, then every tensor's
bytes back to back (offsets relative to the end of the header), little-endian, C order.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np

CHUNK = 64 << 20  # bytes copied at once from a memory-mapped tensor

_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _bytes(array: np.ndarray) -> np.ndarray:
    """The tensor's bytes in C order, little-endian, as a flat uint8 view (a copy only when the
    array is not already laid out so)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.reshape(-1).view(np.uint8)


def _write_all(handle: BinaryIO, data) -> None:
    """Write every byte (an unbuffered file may take fewer than given in one call)."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[handle.write(view):]


def _copy(handle: BinaryIO, array: np.ndarray) -> None:
    flat = _bytes(array)
    for start in range(0, flat.size, CHUNK):
        _write_all(handle, flat[start:start + CHUNK])


def write_safetensors(handle: BinaryIO, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (float64/32/16, bfloat16) and string ``metadata`` as safetensors."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, array in tensors.items():
        size = array.size * array.dtype.itemsize
        header[name] = {"dtype": _DTYPES[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    _write_all(handle, struct.pack("<Q", len(text)) + text)
    for array in tensors.values():
        _copy(handle, array)


def write_npz(handle: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """``numpy.savez`` into ``handle`` (a seekable file): each array is written into the zip
    member by numpy in buffered chunks."""
    np.savez(handle, **arrays)
