"""Concrete shapes for a model's graph inputs: the shapes given (``--input-shape``), else the
declared ones with the batch axis set to ``batch_size`` and other symbolic axes to
``default_length`` (with a warning each); and the declared value_info with the inputs' symbolic
dims replaced by the values chosen for them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from .errors import InvalidOptionError
from .passes import shape_of

# the largest size of an input's axis: a declared 2^40 (a corrupted file) was taken as given and
# the rules' per-row work ran for minutes on it
MAX_DIM = 2**31 - 1


def resolve_input_shapes(inputs: Sequence[onnx.ValueInfoProto], given: Mapping[str, tuple],
                         batch_size: int, default_length: int,
                         model_name: str) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """({input name: shape}, warnings) for the runtime ``inputs`` of ``model_name``."""
    names = [inp.name for inp in inputs]
    unknown = set(given) - set(names)
    if unknown:
        raise InvalidOptionError(
            f"--input-shape names {', '.join(sorted(unknown))}, not an input of {model_name} "
            f"(inputs: {', '.join(names)})"
        )
    shapes, warnings = {}, []
    batch_names = _batch_names(inputs, given)
    for inp in inputs:
        declared = shape_of(inp.type)
        if inp.name in given:
            shape = given[inp.name]
            if declared is not None and (
                len(declared) != len(shape)
                or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(declared, shape))
            ):
                raise InvalidOptionError(
                    f"--input-shape {inp.name}:{'x'.join(map(str, shape))} does not match "
                    f"the declared shape {declared} of input {inp.name!r}"
                )
            shapes[inp.name] = tuple(shape)
            continue
        if declared is None:
            raise InvalidOptionError(
                f"{model_name}: input {inp.name!r} has no declared shape; "
                f"give one with --input-shape {inp.name}:DIMS"
            )
        dims = []
        for axis, d in enumerate(declared):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif axis == 0 or (isinstance(d, str) and d in batch_names):
                dims.append(batch_size)
            else:
                dims.append(default_length)
                warnings.append(
                    f"input {inp.name!r} axis {axis} ({d or 'unnamed'}) is symbolic; using "
                    f"{default_length} (set it with --input-shape {inp.name}:DIMS)"
                )
        shapes[inp.name] = tuple(dims)
    for name, shape in shapes.items():
        if any(d > MAX_DIM for d in shape):
            raise InvalidOptionError(
                f"{model_name}: input {name!r} has shape {'x'.join(map(str, shape))}: an axis "
                f"of more than {MAX_DIM} (2^31 - 1) elements; no model is run or analysed at "
                f"that size")
    return shapes, warnings


def forget_unset_dims(values: Sequence[onnx.ValueInfoProto]) -> None:
    """Make each dim of ``values`` declared as 0 or less unknown, in place: exporters write 0
    (or -1) for a dynamic axis, as :func:`resolve_input_shapes` reads an input's; left as
    they are, an output declared ``[0, 10]`` would contradict the shape inference gives it
    from the resolved inputs and pass for an empty tensor."""
    for vi in values:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for dim in vi.type.tensor_type.shape.dim:
                if dim.WhichOneof("value") == "dim_value" and dim.dim_value <= 0:
                    dim.ClearField("dim_value")


def assumed_lengths(inputs: Sequence[onnx.ValueInfoProto], given: Mapping[str, tuple]) -> bool:
    """Whether a non-batch input dim was filled in by :func:`resolve_input_shapes` (a symbolic
    length or size), neither declared by the model nor given by the user. A model may refuse
    an assumed length (its position table is shorter); every model takes any batch."""
    batch_names = _batch_names(inputs, given)
    return any(axis > 0 and not (isinstance(d, int) and d > 0) and d not in batch_names
               for inp in inputs if inp.name not in given
               for axis, d in enumerate(shape_of(inp.type) or ()))


def _batch_names(inputs: Sequence[onnx.ValueInfoProto], given: Mapping[str, tuple]) -> set[str]:
    """The names of the inputs' symbolic batch axes (axis 0): a dim so named on another axis
    is the batch too (an RNN's initial state ``[layers, batch, hidden]`` beside ``x [batch, T,
    F]``)."""
    return {d[0] for inp in inputs if inp.name not in given
            for d in [shape_of(inp.type)] if d and isinstance(d[0], str) and d[0]}


def resolved_value_info(infos: Sequence[onnx.ValueInfoProto],
                        inputs: Sequence[onnx.ValueInfoProto],
                        input_shapes: Mapping[str, tuple[int, ...]]) -> list[onnx.ValueInfoProto]:
    """Copies of ``infos`` with the inputs' symbolic dims (``batch``...) replaced by the values
    chosen for them in ``input_shapes``."""
    names = {}
    for inp in inputs:
        declared = shape_of(inp.type) or ()
        for d, v in zip(declared, input_shapes.get(inp.name, ())):
            if isinstance(d, str) and d:
                names.setdefault(d, v)
    out = []
    for vi in infos:
        vi2 = onnx.ValueInfoProto()
        vi2.CopyFrom(vi)
        if vi2.type.HasField("tensor_type") and vi2.type.tensor_type.HasField("shape"):
            for dim in vi2.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param in names:
                    dim.dim_value = names[dim.dim_param]
        out.append(vi2)
    return out


def assumed_sizes_hint(graph) -> str:
    """A hint for a node the analysis could not predict where the input lengths were
    assumed (``graph.assumed_lengths``): the model may not take those sizes."""
    if not getattr(graph, "assumed_lengths", False):
        return ""
    shapes = ", ".join(f"{n}:{'x'.join(map(str, s))}" for n, s in graph.input_shapes.items())
    return (f"; the inputs' lengths were assumed ({shapes}): if the model takes other sizes, "
            f"give them with --input-shape")
