"""Residual structure: the Adds where a signal that forked meets itself again.

A *residual block* is an ``Add`` (or ``Sum``) of signals of the same shape whose inputs diverged
from a common tensor ``x``, the block input. Each input of the Add reaches back to ``x`` through
a *path*: the nodes strictly between ``x``'s producer and the Add. The path with the fewest
parametric nodes (Conv/ConvTranspose/Gemm/MatMul with a constant weight) is the *skip*
(no node at all for an identity shortcut, one 1x1 Conv for a projection shortcut); each other
path that holds at least one parametric node is a *branch*.

How ``x`` is found. Take the graph of signal-producing nodes, with one node per graph input and
a virtual source above them. ``x`` is produced by the *fork*: the latest common ancestor (in
topological order) of the Add's input producers. The immediate dominator of the Add would be
the same node in a plain ResNet, but not in a transformer: the attention mask, computed from
another graph input, enters the attention branch, so every dominator of the residual Add is the
virtual source. The path of each input is then what lies between the fork and the Add: the
ancestors of the input's producer that descend from the fork (so side inputs such as the mask
are not on it). Forks inside a branch (Q, K, V of attention; BatchNormalization statistics)
stay inside the branch. An Add whose only common ancestor is the virtual source (two different
graph inputs: token-type embeddings added to word embeddings) is not a block; neither is an Add
with a constant operand (a Linear's bias), nor one that broadcasts (a mask added to scores).

The *end* of a branch is its last parametric layer: the parametric nodes reached by walking
back from the Add without crossing another parametric node. Its *depth* is the longest chain of
parametric nodes along the branch (3 for a ResNet bottleneck, 2 for attention: V then the output
projection).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from .graph import ModelGraph

_SOURCE = "\0source"
_INPUT = "\0input:"
ADD_OPS = {"Add", "Sum"}


@dataclass(frozen=True)
class Path:
    """One input of a residual Add traced back to the block input."""

    input_index: int  # which input of the Add
    tensor: str  # the Add's input tensor
    nodes: tuple[str, ...]  # node ids between the block input and the Add, topological order
    parametric: tuple[str, ...]  # the parametric ones among them, topological order
    ends: tuple[str, ...]  # last parametric layers (no parametric node after them on the path)
    depth: int  # longest chain of parametric nodes


@dataclass(frozen=True)
class ResidualBlock:
    add: str  # node id of the Add/Sum
    input: str  # tensor the skip and the branch(es) start from
    output: str  # the Add's output
    skip: Path
    branches: tuple[Path, ...]

    @property
    def branch(self) -> list[str]:
        """Parametric nodes of every branch, topological order."""
        return [n for b in self.branches for n in b.parametric]

    @property
    def branch_ends(self) -> list[str]:
        return [n for b in self.branches for n in b.ends]

    @property
    def branch_end(self) -> str:
        """The last parametric layer of the (deepest) branch."""
        deepest = max(self.branches, key=lambda b: (b.depth, len(b.parametric)))
        return deepest.ends[-1]

    @property
    def depth(self) -> int:
        return max(b.depth for b in self.branches)

    @property
    def identity_skip(self) -> bool:
        return not self.skip.parametric

    def to_dict(self) -> dict:
        return {
            "add": self.add,
            "branch": self.branch,
            "branch_end": self.branch_end,
            "skip": list(self.skip.parametric),
            "depth": self.depth,
        }


def residual_blocks(graph: ModelGraph) -> list[ResidualBlock]:
    """Every residual block of ``graph``, in topological order of their Adds."""
    signal_graph = _signal_graph(graph)
    parametric = set(graph.parametric_nodes)
    position = {n: i for i, n in enumerate(graph.order)}
    for k, name in enumerate(graph.input_names):
        position[_INPUT + name] = -1 - k
    position[_SOURCE] = -1 - len(graph.input_names)
    blocks = []
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type in ADD_OPS and node.domain in ("", "ai.onnx"):
            block = _block(graph, signal_graph, node_id, parametric, position)
            if block is not None:
                blocks.append(block)
    return blocks


class _Adjacency:
    """A directed graph as insertion-ordered predecessor and successor sets."""

    def __init__(self):
        self._pred: dict[str, dict[str, None]] = {}
        self._succ: dict[str, dict[str, None]] = {}

    def add_node(self, n: str) -> None:
        self._pred.setdefault(n, {})
        self._succ.setdefault(n, {})

    def add_edge(self, a: str, b: str) -> None:
        self.add_node(a)
        self.add_node(b)
        self._succ[a][b] = None
        self._pred[b][a] = None

    def predecessors(self, n: str):
        return iter(self._pred[n])

    def successors(self, n: str):
        return iter(self._succ[n])


def _signal_graph(graph: ModelGraph) -> _Adjacency:
    """Nodes that produce signals, one node per graph input, and a virtual source."""
    g = _Adjacency()
    g.add_node(_SOURCE)
    for name in graph.input_names:
        g.add_edge(_SOURCE, _INPUT + name)
    for node_id in graph.order:
        if graph.is_shape_node(node_id):
            continue
        g.add_node(node_id)
        has_pred = False
        for name in graph.inputs_of(node_id):
            if name in graph.input_names:
                g.add_edge(_INPUT + name, node_id)
                has_pred = True
            elif name in graph.producer and not graph.is_shape_node(graph.producer[name]):
                g.add_edge(graph.producer[name], node_id)
                has_pred = True
        if not has_pred:  # fed by constants only, e.g. a random-number node
            g.add_edge(_SOURCE, node_id)
    return g


def _start(graph: ModelGraph, tensor: str) -> str:
    producer = graph.producer.get(tensor)
    return _INPUT + tensor if producer is None else producer


def _fork(signal_graph: _Adjacency, starts: list[str], position: dict) -> str | None:
    """The latest (in topological order) common ancestor of ``starts``, or None.

    Walk backwards in decreasing topological position, carrying the set of starts that reach
    each node; when a node is popped, every successor that could reach it was popped before,
    so the first node reached by all starts is the latest common ancestor."""
    full = frozenset(range(len(starts)))
    reach: dict[str, set[int]] = {}
    heap: list[tuple[int, str]] = []
    for i, s in enumerate(starts):
        if s not in reach:
            reach[s] = set()
            heapq.heappush(heap, (-position[s], s))
        reach[s].add(i)
    while heap:
        _, n = heapq.heappop(heap)
        if reach[n] == full:
            return None if n == _SOURCE else n
        for pred in signal_graph.predecessors(n):
            if pred not in reach:
                reach[pred] = set()
                heapq.heappush(heap, (-position[pred], pred))
            reach[pred] |= reach[n]
    return None


def _block(graph, signal_graph, add, parametric, position) -> ResidualBlock | None:
    node = graph.node(add)
    inputs = [(i, t) for i, t in enumerate(node.input) if graph.is_signal(t)]
    if len(inputs) < 2 or len({t for _, t in inputs}) < len(inputs):
        return None
    out_shape = graph.shape(node.output[0])
    if out_shape is not None and any(graph.shape(t) not in (None, out_shape) for _, t in inputs):
        return None  # a broadcasting add (mask, bias-like signal), not a residual join
    fork = _fork(signal_graph, [_start(graph, t) for _, t in inputs], position)
    if fork is None:  # the inputs share no tensor (two graph inputs): not a residual join
        return None
    paths = [_path(graph, signal_graph, i, t, fork, parametric, position) for i, t in inputs]
    skip = min(paths, key=lambda p: (len(p.parametric), len(p.nodes), p.input_index))
    branches = tuple(p for p in paths if p is not skip and p.parametric)
    if not branches or any(len(b.parametric) <= len(skip.parametric) for b in branches):
        return None  # no branch, or parallel paths of equal weight (a merge, not a residual)
    return ResidualBlock(add, _block_input(graph, signal_graph, fork), node.output[0], skip,
                         branches)


def _block_input(graph: ModelGraph, signal_graph: _Adjacency, fork: str) -> str:
    if fork.startswith(_INPUT):
        return fork[len(_INPUT):]
    outputs = [o for o in graph.node(fork).output if graph.is_signal(o)]
    used = {n for succ in signal_graph.successors(fork) for n in graph.inputs_of(succ)}
    return next((o for o in outputs if o in used), outputs[0])


def _path(graph, signal_graph, index, tensor, fork, parametric, position) -> Path:
    """Nodes strictly between ``fork`` and the Add on the route of input ``tensor``: ancestors
    of the input's producer that descend from ``fork`` (side inputs such as an attention mask
    computed from another graph input are not on the path)."""
    start = _start(graph, tensor)
    low = position[fork]
    candidates: set[str] = set()
    if start != fork:
        candidates.add(start)
        queue = deque([start])
        while queue:
            for pred in signal_graph.predecessors(queue.popleft()):
                if position[pred] > low and pred not in candidates:
                    candidates.add(pred)
                    queue.append(pred)
    nodes: set[str] = set()
    queue = deque(s for s in signal_graph.successors(fork) if s in candidates)
    while queue:
        n = queue.popleft()
        if n not in nodes:
            nodes.add(n)
            queue.extend(s for s in signal_graph.successors(n) if s in candidates)
    ordered = tuple(sorted((n for n in nodes if n in graph.node_by_id), key=position.get))
    params = tuple(n for n in ordered if n in parametric)
    # last parametric layers: walk back from the Add's input, stopping at parametric nodes
    ends, seen = set(), set()
    queue = deque([start] if start in nodes else [])
    while queue:
        n = queue.popleft()
        if n in seen:
            continue
        seen.add(n)
        if n in parametric:
            ends.add(n)
            continue
        queue.extend(p for p in signal_graph.predecessors(n) if p in nodes)
    # longest chain of parametric nodes, by dynamic programming in topological order
    chain: dict[str, int] = {}
    for n in ordered:
        best = max((chain[p] for p in signal_graph.predecessors(n) if p in chain), default=0)
        chain[n] = best + (n in parametric)
    return Path(
        input_index=index,
        tensor=tensor,
        nodes=ordered,
        parametric=params,
        ends=tuple(n for n in ordered if n in ends),
        depth=max(chain.values(), default=0),
    )
