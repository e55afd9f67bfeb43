"""Reading a model file without copying its large inline initializers.

``onnx.load`` parses every byte of a model into memory: a 500 MB GPT-2 export costs a second of
CPU and 500 MB before anything is analysed. :func:`light_model_bytes` walks the protobuf wire
format of the file instead (only the model's top-level fields, its graph's fields and each
initializer's fields; every payload it does not need is skipped by its length) and returns the
serialized model in which each initializer whose ``raw_data`` is larger than ``inline_below``
bytes has no data but an external-data reference to that byte range of the model file itself
(``location`` the file's name, ``offset``, ``length``, and the ``basepath`` of
:mod:`onnxinit.initializers`), its ``data_location`` left as the file has it (not EXTERNAL: the
tensor is inline, which is how writers tell it from external data and write it inline again,
byte for byte). Parsing that is fast, and the data is memory-mapped on use like external data.
Everything else is the file's.

Wire format: a message is a sequence of fields, each a key (varint: field number << 3 | wire
type) and a payload: a varint (type 0), 8 bytes (1), a varint length and that many bytes (2),
or 4 bytes (5). Groups (3, 4) do not occur in ONNX; a file using them is left to onnx.load.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .initializers import BASEPATH

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data
_TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data (StringStringEntryProto: key 1, value 2)
_TENSOR_DATA_LOCATION = 14  # TensorProto.data_location (EXTERNAL = 1)


class WireError(ValueError):
    """The bytes are not a protobuf message this reader handles."""


def _varint(data, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _fields(data, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, payload start, payload end) of each field."""
    pos = start
    while pos < end:
        key, payload = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(data, payload)
        elif wire == 1:
            stop = payload + 8
        elif wire == 2:
            length, payload = _varint(data, payload)
            stop = payload + length
        elif wire == 5:
            stop = payload + 4
        else:
            raise WireError(f"wire type {wire}")
        if stop > end:
            raise WireError("a field runs past the end of its message")
        yield number, wire, pos, payload, stop
        pos = stop


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    entry = _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
    return _length_delimited(_TENSOR_EXTERNAL_DATA, entry)


def _tensor(data, start: int, end: int, reference: tuple[str, str], inline_below: int) -> bytes:
    """The TensorProto at data[start:end], its raw data replaced by a reference when large."""
    raw = []
    kept = []
    for number, wire, field, payload, stop in _fields(data, start, end):
        if number == _TENSOR_RAW_DATA and wire == 2:
            raw.append((payload, stop - payload))
            kept.append(bytes(data[field:stop]) if stop - payload <= inline_below else b"")
        elif number == _TENSOR_EXTERNAL_DATA or (
                number == _TENSOR_DATA_LOCATION and wire == 0 and _varint(data, payload)[0]):
            return bytes(data[start:end])  # already external: as it is
        else:
            kept.append(bytes(data[field:stop]))
    if len(raw) != 1 or raw[0][1] <= inline_below:  # small, or written twice (merged): as is
        return bytes(data[start:end])
    raw = raw[0]
    location, base = reference
    kept += [_entry("location", location), _entry("offset", str(raw[0])),
             _entry("length", str(raw[1])), _entry(BASEPATH, base)]
    return b"".join(kept)


def _rewrite(data, start: int, end: int, number: int, transform) -> bytes:
    """The message in ``data[start:end]`` with each length-delimited field ``number`` replaced
    by ``transform(payload_start, stop)`` (its new payload); every other field as it is."""
    out = []
    for field_number, wire, field, payload, stop in _fields(data, start, end):
        if field_number == number and wire == 2:
            out.append(_length_delimited(number, transform(payload, stop)))
        else:
            out.append(bytes(data[field:stop]))
    return b"".join(out)


def light_model_bytes(data, path: Path, inline_below: int) -> bytes:
    """The serialized model of ``data`` (the bytes of ``path``, e.g. a memory map) with every
    initializer's raw data over ``inline_below`` bytes left in the file (see the module
    docstring). Raises WireError when the bytes are not a message this reader handles."""
    reference = (path.name, str(path.parent.resolve()))

    def graph(start: int, end: int) -> bytes:
        return _rewrite(data, start, end, _GRAPH_INITIALIZER,
                        lambda first, stop: _tensor(data, first, stop, reference, inline_below))

    return _rewrite(data, 0, len(data), _MODEL_GRAPH, graph)
