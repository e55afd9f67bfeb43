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

from dataclasses import dataclass

from .graph import ModelGraph
from .signal_graph import Path, SignalGraph

ADD_OPS = {"Add", "Sum"}


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


def residual_blocks(graph: ModelGraph, signal: SignalGraph | None = None) -> list[ResidualBlock]:
    """Every residual block of ``graph``, in topological order of their Adds."""
    signal = signal if signal is not None else SignalGraph(graph)
    blocks = []
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type in ADD_OPS and node.domain in ("", "ai.onnx"):
            block = _block(graph, signal, node_id)
            if block is not None:
                blocks.append(block)
    return blocks


def _block(graph: ModelGraph, signal: SignalGraph, add: str) -> ResidualBlock | None:
    node = graph.node(add)
    inputs = [(i, t) for i, t in enumerate(node.input) if graph.is_signal(t)]
    if len(inputs) < 2 or len({t for _, t in inputs}) < len(inputs):
        return None
    out_shape = graph.shape(node.output[0])
    if out_shape is not None and any(graph.shape(t) not in (None, out_shape) for _, t in inputs):
        return None  # a broadcasting add (mask, bias-like signal), not a residual join
    fork = signal.fork([signal.start(t) for _, t in inputs])
    if fork is None:  # the inputs share no tensor (two graph inputs): not a residual join
        return None
    paths = [signal.path(i, t, fork) for i, t in inputs]
    skip = min(paths, key=lambda p: (len(p.parametric), len(p.nodes), p.input_index))
    branches = tuple(p for p in paths if p is not skip and p.parametric)
    if not branches or any(len(b.parametric) <= len(skip.parametric) for b in branches):
        return None  # no branch, or parallel paths of equal weight (a merge, not a residual)
    return ResidualBlock(add, signal.fork_tensor(fork), node.output[0], skip, branches)
