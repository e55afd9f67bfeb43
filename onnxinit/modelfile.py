"""Serializing a ModelProto one initializer at a time, in the standard byte layout.

``ModelProto.SerializeToString()`` needs the whole model, data included, in memory twice (the
message and its bytes). :func:`serialized_model` yields the same bytes in pieces: the model's
fields before ``graph``, the graph's key and length, the graph's fields before ``initializer``,
each initializer (serialized only when its turn comes), the graph's remaining fields and the
model's. Deterministic serialization writes known fields in field-number order, so the pieces
concatenate to what ``SerializeToString(deterministic=True)`` of the whole model gives (and
``onnx.save`` writes). Unknown fields of the model and graph messages are not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import onnx
from google.protobuf.message import Message

_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int) -> bytes:
    return _varint((number << 3) | _LENGTH_DELIMITED)


def field_size(number: int, payload: int) -> int:
    """Bytes of a length-delimited field ``number`` holding ``payload`` bytes."""
    return len(field_start(number, payload)) + payload


def field_start(number: int, payload: int) -> bytes:
    """The key and length that precede the ``payload`` bytes of a length-delimited field."""
    return _key(number) + _varint(payload)


def copy_fields(source: Message, target: Message, keep: Callable[[int], bool]) -> None:
    """Copy the set fields of ``source`` whose number passes ``keep`` into ``target``."""
    for field, value in source.ListFields():
        if not keep(field.number):
            continue
        repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; older: the label
        if repeated is None:
            repeated = field.label == field.LABEL_REPEATED
        if repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


@dataclass(frozen=True)
class Piece:
    """An initializer to serialize: its size in bytes and how to make its bytes."""

    size: int
    serialize: Callable[[], bytes | Iterable[bytes]]  # the bytes, or them in order in pieces


def serialized_model(model: onnx.ModelProto, initializers: Sequence[Piece]) -> Iterator[bytes]:
    """The bytes of ``model`` with ``initializers`` as its graph's initializers (``model``'s own
    are ignored), piece by piece (see the module docstring)."""

    def split(message: Message, number: int) -> tuple[bytes, bytes]:
        before, after = type(message)(), type(message)()
        copy_fields(message, before, lambda n: n < number)
        copy_fields(message, after, lambda n: n > number)
        return before.SerializeToString(deterministic=True), \
            after.SerializeToString(deterministic=True)

    graph_before, graph_after = split(model.graph, _INITIALIZER)
    size = len(graph_before) + len(graph_after) + sum(
        field_size(_INITIALIZER, p.size) for p in initializers)
    model_before, model_after = split(model, _GRAPH)
    yield model_before
    if model.HasField("graph") or initializers:
        yield _key(_GRAPH) + _varint(size)
        yield graph_before
        for piece in initializers:
            data = piece.serialize()
            yield field_start(_INITIALIZER, piece.size)
            written = 0
            for part in (data,) if isinstance(data, bytes) else data:  # made as written
                written += len(part)
                yield part
            if written != piece.size:
                raise ValueError(f"an initializer serialized to {written} bytes, not "
                                 f"the {piece.size} announced")
        yield graph_after
    yield model_after
