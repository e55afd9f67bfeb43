"""ModelGraph: a loaded ONNX model with static shapes, constants and parameters.

Preconditions: a path to an ONNX file (external data beside it) or a ModelProto.
Postconditions: every graph input has a concrete shape (symbolic dims resolved from
``input_shapes`` / ``batch_size``); shape inference has run (the passes of
:mod:`onnxinit.passes`); each tensor is classified (:mod:`onnxinit.structure`) as a *signal*, a
*constant* or an integer tensor; constant values are folded on demand; the parameter table
(:mod:`onnxinit.parameters`) is built once. Rules only ever see signals as inputs with moments.

A ModelGraph is not changed by its users: :meth:`ModelGraph.with_values` gives a view with
other parameter values (methods choosing weights one layer at a time), sharing the rest; only
a view's maker may change that view (:meth:`ModelGraph.take_changes`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
import weakref
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx

from ._loading import dense_initializers, read_model
from .dtypes import INT_TYPES
from .errors import InvalidOptionError, ModelLoadError
from .feeds import synthetic_feeds
from .folded_values import FoldedValues
from .graph_views import ChangeViews
from .index_bounds import gather_out_of_range
from .input_shapes import (assumed_lengths, forget_unset_dims, resolve_input_shapes,
                           resolved_value_info)
from .node_checks import schema_violation
from .parameters import LAYOUT_OPS, PARAMETER_ROLES, WEIGHT_OPS, Layer, Parameter, ParameterTable
from .passes import (
    MAX_FOLDED_ELEMENTS,
    RANDOM_OPS,
    DeclaredMerge,
    FoldedInference,
    ModelReading,
    channels_first,
    endless_loop,
    infer_shapes,
    inference_batchnorms,
    is_static,
    measured_shapes,
    nearest_repeats,
    set_input_shapes,
    static_control,
    training_semantics,
)
from .plan import Change
from .structure import GraphStructure
from .validation import (check_initializers, check_structure, inconsistency, legacy_opset,
                         opset_mismatch, says_uncomputable, unknown_default_op, weight_mismatch)

log = logging.getLogger("onnxinit")

# ops whose output is a sequence of tensors
_SEQUENCE_OPS = frozenset({"SequenceEmpty", "SequenceConstruct", "SequenceInsert",
                           "SequenceErase", "SplitToSequence", "SequenceMap"})


class ModelGraph(FoldedValues, ChangeViews, GraphStructure):
    """An ONNX model prepared for analysis. Build with :func:`load`."""

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        path: Path | None = None,
        external: Mapping[str, str] | None = None,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        batch_size: int = 32,
        default_length: int = 128,
    ):
        self.source = model  # the model as given: write-back edits a copy of this
        self.path = path
        self.external = dict(external or {})
        self.name = str(path) if path else (model.graph.name or "<model>")
        self.warnings: list[str] = []
        self.batch_size = batch_size
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0
        )
        if self.opset == 0:
            raise ModelLoadError(f"{self.name}: the model imports no default-domain opset")
        check_structure(model, self.name)
        check_initializers(model, self.name)
        unknown = (schema_violation(model) or unknown_default_op(model) or legacy_opset(model)
                   or opset_mismatch(model))
        if unknown:
            raise ModelLoadError(f"{self.name}: not a valid ONNX model: {unknown}")
        endless = endless_loop(model)
        if endless:
            raise ModelLoadError(f"{self.name}: cannot be analysed: {endless}")
        known = onnx.defs.onnx_opset_version()
        if self.opset > known:
            self.warnings.append(
                f"the model imports opset {self.opset} of the default ONNX domain; "
                f"the installed onnx knows up to {known}: ops are read with their opset-{known} "
                f"meaning")

        self.initializers = {t.name: t for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in self.initializers]
        self.output_names = [o.name for o in model.graph.output]
        self.input_shapes, shape_warnings = resolve_input_shapes(
            self.model_inputs(), dict(input_shapes or {}), batch_size, default_length, self.name)
        self.warnings.extend(shape_warnings)
        # a symbolic length filled in (not the batch): a model may not take the size assumed
        self.assumed_lengths = assumed_lengths(self.model_inputs(), dict(input_shapes or {}))
        self._values: dict[str, np.ndarray] = {}
        self._sources: dict[str, int] = {}  # FoldedValues: the stored bytes behind a value
        self._folded: dict | None = {}  # FoldedValues: the values folded while loading
        self._root: ModelGraph | None = None  # set on views made by with_values
        self._stale: frozenset[str] | set[str] = frozenset()  # a set in take_changes' views
        self._changes: dict[str, Change] = {}  # on views made by with_changes
        # counts the changes of this object's values in place (take_changes, trying): what is
        # memoised from the values of a graph object keys on it
        self.generation = 0
        self.model = self._infer_shapes(model)
        self._index_tensors()
        self._index_nodes()
        self._classify_tensors()
        self._refine_shapes()
        self._fill_missing_shapes()
        mismatch = weight_mismatch(self.model.graph.node, self.shapes,
                                   {n: tuple(t.dims) for n, t in self.initializers.items()})
        if mismatch:
            raise ModelLoadError(f"{self.name}: not a valid ONNX model: {mismatch}")
        # (at an assumed length the model may take other sizes: its nodes are passed through)
        outside = None if self.assumed_lengths else gather_out_of_range(self)
        if outside:
            raise ModelLoadError(f"{self.name}: cannot run at its input shapes "
                                 f"({self._input_shapes_text()}): {outside}")

    # construction steps -----------------------------------------------------------------------

    def _infer_shapes(self, model: onnx.ModelProto) -> onnx.ModelProto:
        work = onnx.ModelProto()
        work.CopyFrom(model)
        set_input_shapes(work, self.input_shapes)
        forget_unset_dims(work.graph.output)
        work = static_control(work)  # constant If conditions, tensor_split's Loop: plain ops
        inferred, warning, strict_failed = infer_shapes(work, resolved_value_info(
            list(work.graph.value_info), self.model_inputs(), self.input_shapes))
        if strict_failed:
            reason = inconsistency(self.source)
            if reason:
                raise ModelLoadError(f"{self.name}: not a valid ONNX model (onnxruntime refuses "
                                     f"it too): {reason}")
        if warning:
            self.warnings.append(warning)
        reading = ModelReading(inferred)  # read once for both passes (the first often no-op)
        prepared = nearest_repeats(inference_batchnorms(inferred, reading), reading)
        return channels_first(prepared, reading)

    def _refine_shapes(self):
        """Where shape inference left tensors without a static shape (onnx's data propagation
        stops at ops such as Mod or Slice of computed bounds), fold the integer constants that
        feed non-constant nodes (Reshape/Expand/Slice shape inputs, ...), let shape inference see
        their values (:class:`~onnxinit.passes.FoldedInference`, the settled nodes left out),
        and reclassify: a Shape of a tensor whose shape became static is constant, and so is
        everything computed from it. Repeats until nothing changes, however many rounds that
        takes (each folds a constant not examined before, so it ends): below opset 13 onnx's
        data propagation does not go through Unsqueeze's ``axes`` attribute, so each head split
        of a transformer waits for the round of the layer before (a cap of 8 rounds left
        MobileViT's last layers at opset 9 without shapes, their rules passed through).
        ``self.model`` keeps its nodes; only its value_info grows."""
        injected: dict[str, np.ndarray] = {}
        inference: FoldedInference | None = None  # infer_with_constants, round after round
        merge: DeclaredMerge | None = None
        examined: set[str] = set()  # constants looked at (those folded are in injected)
        settled: set[str] = set()  # nodes left out of the inference (settled)
        while True:
            if all(is_static(self.shapes.get(t)) for t in self.producer
                   if t not in self.constants):
                break
            new = self._foldable_constants(examined)
            if not new:
                break
            injected.update(new)
            inference = inference or FoldedInference(self.model)
            infos = inference.infos(injected, self.settled(injected, settled))
            if infos is None:
                break
            # keep_declared(graph, graph.value_info, replace=infos) in Python until the end
            merge = merge or DeclaredMerge(self.model.graph)
            merge.replace(infos)
            self._index_tensors(merge.entries)
            self._classify_tensors()
        if merge is not None:
            merge.write(self.model.graph)
        for name, value in self._folded.items():  # folded constants know their shapes
            if not is_static(self.shapes.get(name)):
                self.shapes[name] = tuple(np.shape(value))
        self._folded = None

    def _foldable_constants(self, examined: set[str]) -> dict[str, np.ndarray]:
        """Constants computed by nodes that meet a non-constant node, folded: integer ones
        (shape inference reads their values) and others whose shape is unknown (it needs their
        shape: ViT's class token expanded to the batch, before a Concat, would otherwise leave
        a shape to measure by running the whole model). ``examined``: the
        tensors looked at in earlier rounds, skipped, and added to: one turned down stays turned
        down (constants and static shapes only grow from round to round, and a fold that failed
        fails again), so each round looks only at the constants new since the last."""
        new = {}
        candidates = self.constants - examined
        examined |= candidates
        candidates -= self.initializers.keys()
        for tensor in sorted(candidates):
            if tensor not in self.producer:
                continue
            if self.node_by_id[self.producer[tensor]].op_type in _SEQUENCE_OPS:
                continue  # a sequence, not a tensor: shape inference would be told it is one
            shape = self.shapes.get(tensor)
            if is_static(shape) and (self.dtypes.get(tensor) not in INT_TYPES
                                     or int(np.prod(shape)) > MAX_FOLDED_ELEMENTS):
                continue  # (one too large would be turned down below: not computed)
            if all(self.is_constant(o) for c, _ in self.consumers.get(tensor, [])
                   for o in self.node_by_id[c].output if o):
                continue  # only constants that meet a non-constant node matter
            try:
                value = self.value(tensor)
            except Exception as exc:  # noqa: BLE001 - a constant that cannot be folded stays unknown
                log.debug("could not fold %s: %s", tensor, exc)
                continue
            if value is not None and np.size(value) <= MAX_FOLDED_ELEMENTS:
                new[tensor] = np.asarray(value)
        return new

    def _fill_missing_shapes(self):
        missing = self.missing_shapes()
        if not missing:
            return
        try:
            measured = measured_shapes(
                self.model, synthetic_feeds(self), missing, self.dtypes,
                lambda run: training_semantics(run, self.shapes, self.dtypes))
        except Exception as exc:  # noqa: BLE001 - the model cannot run here: rules fall back
            reason = " ".join(str(exc).split())
            # an op's inputs clash once the shapes are computed, at input shapes that are the
            # model's own, the user's or an assumed batch (an assumed length may be one the
            # model cannot take: then the analysis goes on without those shapes)
            if says_uncomputable(reason) and not self.assumed_lengths:
                raise ModelLoadError(f"{self.name}: not a valid ONNX model: onnxruntime cannot "
                                     f"run it either (inputs {self._input_shapes_text()}): "
                                     f"{reason}") from None
            self.warnings.append(f"could not run the model to measure shapes: {exc}")
            measured = {}
        self.shapes.update(measured)
        if measured:  # a Shape of a tensor measured static is a constant, and what it computes
            self._classify_tensors()
        if len(measured) < len(missing):
            self.warnings.append(
                f"{len(missing) - len(measured)} tensor shapes could not be determined"
            )

    def _input_shapes_text(self) -> str:
        return ", ".join(f"{n} {'x'.join(map(str, s)) or 'scalar'}"
                         for n, s in self.input_shapes.items()) or "no inputs"

    # parameters -------------------------------------------------------------------------------

    @property
    def root(self) -> ModelGraph:
        """The graph this view was made from (itself when it is not a view): the key of what
        depends on the structure alone, which every view shares."""
        return self._root if self._root is not None else self

    @property
    def table(self) -> ParameterTable:
        """The parameter table (built once per model, shared by views)."""
        return self._root.table if self._root is not None else self._table

    @cached_property
    def _table(self) -> ParameterTable:
        graph = weakref.ref(self)  # the table must not keep its graph alive (a cycle)
        return ParameterTable(self, lambda tensor: graph()._weight_shape(tensor))

    def _weight_shape(self, tensor: str) -> tuple[int, ...]:
        return self.shape(tensor) or tuple(self.value(tensor).shape)

    @property
    def parameters(self) -> dict[str, Parameter]:
        """Float initializers that reach a node mixing them with signals, with their roles."""
        return self.table.parameters

    def parameter_of(self, tensor: str) -> str | None:
        """The initializer a constant input comes from, through layout ops (Transpose, Cast...)."""
        return self.table.parameter_of(tensor)

    @property
    def layers(self) -> list[Layer]:
        """The weighted layers (Conv, ConvTranspose, Gemm, MatMul), in topological order."""
        return self.table.layers

    @property
    def parametric_nodes(self) -> list[str]:
        """Nodes (in topological order) with a weight: Conv, ConvTranspose, Gemm, MatMul."""
        return [layer.node for layer in self.table.layers]

    def weight_input(self, node_id: str) -> int | None:
        """Index of the constant weight input of a Conv/Gemm/MatMul node, if it has one."""
        return self.table.weight_input(node_id)

    def fan_in_out(self, node_id: str) -> tuple[int, int]:
        """(fan_in, fan_out) of a parametric node (see :meth:`ParameterTable.fan_in_out`)."""
        return self.table.fan_in_out(node_id)

    def copy_source(self) -> onnx.ModelProto:
        return copy.deepcopy(self.source)


def load(
    model: str | os.PathLike | onnx.ModelProto | ModelGraph,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch_size: int = 32,
) -> ModelGraph:
    """Load a model (path or ModelProto) into a :class:`ModelGraph`."""
    if isinstance(model, ModelGraph):
        return model
    if batch_size < 1:
        raise InvalidOptionError(f"--batch-size must be at least 1, not {batch_size}")
    start = time.perf_counter()
    if isinstance(model, onnx.ModelProto):
        try:
            model = dense_initializers(model)
        except ValueError as exc:
            raise ModelLoadError(f"{model.graph.name or '<model>'}: not a valid ONNX model: "
                                 f"{exc}") from None
        graph = ModelGraph(model, input_shapes=input_shapes, batch_size=batch_size)
    else:
        path = Path(model)
        proto, external = read_model(path)
        graph = ModelGraph(proto, path=path, external=external, input_shapes=input_shapes,
                           batch_size=batch_size)
    log.info("loaded %s in %.2f s (shape inference, constant folding): %d nodes, opset %d, "
             "%d parameters, inputs %s", graph.name, time.perf_counter() - start,
             len(graph.order), graph.opset, len(graph.parameters),
             ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in graph.input_shapes.items()))
    return graph


__all__ = ["LAYOUT_OPS", "PARAMETER_ROLES", "RANDOM_OPS", "WEIGHT_OPS", "Layer", "ModelGraph",
           "Parameter", "load"]
