"""The graph of signal-producing nodes, and the routes signals take between a fork and a join.

Nodes: every node with a signal output (shape computations are left out), one node per graph
input (``INPUT + name``) and a virtual ``SOURCE`` above the inputs and above nodes fed by
constants only (a random-number node). :mod:`onnxinit.residual` traces residual blocks on it and
:mod:`onnxinit.signal_path` the side paths (gates, attention weights, normalization statistics).

- :meth:`SignalGraph.fork`: the latest common ancestor (in topological order) of some nodes, where
  the signals that meet again at a join parted;
- :meth:`SignalGraph.path`: the nodes strictly between a fork and a join on the route of one
  input of the join (side inputs from elsewhere, such as a mask, are not on it);
- :meth:`SignalGraph.exclusive_ancestors`: the nodes that feed one input of a join and not the
  other (the whole side path of a gate, mask computations from other graph inputs included).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

import networkx as nx

from .graph import ModelGraph

SOURCE = "\0source"
INPUT = "\0input:"


@dataclass(frozen=True)
class Path:
    """One input of a join traced back to the fork."""

    input_index: int  # which input of the join
    tensor: str  # the join's input tensor
    nodes: tuple[str, ...]  # node ids between the fork and the join, topological order
    parametric: tuple[str, ...]  # the parametric ones among them, topological order
    ends: tuple[str, ...]  # last parametric layers (no parametric node after them on the path)
    depth: int  # longest chain of parametric nodes


class SignalGraph:
    def __init__(self, graph: ModelGraph):
        self.graph = graph
        self.nx = _signal_graph(graph)
        self.parametric = set(graph.parametric_nodes)
        self.position = {n: i for i, n in enumerate(graph.order)}
        for k, name in enumerate(graph.input_names):
            self.position[INPUT + name] = -1 - k
        self.position[SOURCE] = -1 - len(graph.input_names)

    def start(self, tensor: str) -> str:
        """The signal-graph node a tensor comes from (its producer, or its input node)."""
        producer = self.graph.producer.get(tensor)
        return INPUT + tensor if producer is None else producer

    def fork(self, starts: list[str]) -> str | None:
        """The latest (in topological order) common ancestor of ``starts``, or None when it is
        the virtual source.

        Walk backwards in decreasing topological position, carrying the set of starts that reach
        each node; when a node is popped, every successor that could reach it was popped before,
        so the first node reached by all starts is the latest common ancestor."""
        full = frozenset(range(len(starts)))
        reach: dict[str, set[int]] = {}
        heap: list[tuple[int, str]] = []
        for i, s in enumerate(starts):
            if s not in reach:
                reach[s] = set()
                heapq.heappush(heap, (-self.position[s], s))
            reach[s].add(i)
        while heap:
            _, n = heapq.heappop(heap)
            if reach[n] == full:
                return None if n == SOURCE else n
            for pred in self.nx.predecessors(n):
                if pred not in reach:
                    reach[pred] = set()
                    heapq.heappush(heap, (-self.position[pred], pred))
                reach[pred] |= reach[n]
        return None

    def fork_tensor(self, fork: str) -> str:
        """The signal output of ``fork`` that its successors read (the block input)."""
        if fork.startswith(INPUT):
            return fork[len(INPUT):]
        outputs = [o for o in self.graph.node(fork).output if self.graph.is_signal(o)]
        used = {n for succ in self.nx.successors(fork) for n in self.graph.inputs_of(succ)}
        return next((o for o in outputs if o in used), outputs[0])

    def path(self, index: int, tensor: str, fork: str) -> Path:
        """Nodes strictly between ``fork`` and the join on the route of input ``tensor``:
        ancestors of the input's producer that descend from ``fork``."""
        start = self.start(tensor)
        low = self.position[fork]
        candidates: set[str] = set()
        if start != fork:
            candidates.add(start)
            queue = deque([start])
            while queue:
                for pred in self.nx.predecessors(queue.popleft()):
                    if self.position[pred] > low and pred not in candidates:
                        candidates.add(pred)
                        queue.append(pred)
        nodes: set[str] = set()
        queue = deque(s for s in self.nx.successors(fork) if s in candidates)
        while queue:
            n = queue.popleft()
            if n not in nodes:
                nodes.add(n)
                queue.extend(s for s in self.nx.successors(n) if s in candidates)
        ordered = tuple(sorted((n for n in nodes if n in self.graph.node_by_id),
                               key=self.position.get))
        params = tuple(n for n in ordered if n in self.parametric)
        # last parametric layers: walk back from the join's input, stopping at parametric nodes
        ends, seen = set(), set()
        queue = deque([start] if start in nodes else [])
        while queue:
            n = queue.popleft()
            if n in seen:
                continue
            seen.add(n)
            if n in self.parametric:
                ends.add(n)
                continue
            queue.extend(p for p in self.nx.predecessors(n) if p in nodes)
        # longest chain of parametric nodes, by dynamic programming in topological order
        chain: dict[str, int] = {}
        for n in ordered:
            best = max((chain[p] for p in self.nx.predecessors(n) if p in chain), default=0)
            chain[n] = best + (n in self.parametric)
        return Path(input_index=index, tensor=tensor, nodes=ordered, parametric=params,
                    ends=tuple(n for n in ordered if n in ends),
                    depth=max(chain.values(), default=0))

    def exclusive_ancestors(self, side: str, carrier: str) -> list[str]:
        """Graph nodes that are ancestors of tensor ``side`` (its producer included) but not of
        tensor ``carrier``, topological order.

        A backward sweep in decreasing topological position marks each node with the inputs that
        reach it (as :meth:`fork`); it stops once every node left to visit is reached by both,
        since all their ancestors are common too."""
        side_start, carrier_start = self.start(side), self.start(carrier)
        reach: dict[str, int] = {}  # bit 1: from side, bit 2: from carrier
        heap: list[tuple[int, str]] = []
        for s, bit in ((side_start, 1), (carrier_start, 2)):
            if s not in reach:
                reach[s] = 0
                heapq.heappush(heap, (-self.position[s], s))
            reach[s] |= bit
        pending_side_only = sum(1 for _, n in heap if reach[n] != 3)
        out = []
        while heap and pending_side_only:
            _, n = heapq.heappop(heap)
            if reach[n] != 3:
                pending_side_only -= 1
                if reach[n] == 1 and n in self.graph.node_by_id:
                    out.append(n)
            for pred in self.nx.predecessors(n):
                before = reach.get(pred)
                if before is None:
                    reach[pred] = reach[n]
                    heapq.heappush(heap, (-self.position[pred], pred))
                    pending_side_only += reach[pred] != 3
                elif before | reach[n] != before:
                    reach[pred] = before | reach[n]
                    pending_side_only -= reach[pred] == 3
        return out[::-1]


def _signal_graph(graph: ModelGraph) -> nx.DiGraph:
    """Nodes that produce signals, one node per graph input, and a virtual source."""
    g = nx.DiGraph()
    g.add_node(SOURCE)
    for name in graph.input_names:
        g.add_edge(SOURCE, INPUT + name)
    for node_id in graph.order:
        if graph.is_shape_node(node_id):
            continue
        g.add_node(node_id)
        has_pred = False
        for name in graph.inputs_of(node_id):
            if name in graph.input_names:
                g.add_edge(INPUT + name, node_id)
                has_pred = True
            elif name in graph.producer and not graph.is_shape_node(graph.producer[name]):
                g.add_edge(graph.producer[name], node_id)
                has_pred = True
        if not has_pred:  # fed by constants only, e.g. a random-number node
            g.add_edge(SOURCE, node_id)
    return g
