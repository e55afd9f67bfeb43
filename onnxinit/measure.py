"""Measuring a model in onnxruntime: every float intermediate exposed as an output, with the
analysis's training semantics (BatchNormalization on batch statistics, Dropout as identity)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto

from .errors import InvalidOptionError, UnsupportedModelError
from .graph import ModelGraph
from .passes import batch_statistics, fixed_dropout, set_input_shapes, with_outputs
from .runtime import make_session


# what onnxruntime hands back as numpy arrays (bfloat16 and the float8 types it cannot)
_NUMPY_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


def measurable_model(graph: ModelGraph, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of the model that exposes ``tensors`` as outputs and runs with the analysis's
    training semantics: static input shapes, BatchNormalization on batch statistics, Dropout as
    identity (even with ``training_mode=True``), the passes of :mod:`onnxinit.passes`."""
    model = with_outputs(graph.model, tensors, graph.dtypes)
    set_input_shapes(model, graph.input_shapes)
    batch_statistics(model, graph.shapes, graph.dtypes)
    fixed_dropout(model)
    return model


def measured_bytes(graph: ModelGraph, tensors: Iterable[str] | None = None) -> int:
    """Memory one measurement holds at once: every measured tensor as onnxruntime returns it,
    and the float inputs as drawn (float64)."""
    tensors = tensors if tensors is not None else graph.float_activations()
    total = 0
    for name in dict.fromkeys([*tensors, *graph.input_names]):
        shape = graph.shape(name)
        if shape is not None:
            itemsize = 8 if name in graph.input_names else np.dtype(
                onnx.helper.tensor_dtype_to_np_dtype(graph.dtypes.get(name, 1))).itemsize
            total += int(np.prod(shape, dtype=np.float64)) * itemsize
    return total


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def require_memory(graph: ModelGraph, available: int | None = None) -> None:
    """InvalidOptionError, before anything is drawn, when measuring ``graph`` would take more
    than the memory available."""
    need, available = measured_bytes(graph), available or available_memory()
    if available is not None and need > available:
        raise InvalidOptionError(
            f"{graph.name}: measuring holds {need / 2**30:.1f} GiB of tensors at once and "
            f"{available / 2**30:.1f} GiB is available; use a smaller --batch-size or input "
            "shape (--input-shape), or analyze without --measure")


def measure(
    graph: ModelGraph,
    feeds: Mapping[str, np.ndarray],
    tensors: Iterable[str] | None = None,
    *,
    device: str = "auto",
    overflowed: list[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """Measured (mean, var) over every element of each tensor, on ``feeds``, with training
    semantics: BatchNormalization on batch statistics; Dropout is identity (even with
    ``training_mode=True``), as in the analysis by default. Elements that are -inf (an
    attention mask written with -inf) are left out, as the predictions leave them out; so are
    tensors of a float type numpy cannot hold (bfloat16, float8) and tensors of one element, and
    tensors holding +inf or NaN (float32 overflowed: there is no finite moment to compare
    with), whose names are appended to ``overflowed`` when it is given.
    UnsupportedModelError when onnxruntime cannot run the model."""
    # a tensor of no known element type (a sequence of tensors, a Loop's sequence output) is
    # left out: onnxruntime refuses a model output of undefined type
    tensors = [t for t in (tensors if tensors is not None else graph.float_activations())
               if graph.dtypes.get(t) in _NUMPY_FLOATS]
    model = measurable_model(graph, [t for t in tensors if t not in graph.input_names])
    try:
        session = make_session(model, device=device)
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(names, dict(feeds))))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        if isinstance(exc, MemoryError):
            raise
        raise UnsupportedModelError(
            f"{graph.name}: onnxruntime cannot run this model, so nothing can be measured: "
            f"{' '.join(str(exc).split())[:300]}") from exc
    values.update({k: v for k, v in feeds.items() if k in graph.input_names})
    out = {}
    for name in tensors:
        if name in values:
            v = np.asarray(values[name], dtype=np.float64)
            if v.size < 2:  # one draw has no spread: there is nothing to compare with
                continue
            masked = np.isneginf(v)
            if masked.any() and not masked.all():  # an attention mask written with -inf:
                v = v[~masked]  # the moments of the other elements, as in Moments.total
            if not np.isfinite(v).all():
                if overflowed is not None:
                    overflowed.append(name)
                continue
            out[name] = (float(v.mean()), float(v.var()))
    return out
