"""Shape inference that sees folded constants' values, round after round: each round infers
the nodes whose results can still matter and keeps the last inferred entries of the others."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from .base import model_pass
from .shapes import _inferred_light, value_info, without_large_data

log = logging.getLogger("onnxinit")

FOLDED_SUFFIX = "__onnxinit_folded"  # renamed producer outputs while a folded value stands in

@model_pass(in_place=False)
def infer_with_constants(model: onnx.ModelProto, constants: Mapping[str, np.ndarray]
                         ) -> list[onnx.ValueInfoProto] | None:
    """Value_info inferred with the tensors in ``constants`` (outputs of nodes of ``model``)
    known: each stands in as an initializer (its producer's output renamed), so shape inference
    sees the values where its own data propagation stopped (Mod, Slice of computed bounds).
    None when inference fails. The constants get value_info of their own values. (Only the
    light copy is made: the weights are not copied.) A caller's loop that adds constants round
    after round uses :class:`FoldedInference`."""
    return FoldedInference(model).infos(constants)


def _has_symbol(vi: onnx.ValueInfoProto) -> bool:
    """True when an entry names a dim (a ``dim_param``): onnx must not name a new dim so."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return False
    return any(d.HasField("dim_param") for d in vi.type.tensor_type.shape.dim)


class FoldedInference:
    """:func:`infer_with_constants` for rounds of a loop whose ``constants`` only grow (a dict
    the caller adds to): the light copy and its index of producers are made once, and each round
    adds only the constants it has not seen (their initializer, value_info and renamed producer
    output, made once).

    :meth:`infos` may be told the nodes left out of a round (``left_out``: their outputs): nodes
    whose outputs are all folded constants or read only by such nodes, so that no other node's
    inference reads them. The rest is inferred as in the whole model (every input it reads is
    the same); a left-out node keeps the entries of the last round that inferred it (the
    model's own value_info before the first). The entries come in the whole model's order (each
    node's outputs in node order, then the graph outputs, then the constants). Only the names
    onnx gives unknown dims (``unk__N``, from one counter per inference) differ from an
    inference of the whole model: the names kept from earlier rounds are declared, so a new
    unknown dim never takes one of them."""

    def __init__(self, model: onnx.ModelProto):
        self.work = without_large_data(model, value_info=False)
        graph = self.work.graph
        self.produced = {n: i for i, node in enumerate(graph.node) for n in node.output}
        # every node output in node order: the order of onnx's value_info
        self.outputs = [(n, i) for n, i in self.produced.items() if n]
        self.protos: dict[str, tuple] = {}  # name -> (initializer, value_info)
        self.last = {vi.name: vi for vi in model.graph.value_info}  # each tensor's last entry
        self.left: set[int] = set()  # nodes left out (a node once left out stays out)
        self.part: onnx.ModelProto | None = None  # the light copy less the nodes left out
        self.kept: list[int] = []  # the nodes of part (their indices in work)

    def infos(self, constants: Mapping[str, np.ndarray], left_out: Collection[str] = ()
              ) -> list[onnx.ValueInfoProto] | None:
        """What :func:`infer_with_constants` returns for ``model`` and ``constants``, but for
        the nodes producing ``left_out`` (and those left out before), whose entries are their
        last inferred ones."""
        new = [name for name in constants if name not in self.protos]
        for name in new:
            value = constants[name]
            self.protos[name] = (numpy_helper.from_array(value, name), value_info(name, value))
        work = self.work
        initializers = [self.protos[name][0] for name in new]
        work.graph.initializer.extend(initializers)
        renamed = []
        for name in new:
            i = self.produced[name]
            node = work.graph.node[i]
            k = list(node.output).index(name)
            node.output[k] = f"{name}{FOLDED_SUFFIX}"
            renamed.append((i, k))
        part = self._part(left_out, initializers, renamed)
        try:  # the constants are small (MAX_FOLDED_ELEMENTS): initializers, as without_large_data
            inferred = _inferred_light(part)
        except Exception as exc:  # noqa: BLE001 - best effort, as infer_shapes
            log.debug("shape inference with folded constants failed: %s", exc)
            return None
        fresh = {vi.name: vi for vi in inferred.value_info}
        left, last = self.left, self.last
        infos = []
        for tensor, i in self.outputs:
            if tensor in constants:
                continue
            vi = last.get(tensor) if i in left else fresh.get(tensor)
            if vi is not None:
                infos.append(vi)
                last[tensor] = vi
        # the graph outputs too: an exporter's output declared with symbolic dims (GPT-2's final
        # Reshape) is only known from here
        infos.extend(vi for vi in inferred.output if vi.name not in constants)
        infos.extend(self.protos[name][1] for name in constants)
        return infos

    def _part(self, left_out: Collection[str], initializers: list, renamed: list[tuple]
              ) -> onnx.ModelProto:
        """The light copy less the nodes left out (the producers of ``left_out`` added to
        them), with the entries of their outputs that name dims declared: ``initializers``
        added and the outputs ``renamed`` (node index, output index) in work renamed alike."""
        work, left, part = self.work, self.left, self.part
        if part is None:
            part = self.part = onnx.ModelProto()
            part.CopyFrom(work)
            self.kept = list(range(len(work.graph.node)))
        else:
            part.graph.initializer.extend(initializers)
            position = {i: p for p, i in enumerate(self.kept)} if renamed else {}
            for i, k in renamed:
                if i in position:
                    part.graph.node[position[i]].output[k] = work.graph.node[i].output[k]
        new = {self.produced[t] for t in left_out if t in self.produced} - left
        if new:
            left |= new
            last = self.last
            part.graph.value_info.extend(  # their names stay theirs: no new dim takes one
                vi for i in sorted(new) for name in work.graph.node[i].output
                if (vi := last.get(name)) is not None and _has_symbol(vi))
            runs: list[list[int]] = []  # [start, end) of part's nodes to drop, from the last
            for p in range(len(self.kept) - 1, -1, -1):
                if self.kept[p] in new:
                    if runs and runs[-1][0] == p + 1:
                        runs[-1][0] = p
                    else:
                        runs.append([p, p + 1])
            for start, end in runs:
                del part.graph.node[start:end]
            self.kept = [i for i in self.kept if i not in new]
        return part
