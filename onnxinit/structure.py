"""The structure of a prepared model: nodes in topological order, who produces and who consumes
each tensor, each tensor's element type and static shape, and which tensors are constants.

Every tensor is a *signal* (a float tensor whose value depends on the graph inputs: an
activation), a *constant* (an initializer, a Constant output, a Shape/Size of a static tensor,
or computed only from constants, e.g. the exporter's Shape/Gather/Concat subgraphs), or an
integer tensor computed from signals. :class:`~onnxinit.graph.ModelGraph` builds on this with
constant values and parameters.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterable
from functools import cached_property
from itertools import chain

import onnx
from onnx import TensorProto

from .dtypes import FLOAT_TYPES
from .errors import ModelLoadError
from .passes import RANDOM_OPS, described, is_static


def implicit_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors read inside a node's subgraphs (If/Loop/Scan bodies)."""
    names: list[str] = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            defined = {i.name for i in g.input} | {t.name for t in g.initializer}
            for inner in g.node:
                for name in list(inner.input) + implicit_inputs(inner):
                    if name and name not in defined and name not in names:
                        names.append(name)
                defined.update(inner.output)
    return names


def _has_subgraphs(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute)


def node_ids(nodes) -> list[str]:
    """Each node's id: its name, or ``OpType_i`` by its position; a repeated one gets ``__k``."""
    ids, seen = [], set()
    for i, node in enumerate(nodes):
        base = node.name or f"{node.op_type}_{i}"
        node_id, k = base, 1
        while node_id in seen:
            node_id, k = f"{base}__{k}", k + 1
        seen.add(node_id)
        ids.append(node_id)
    return ids


class GraphStructure:
    """Indexes of ``self.model`` (set by the subclass before :meth:`_index`): ``node_by_id``,
    ``producer``, ``consumers``, ``order``, ``dtypes``, ``shapes``, ``constants``."""

    name: str
    model: onnx.ModelProto
    source: onnx.ModelProto
    initializers: dict[str, onnx.TensorProto]
    input_names: list[str]
    output_names: list[str]
    input_shapes: dict[str, tuple[int, ...]]

    # indexing ---------------------------------------------------------------------------------

    def _index_tensors(self, value_info: Iterable[tuple] | None = None) -> None:
        """Element types and shapes from the graph's inputs, value_info and outputs;
        ``value_info``: the value_info already read (:func:`~onnxinit.passes.described`)."""
        g = self.model.graph
        self.shapes: dict[str, tuple | None] = {}
        self.dtypes: dict[str, int] = {}
        if value_info is None:
            value_info = map(described, g.value_info)
        for name, elem_type, shape, level in chain(map(described, g.input), value_info,
                                                   map(described, g.output)):
            if elem_type is not None:
                self.dtypes[name] = elem_type
                # a graph output declared with symbolic dims keeps the inferred static shape
                # (level 3: a static shape)
                if level == 3 or not is_static(self.shapes.get(name)):
                    self.shapes[name] = shape
        for t in g.initializer:
            self.dtypes[t.name] = t.data_type
            self.shapes[t.name] = tuple(t.dims)
        for name, shape in self.input_shapes.items():
            self.shapes[name] = shape

    def _index_nodes(self) -> None:
        nodes = list(self.model.graph.node)
        ids = node_ids(nodes)
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[tuple[str, int]]] = {}
        self.node_by_id: dict[str, onnx.NodeProto] = {}
        self._implicit: dict[str, list[str]] = {}
        read = {}  # each node's inputs (implicit ones included) and outputs, read once
        producer, consumers = self.producer, self.consumers
        for node_id, node in zip(ids, nodes):
            self.node_by_id[node_id] = node
            outputs = list(node.output)
            for out in outputs:
                if out:
                    producer[out] = node_id
            implicit = implicit_inputs(node) if _has_subgraphs(node) else []
            self._implicit[node_id] = implicit
            inputs = list(node.input) + implicit
            for idx, name in enumerate(inputs):
                if name:
                    if name in consumers:
                        consumers[name].append((node_id, idx))
                    else:
                        consumers[name] = [(node_id, idx)]
            read[node_id] = (inputs, outputs)
        self.order = self._topological_order(ids, read)
        # what _classify_tensors reads of each node, in topological order, read once
        self._classified = []
        for node_id in self.order:
            node = self.node_by_id[node_id]
            op_type, inputs, outputs = node.op_type, *read[node_id]
            default = node.domain in ("", "ai.onnx")
            kind = ("dropout" if default and op_type == "Dropout" else
                    "random" if default and op_type in RANDOM_OPS else
                    "shape" if default and op_type in ("Shape", "Size") else
                    "castlike" if default and op_type == "CastLike" else "")
            self._classified.append((node, kind, [n for n in inputs if n],
                                     [o for o in outputs if o]))

    def _topological_order(self, ids: list[str], read: dict[str, tuple[list, list]]
                           ) -> list[str]:
        """Nodes in topological order, ties broken by their position in the file (Kahn's
        algorithm with a heap: the file's order when it is already topological); ``read``:
        each node's inputs (implicit ones included) and outputs."""
        position = {node_id: i for i, node_id in enumerate(ids)}
        successors: dict[str, set[str]] = {node_id: set() for node_id in ids}
        waiting = dict.fromkeys(ids, 0)
        producer = self.producer
        for node_id in ids:
            sources = {producer.get(name) for name in read[node_id][0] if name}
            sources.discard(None)
            sources.discard(node_id)
            waiting[node_id] = len(sources)
            for src in sources:
                successors[src].add(node_id)
        ready = [position[n] for n, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            node_id = ids[heapq.heappop(ready)]
            order.append(node_id)
            for succ in successors[node_id]:
                waiting[succ] -= 1
                if waiting[succ] == 0:
                    heapq.heappush(ready, position[succ])
        if len(order) < len(ids):
            raise ModelLoadError(f"{self.name}: the graph has a cycle")
        return order

    def _classify_tensors(self) -> None:
        """Constants: initializers, Constant outputs, Shape/Size of static tensors, CastLike of
        a constant (to the other input's type), and outputs of deterministic nodes whose inputs
        are all constant."""
        self.constants: set[str] = set(self.initializers)
        constants = self.constants
        for node, kind, inputs, outputs in self._classified:
            if kind == "random":
                constant = False
            elif kind == "dropout":  # the identity, as the analysis takes it: of a constant
                constant = node.input[0] in constants  # (a position table), a constant
                outputs = outputs[:1]
            elif kind == "shape":
                constant = is_static(self.shapes.get(node.input[0]))
            elif kind == "castlike":  # input 1 gives only its type: dynamo's zero Conv bias
                constant = node.input[0] in constants  # CastLike(Constant 0, x), unoptimized
            else:
                constant = (constants.issuperset(inputs)
                            or self._uniform_gather(node) is not None)
            if constant:
                constants.update(outputs)

    def _uniform_gather(self, node) -> object | None:
        """The value every element of ``node``'s output takes when it gathers from a constant
        integer tensor whose entries all hold that value (whatever the indices), else None.
        The structure knows no values: :class:`~onnxinit.graph.ModelGraph` answers."""
        return None

    # classification ---------------------------------------------------------------------------

    def is_float(self, tensor: str) -> bool:
        return self.dtypes.get(tensor, TensorProto.FLOAT) in FLOAT_TYPES

    @cached_property
    def position(self) -> dict[str, int]:
        """Each node's index in ``order`` (topological)."""
        return {n: i for i, n in enumerate(self.order)}

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def is_signal(self, tensor: str) -> bool:
        """A float tensor whose value depends on the graph inputs (an activation)."""
        return bool(tensor) and tensor not in self.constants and self.is_float(tensor)

    def is_shape_node(self, node_id: str) -> bool:
        """True for nodes of the shape-computation subgraphs (no signal output)."""
        return not any(self.is_signal(o) for o in self.node_by_id[node_id].output)

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        shape = self.shapes.get(tensor)
        return tuple(shape) if is_static(shape) else None

    def missing_shapes(self) -> list[str]:
        """Signals produced by a node whose shape is not static."""
        return [t for t in self.producer if self.is_signal(t) and not is_static(self.shapes.get(t))]

    def settled(self, folded: Container[str], nodes: set[str]) -> list[str]:
        """The outputs of the nodes newly settled: nodes whose values no other node needs once
        the tensors in ``folded`` stand in as values (every output a constant, not a graph
        output, and folded or read only by settled nodes; walked from the last node back).
        ``nodes``: the nodes settled before, with fewer constants and fewer folded (each stays
        settled), skipped and added to."""
        constants, consumers = self.constants, self.consumers
        outputs = {o.name for o in self.model.graph.output}
        names: list[str] = []
        for node_id, (_, _, _, produced) in zip(reversed(self.order), reversed(self._classified)):
            if node_id in nodes or not produced:
                continue
            for o in produced:
                if o not in constants or o in outputs or (
                        o not in folded and not all(c in nodes for c, _ in consumers.get(o, ()))):
                    break
            else:
                nodes.add(node_id)
                names.extend(produced)
        return names

    # queries ----------------------------------------------------------------------------------

    @property
    def nx(self):
        """The nodes as a ``networkx.DiGraph`` (node attributes ``op_type``, ``domain``; edge
        attribute ``tensors``: the tensors passed from one node to the other). Built on first use
        and cached: the analysis itself does not need networkx, so it is imported only here."""
        graph = self.__dict__.get("_nx")
        if graph is None:
            import networkx  # heavy to import: only for users of this view

            graph = networkx.DiGraph()
            for node_id in self.order:
                node = self.node_by_id[node_id]
                graph.add_node(node_id, op_type=node.op_type, domain=node.domain)
            for node_id in self.order:
                for name in list(self.node_by_id[node_id].input) + self._implicit[node_id]:
                    src = self.producer.get(name)
                    if src is None or src == node_id:
                        continue
                    if graph.has_edge(src, node_id):
                        graph.edges[src, node_id]["tensors"].append(name)
                    else:
                        graph.add_edge(src, node_id, tensors=[name])
            self.__dict__["_nx"] = graph
        return graph

    def node(self, node_id: str) -> onnx.NodeProto:
        return self.node_by_id[node_id]

    def inputs_of(self, node_id: str) -> list[str]:
        return list(self.node_by_id[node_id].input)

    def implicit_inputs_of(self, node_id: str) -> list[str]:
        """Outer-scope tensors the node's subgraphs read."""
        return self._implicit.get(node_id, [])

    def model_inputs(self) -> list[onnx.ValueInfoProto]:
        return [i for i in self.source.graph.input if i.name not in self.initializers]

    def user_tensors(self) -> dict[str, tuple[str, str]]:
        """The tensors of the model as given (``source``: its graph's inputs and the outputs of
        its top-level nodes), each with the id and op type of the node that writes it there
        (``""``, ``"input"`` for an input; ids as in the analysed graph: the node's name, or
        ``OpType_i`` by its position). The passes that prepare a graph for analysis add tensors
        of their own (``prepared/...``) and may write a user's tensor with another op (a
        channels-last Reshape as a Transpose, a Tile as a Resize); a report names what the
        user's file has."""
        if "_user_tensors" not in self.__dict__:
            out = {i.name: ("", "input") for i in self.source.graph.input}
            nodes = self.source.graph.node
            for node_id, node in zip(node_ids(nodes), nodes):
                out.update((o, (node_id, node.op_type)) for o in node.output if o)
            self.__dict__["_user_tensors"] = out
        return self.__dict__["_user_tensors"]

    def writer(self, tensor: str) -> tuple[str, str]:
        """The id and op type of the node that writes ``tensor`` in the user's file
        (:meth:`user_tensors`); for a tensor a pass added, its node in the analysed graph."""
        user = self.user_tensors().get(tensor)
        if user is not None:
            return user
        node = self.producer.get(tensor, "")
        return node, (self.node_by_id[node].op_type if node else "input")

    def float_activations(self) -> list[str]:
        """Signal tensors in topological order (graph inputs first), less those of no elements
        (a static shape with a 0: a Slice past the end has no variance to report)."""
        out = [i for i in self.input_names if self.is_signal(i)]
        for node_id in self.order:
            out.extend(o for o in self.node_by_id[node_id].output if self.is_signal(o))
        return [t for t in out if 0 not in (self.shapes.get(t) or ())]

    def subgraph_nodes(self) -> list[str]:
        return [n for n in self.order
                if self._implicit[n] or _has_subgraphs(self.node_by_id[n])]
