"""Input data for data-driven methods: :func:`data_source`, the batches (real from
``--data FILE.npz``, or synthetic from :func:`onnxinit.feeds.synthetic_feeds`) they draw."""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import InvalidOptionError
from .feeds import synthetic_feeds, vocab_size
from .graph import ModelGraph

log = logging.getLogger("onnxinit.data")

LOSSES = ("cross_entropy", "mse", "output")
_NOTICE = {"shown": False}  # the "real data works better" notice is shown once per process


@dataclass
class Batch:
    """One batch: a value for every graph input, and the labels (integer class ids, for
    cross_entropy) or targets (floats, for mse) of the loss; None for ``loss='output'``."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Samples [start, stop) of a batch (axis 0 of every input and of the labels)."""
    return Batch(feeds={n: a[start:stop] for n, a in batch.feeds.items()},
                 labels=None if batch.labels is None else batch.labels[start:stop])


def concat_batches(first: Batch, second: Batch) -> Batch:
    feeds = {n: np.concatenate([first.feeds[n], second.feeds[n]]) for n in first.feeds}
    labels = None if first.labels is None else np.concatenate([first.labels, second.labels])
    return Batch(feeds=feeds, labels=labels)


def batch_length(batch: Batch) -> int:
    return len(next(iter(batch.feeds.values())))


def _input_dtype(graph: ModelGraph, name: str) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(graph.dtypes.get(name, 1)))


def _batch_shape(graph: ModelGraph, name: str, batch_size: int) -> tuple[int, ...]:
    """The graph's resolved shape of input ``name`` with axis 0 (the batch) set to
    ``batch_size``; refused when the model declares a different fixed batch size."""
    shape = tuple(graph.input_shapes[name])
    if not shape:
        raise InvalidOptionError(f"input {name!r} is a scalar; it has no batch axis to draw from")
    declared = next((i for i in graph.model_inputs() if i.name == name), None)
    dims = declared.type.tensor_type.shape.dim if declared is not None else []
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value not in (batch_size,) \
            and dims[0].dim_value > 0:  # 0 or -1: written by some exporters for a dynamic axis
        raise InvalidOptionError(
            f"input {name!r} has a fixed batch size {dims[0].dim_value}; use "
            f"--batch-size {dims[0].dim_value}, not {batch_size}"
        )
    return (batch_size, *shape[1:])


def _loss_output(graph: ModelGraph, loss_output: str | None) -> str:
    """The model output the loss applies to: ``loss_output``, or the first float output."""
    if loss_output is not None:
        if loss_output not in graph.output_names:
            raise InvalidOptionError(
                f"--loss-output {loss_output!r} is not an output of {graph.name} "
                f"(outputs: {', '.join(graph.output_names)})"
            )
        return loss_output
    floats = [o for o in graph.output_names if graph.is_float(o)]
    if not floats:
        raise InvalidOptionError(f"{graph.name} has no float output to apply a loss to")
    return floats[0]


def _label_shape(graph: ModelGraph, output: str, loss: str, batch_size: int):
    """Shape of one batch of labels: the output's shape without its last (class) axis for
    cross_entropy, the output's shape for mse, None for 'output'; the batch axis is
    ``batch_size``. Also the class count (the output's last axis) for cross_entropy."""
    if loss == "output":
        return None, None
    shape = graph.shape(output)
    if shape is None or not shape:
        raise InvalidOptionError(
            f"the shape of output {output!r} is unknown; the {loss} loss needs it "
            "(give --input-shape)"
        )
    shape = (batch_size, *shape[1:])
    if loss == "mse":
        return shape, None
    if len(shape) < 2:
        raise InvalidOptionError(
            f"output {output!r} has shape {shape}: cross_entropy needs a class axis (last); "
            "use --loss mse or --loss output"
        )
    return shape[:-1], int(shape[-1])


def _cast_checked(array: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """``array`` as ``dtype`` when the cast loses nothing that matters: float from any float or
    integer; integer from integer (values in range) or bool; bool from bool or 0/1 integers.
    A float where an integer is expected is refused."""
    kind = array.dtype.kind
    if dtype.kind == "f":
        ok = kind in "fiub"
    elif dtype.kind in "iu":
        ok = kind in "iub"
        if ok and kind in "iu" and array.size:
            info = np.iinfo(dtype)
            ok = info.min <= array.min() and array.max() <= info.max
            if not ok:
                raise InvalidOptionError(
                    f"{what}: values [{array.min()}, {array.max()}] do not fit {dtype}")
    elif dtype.kind == "b":
        ok = kind == "b" or (kind in "iu" and bool(np.isin(array, (0, 1)).all()))
    else:
        ok = array.dtype == dtype
    if not ok:
        raise InvalidOptionError(f"{what}: dtype {array.dtype} where {dtype} is expected "
                                 "(cast it when writing the file)")
    return array.astype(dtype, copy=False)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if not file.is_file():
        raise InvalidOptionError(f"--data {path}: no such file")
    with open(file, "rb") as f:
        magic = f.read(6)
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        raise InvalidOptionError(
            f"--data {path}: not a NumPy .npz archive (write one with numpy.savez(path, "
            "**{input_name: array, 'labels': ...}))")
    try:
        loaded = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidOptionError(f"--data {path}: not a readable .npz file ({exc})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InvalidOptionError(
            f"--data {path}: a single .npy array, not an .npz archive "
            "(write it with numpy.savez(path, **{input_name: array, 'labels': ...}))")
    try:
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidOptionError(f"--data {path}: not a readable .npz file ({exc})") from None


def _validated_arrays(
    graph: ModelGraph, arrays: Mapping[str, np.ndarray], path: str, *, batch_size: int,
    loss: str, output: str,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The file's input arrays and labels/targets, checked and cast."""
    missing = [n for n in graph.input_names if n not in arrays]
    if missing:
        raise InvalidOptionError(
            f"--data {path}: no array for model input(s) {', '.join(missing)} "
            f"(the file has: {', '.join(sorted(arrays)) or 'nothing'})"
        )
    inputs = {}
    for name in graph.input_names:
        want = _batch_shape(graph, name, batch_size)[1:]
        array = arrays[name]
        if array.ndim != len(want) + 1 or tuple(array.shape[1:]) != want:
            raise InvalidOptionError(
                f"--data {path}: array {name!r} has shape {array.shape}; the model needs "
                f"(samples, {', '.join(map(str, want))})"
            )
        inputs[name] = _cast_checked(array, _input_dtype(graph, name), f"--data {path}: {name!r}")
    label_shape, classes = _label_shape(graph, output, loss, batch_size)
    labels = None
    if loss != "output":
        key = "labels" if loss == "cross_entropy" else "targets"
        if key not in arrays:
            raise InvalidOptionError(
                f"--data {path}: the {loss} loss needs an array {key!r} "
                f"(the file has: {', '.join(sorted(arrays))})"
            )
        labels = arrays[key]
        if tuple(labels.shape[1:]) != tuple(label_shape[1:]) or labels.ndim != len(label_shape):
            raise InvalidOptionError(
                f"--data {path}: {key!r} has shape {labels.shape}; output {output!r} needs "
                f"(samples{''.join(f', {d}' for d in label_shape[1:])})"
            )
        if loss == "cross_entropy":
            if labels.dtype.kind not in "iu":
                raise InvalidOptionError(
                    f"--data {path}: 'labels' has dtype {labels.dtype}; class ids must be "
                    "integers (for float targets use --loss mse and an array 'targets')")
            labels = labels.astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                raise InvalidOptionError(
                    f"--data {path}: labels span [{labels.min()}, {labels.max()}] but output "
                    f"{output!r} has {classes} classes (ids must be in [0, {classes}))")
        else:
            labels = _cast_checked(labels, np.dtype(np.float32), f"--data {path}: 'targets'")
    counts = {name: len(a) for name, a in inputs.items()}
    if labels is not None:
        counts["labels" if loss == "cross_entropy" else "targets"] = len(labels)
    if len(set(counts.values())) > 1:
        raise InvalidOptionError(
            f"--data {path}: arrays disagree on the number of samples ("
            + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")")
    samples = next(iter(counts.values()), 0)
    if samples < batch_size:
        raise InvalidOptionError(
            f"--data {path}: {samples} samples, fewer than the batch size {batch_size} "
            "(lower --batch-size or add samples)")
    return inputs, labels


class DataSource:
    """Batches for data-driven methods, from an .npz file or synthetic. Build with
    :func:`data_source`.

    ``batch(index)`` depends only on (seed, index). From a file: epoch ``e = index // m`` (with
    ``m = samples // batch_size`` full batches per epoch) is a permutation of the samples drawn
    from ``seed`` and ``e``; batch ``index`` is its slice ``[(index mod m) B, (index mod m + 1) B)``.
    Synthetic: every batch is drawn fresh from the generator seeded with ``(seed, index)``.
    """

    def __init__(self, graph: ModelGraph, *, batch_size: int, seed: int, loss: str,
                 output: str, inputs: dict[str, np.ndarray] | None = None,
                 labels: np.ndarray | None = None):
        self.graph = graph
        self.batch_size = batch_size
        self.seed = seed
        self.loss = loss
        self.output = output
        self.synthetic = inputs is None
        self._inputs, self._labels = inputs, labels
        self.label_shape, self.classes = _label_shape(graph, output, loss, batch_size)
        self.shapes = {n: _batch_shape(graph, n, batch_size) for n in graph.input_names}
        self.samples = None if inputs is None else len(next(iter(inputs.values())))

    def batch(self, index: int) -> Batch:
        if index < 0:
            raise InvalidOptionError(f"batch index must be >= 0, not {index}")
        if self.synthetic:
            return self._synthetic(index)
        per_epoch = self.samples // self.batch_size
        epoch, k = divmod(index, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.samples)
        rows = np.sort(order[k * self.batch_size:(k + 1) * self.batch_size])
        feeds = {n: np.ascontiguousarray(a[rows]) for n, a in self._inputs.items()}
        labels = None if self._labels is None else np.ascontiguousarray(self._labels[rows])
        return Batch(feeds=feeds, labels=labels)

    def _synthetic(self, index: int) -> Batch:
        rng = np.random.default_rng([self.seed, index])
        feeds = synthetic_feeds(self.graph, rng=rng, shapes=self.shapes)
        labels = None
        if self.loss == "cross_entropy":
            labels = rng.integers(0, self.classes, size=self.label_shape).astype(np.int64)
        elif self.loss == "mse":
            labels = rng.standard_normal(self.label_shape).astype(np.float32)
        return Batch(feeds=feeds, labels=labels)


def data_source(
    graph: ModelGraph,
    path: str | os.PathLike | None = None,
    *,
    batch_size: int,
    seed: int,
    loss: str = "cross_entropy",
    loss_output: str | None = None,
    notice: bool = True,
) -> DataSource:
    """Batches of ``batch_size`` for ``graph``: from the .npz at ``path`` (arrays keyed by
    input name, plus ``labels`` or ``targets``), or synthetic (Gaussian / token-id inputs,
    uniform labels in [0, classes), Gaussian targets) with one notice that real data works
    better (unless ``notice`` is False: a task-agnostic method). Every problem with the file is an InvalidOptionError naming it."""
    if loss not in LOSSES:
        raise InvalidOptionError(f"--loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    if batch_size < 1:
        raise InvalidOptionError(f"--batch-size must be at least 1, not {batch_size}")
    output = _loss_output(graph, loss_output)
    if path is None:
        if notice and not _NOTICE["shown"]:
            _NOTICE["shown"] = True
            log.warning("no --data given: using synthetic random inputs and labels; "
                        "data-driven methods work better with real data (--data FILE.npz)")
        return DataSource(graph, batch_size=batch_size, seed=seed, loss=loss, output=output)
    path = str(path)
    inputs, labels = _validated_arrays(graph, _read_npz(path), path, batch_size=batch_size,
                                       loss=loss, output=output)
    return DataSource(graph, batch_size=batch_size, seed=seed, loss=loss, output=output,
                      inputs=inputs, labels=labels)


__all__ = ["LOSSES", "Batch", "DataSource", "data_source", "synthetic_feeds", "vocab_size"]
