"""Classic random initializations, resampled with a seed (docs/methods.md).

For each Conv/ConvTranspose/Gemm/MatMul weight, with (fan_in, fan_out) from
``ModelGraph.fan_in_out`` (grouped convolutions use their true fan-in) and the standard deviation

    xavier / glorot:  std = sqrt(2 / (fan_in + fan_out))          (Glorot & Bengio 2010)
    kaiming / he:     std = gain / sqrt(fan_in)                    (He et al. 2015, fan_in mode)
    lecun:            std = 1 / sqrt(fan_in)                       (LeCun et al. 1998)

a weight is drawn N(0, std^2) or U(-sqrt(3) std, sqrt(3) std) (same variance). ``orthogonal``
(Saxe et al. 2014) draws the node's (D_out, D_in) matrix (a convolution per group as
C_out/g x C_in/g*kh*kw) as the Q factor of a Gaussian matrix with the signs of R's diagonal
folded in, times the gain: its rows (or columns, whichever are fewer) are orthonormal.

The gain is that of the activation that follows the node, found by walking through
BatchNormalization, bias and residual Adds, Dropout, pooling and layout ops:
Relu sqrt(2), LeakyRelu(a) and PRelu(a) sqrt(2 / (1 + a^2)), Tanh 5/3, Selu 3/4, anything
else 1 (PyTorch's ``calculate_gain``). As docs/methods.md says, kaiming and orthogonal use it;
xavier and lecun are gain-free (their variances are the papers' own).

Every tensor gets its own generator, seeded by (seed, crc32 of its name), so the same seed
gives the same bytes whatever the graph order; arrays are written in the initializer's own
dtype and layout. Biases of these nodes are set to 0; other parameters are left as they are.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidOptionError, UnsupportedModelError
from ..graph import LAYOUT_OPS, ModelGraph
from ..plan import Change, Plan
from .idinit import LayoutError, initializer_value, node_weight, weight_matrix_dims
from .options import option

SCHEMES = ("xavier", "kaiming", "lecun", "orthogonal")
DEFAULT_DISTRIBUTION = {"xavier": "uniform", "kaiming": "normal", "lecun": "normal"}
USES_GAIN = {"kaiming", "orthogonal"}
# ops between a layer and its activation that do not change which activation it is
TRANSPARENT = LAYOUT_OPS | {"BatchNormalization", "InstanceNormalization", "Add", "Sub",
                            "Dropout", "MaxPool", "AveragePool", "Pad"}


@dataclass
class ClassicOptions:
    distribution: str = option(
        "auto",
        "xavier/kaiming/lecun: sample from a 'uniform' or 'normal' distribution of the scheme's "
        "variance (auto: uniform for xavier, normal for kaiming and lecun).",
        choices=("auto", "uniform", "normal"),
    )
    seed: int = 0


def activation_gain(graph: ModelGraph, node_id: str) -> tuple[float, str]:
    """(gain, activation op) for the activation that follows ``node_id``'s output, or (1, "")."""
    tensor, seen = graph.node(node_id).output[0], set()
    while tensor not in seen:
        seen.add(tensor)
        consumers = [c for c, _ in graph.consumers.get(tensor, [])
                     if not graph.is_shape_node(c)]
        if not consumers:
            return 1.0, ""
        node = graph.node(consumers[0])
        op = node.op_type
        if op == "Relu":
            return float(np.sqrt(2.0)), op
        if op in ("LeakyRelu", "PRelu"):
            if op == "LeakyRelu":
                a = next((x.f for x in node.attribute if x.name == "alpha"), 0.01)
            else:
                slope = graph.value(node.input[1])
                a = float(np.mean(slope)) if slope is not None else 0.25
            return float(np.sqrt(2.0 / (1.0 + a * a))), op
        if op == "Tanh":
            return 5.0 / 3.0, op
        if op == "Selu":
            return 0.75, op
        if op not in TRANSPARENT or not node.output:
            return 1.0, ""
        tensor = node.output[0]
    return 1.0, ""


def _std(scheme: str, fan_in: int, fan_out: int, gain: float) -> float:
    if scheme == "xavier":
        return float(np.sqrt(2.0 / (fan_in + fan_out)))
    if scheme == "kaiming":
        return gain / float(np.sqrt(fan_in))
    return 1.0 / float(np.sqrt(fan_in))  # lecun


def orthogonal_matrix(d_out: int, d_in: int, rng: np.random.Generator) -> np.ndarray:
    """A (d_out, d_in) matrix with orthonormal rows (d_out <= d_in) or columns."""
    a = rng.standard_normal((max(d_out, d_in), min(d_out, d_in)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # a Haar-distributed Q (Mezzadri 2007)
    return q if d_out >= d_in else q.T


def planner(scheme: str) -> Callable[[ModelGraph, ClassicOptions | None], Plan]:
    """The ``plan(graph, options)`` function of one classic scheme."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown classic scheme {scheme!r}")

    def plan(graph: ModelGraph, options: ClassicOptions | None = None) -> Plan:
        return _plan(graph, scheme, options or ClassicOptions())

    plan.__name__ = f"{scheme}_plan"
    plan.__doc__ = f"{scheme} initialization of every weight (see the module docstring)."
    return plan


def _plan(graph: ModelGraph, scheme: str, options: ClassicOptions) -> Plan:
    distribution = options.distribution
    if distribution == "auto":
        distribution = DEFAULT_DISTRIBUTION.get(scheme, "normal")
    if distribution not in ("uniform", "normal"):
        raise InvalidOptionError(f"--distribution {distribution!r}: use uniform or normal")
    if not graph.parametric_nodes:
        raise UnsupportedModelError(
            f"{graph.name}: no Conv/ConvTranspose/Gemm/MatMul node with a float constant weight; "
            f"{scheme} has nothing to initialize"
        )
    changes: dict[str, Change] = {}
    layers = []
    for node_id in graph.parametric_nodes:
        node = graph.node(node_id)
        layer = graph.table.layer(node_id)
        tensor, weight, bias = node.input[layer.weight_input], layer.weight, layer.bias
        if bias is not None and bias not in changes:
            changes[bias] = Change(array=np.zeros_like(graph.value(bias)), rule=scheme,
                                   target="bias = 0")
        fan_in, fan_out = graph.fan_in_out(node_id)
        gain, activation = activation_gain(graph, node_id) if scheme in USES_GAIN else (1.0, "")
        entry = {"node": node_id, "op": node.op_type, "weight": weight, "fan_in": fan_in,
                 "fan_out": fan_out, "gain": gain, "activation": activation}
        if weight in changes:
            layers.append({**entry, "note": "tied weight, drawn at its first use"})
            continue
        rng = np.random.default_rng([options.seed, zlib.crc32(weight.encode())])
        try:
            array, target = _draw(graph, node_id, tensor, weight, scheme, distribution, gain,
                                  rng)
        except LayoutError as exc:
            layers.append({**entry, "note": f"left unchanged: {exc}"})
            continue
        changes[weight] = Change(array=array, rule=f"{scheme}:{node.op_type}", target=target)
        layers.append({**entry, "target": target})
    return Plan(
        method=scheme,
        changes=changes,
        report={"scheme": scheme, "distribution": distribution if scheme != "orthogonal" else None,
                "seed": options.seed, "layers": layers},
    )


def _draw(graph, node_id, tensor, weight, scheme, distribution, gain, rng):
    """The new weight in the initializer's layout and dtype, and a description of it."""
    dtype = graph.value(weight).dtype
    if scheme == "orthogonal":
        d_out, d_in = weight_matrix_dims(graph, node_id)
        value = gain * _orthogonal_weight(graph, node_id, d_out, d_in, rng)
        _, array = initializer_value(graph, tensor, value)
        return array, f"orthogonal {d_out}x{d_in}, gain {gain:.4g}"
    fan_in, fan_out = graph.fan_in_out(node_id)
    std = _std(scheme, fan_in, fan_out, gain)
    shape = graph.value(weight).shape
    if distribution == "normal":
        value = rng.standard_normal(shape) * std
    else:
        value = rng.uniform(-np.sqrt(3.0) * std, np.sqrt(3.0) * std, shape)
    return value.astype(dtype), f"{distribution}, std {std:.4g}"


def _orthogonal_weight(graph: ModelGraph, node_id: str, d_out: int, d_in: int, rng) -> np.ndarray:
    """The node's weight (as the node sees it) with its own orthogonal matrix in each group."""
    node = graph.node(node_id)
    groups = 1
    if node.op_type in ("Conv", "ConvTranspose"):
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    parts = []
    for _ in range(groups):
        matrix = orthogonal_matrix(d_out, d_in, rng)
        full = node_weight(graph, node_id, lambda o, i, m=matrix: m)
        parts.append(np.split(full, groups, axis=0)[0])
    return np.concatenate(parts, axis=0)
