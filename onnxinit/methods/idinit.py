"""IDInit (Pan et al., "Identical Initialization"; docs/methods.md): deterministic identity
patterns.

Every weight is viewed as a matrix W of shape (D_out, D_in): Gemm/MatMul as the operator's
matrix (whatever transB or layout), a convolution per group as C_out/g x (C_in/g * kh * kw)
(the kernel flattened in its own C order, input channel major), a ConvTranspose per group
likewise with its first two axes swapped. Then, in topological order:

* Main-path layers, skip-path (projection) layers and all but the last parametric layer of a
  residual branch get the padded identity IDI_tau::

      D_out >= D_in:  W[i, j] = tau  if j == i mod D_in   (identity blocks stacked down the rows)
      D_out <  D_in:  W[i, j] = tau  if i == j mod D_out  (each output sums ~D_in/D_out inputs)

  and in the wide case the result is multiplied by the gain g = sqrt(Var[x] / Var[W x]) that
  keeps the total output variance equal to the input's, with ``Var[W x]`` from the weight-aware
  rule on the moments produced by the weights already chosen upstream (for independent inputs
  of equal variance g = sqrt(D_out / D_in)). On the flattened kernel the pattern is the
  *patch-maintain* identity: consecutive output channels copy spatially shifted taps.
  ``idinit_conv="dirac"`` puts the (C_out/g x C_in/g) pattern on the centre tap instead.
* The last parametric layer of each residual branch (``residual.residual_blocks``) gets the
  zero-preserving pattern IDIZ_eps::

      D_out >= D_in:  W[i, i mod D_in] = eps,  W[i, (i+1) mod D_in] = -eps
      D_out <  D_in:  W[i, i + m D_out] = (-1)^m eps   (m = 0, 1, ...; -eps on odd spare columns)

  so the branch adds O(eps) to the skip at initialization, but its weights are not all zero:
  the gradient reaches every input of the last layer, hence the earlier layers of the branch
  (no dead branch). Each row sums to 0 (or to eps when it holds an odd number of entries), so
  a branch whose inner activations have a non-zero mean (after a ReLU) still adds only O(eps).
  Deviation from a literal reading of the wide case ("-eps on the spare columns", i.e. +eps once
  and -eps on every other entry of the row): with a 3x3 kernel a row holds 9 entries, sums to
  -7 eps, and on the normalization-free ResNet-20 the branch then moves a block's output by
  1.2e-5 of its input instead of 2e-6 (the two readings coincide when D_in = 2 D_out).
* Biases of parametric nodes are set to 0. Normalization scales and shifts, embeddings and
  other parameters are left as they are.

A replacement array is written in the initializer's own layout and dtype: a weight reached
through Transpose/Reshape/Cast nodes gets the inverse of those moves applied. A weight shared by
several nodes is set at its first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import UnsupportedModelError
from ..graph import ModelGraph
from ..plan import Change, Plan
from ..propagate import propagate_node, start_propagation
from ..residual import residual_blocks
from .options import option


@dataclass
class IDInitOptions:
    idinit_tau: float = option(1.0, "idinit: value tau of the identity entries.", gt=0)
    idinit_eps: float = option(
        1e-6, "idinit: magnitude eps of the entries of the last layer of each residual branch."
    , ge=0)
    idinit_conv: str = option(
        "patch",
        "idinit: convolution pattern: 'patch' (patch-maintain identity on the flattened "
        "kernel) or 'dirac' (centre-tap identity).",
        choices=("patch", "dirac"),
    )
    seed: int = 0


# --- the two matrix patterns ---------------------------------------------------------------


def padded_identity(d_out: int, d_in: int, tau: float = 1.0) -> np.ndarray:
    """IDI_tau: ``W[i, i mod D_in] = tau`` (tall or square), ``W[j mod D_out, j] = tau`` (wide)."""
    w = np.zeros((d_out, d_in))
    if d_out >= d_in:
        w[np.arange(d_out), np.arange(d_out) % d_in] = tau
    else:
        w[np.arange(d_in) % d_out, np.arange(d_in)] = tau
    return w


def zero_preserving(d_out: int, d_in: int, eps: float = 1e-6) -> np.ndarray:
    """IDIZ_eps: eps on the padded identity's first entry of each row, -eps beside it
    (column (i+1) mod D_in) or, when D_out < D_in, the row's padded-identity entries with
    alternating signs (+eps in the first D_out columns, -eps on every odd spare column)."""
    w = np.zeros((d_out, d_in))
    rows = np.arange(d_out)
    if d_out >= d_in:
        w[rows, rows % d_in] = eps
        if d_in > 1:
            w[rows, (rows + 1) % d_in] = -eps
    else:
        cols = np.arange(d_in)
        w[cols % d_out, cols] = np.where((cols // d_out) % 2 == 0, eps, -eps)
    return w


# --- weights as matrices, in the node's view and in the initializer's layout ---------------


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def weight_matrix_dims(graph: ModelGraph, node_id: str, conv: str = "patch") -> tuple[int, int]:
    """(D_out, D_in) of the matrix each group / batch slice of the node's weight is viewed as."""
    node = graph.node(node_id)
    index = graph.weight_input(node_id)
    shape = graph.value(node.input[index]).shape
    attrs = _attrs(node)
    taps = int(np.prod(shape[2:])) if conv == "patch" else 1
    if node.op_type == "Conv":
        return shape[0] // attrs.get("group", 1), shape[1] * taps
    if node.op_type == "ConvTranspose":
        return shape[1], shape[0] // attrs.get("group", 1) * taps
    if node.op_type == "Gemm":
        trans = attrs.get("transB" if index == 1 else "transA", 0)
        rows, cols = shape
        if index == 1:  # B is (K, N), or (N, K) with transB; y = x B
            return (rows, cols) if trans else (cols, rows)
        return (cols, rows) if trans else (rows, cols)  # A is (M, K); y = A x
    if len(shape) < 2:
        raise UnsupportedModelError(f"node {node_id!r}: MatMul with a rank-{len(shape)} weight")
    return (shape[-1], shape[-2]) if index == 1 else (shape[-2], shape[-1])


def node_weight(
    graph: ModelGraph, node_id: str, matrix: Callable[[int, int], np.ndarray], conv: str = "patch"
) -> np.ndarray:
    """The node's weight (as the node sees it) holding ``matrix(D_out, D_in)`` in every group
    (convolutions) or batch slice (MatMul with a batched weight)."""
    node = graph.node(node_id)
    index = graph.weight_input(node_id)
    shape = graph.value(node.input[index]).shape
    d_out, d_in = weight_matrix_dims(graph, node_id, conv)
    m = matrix(d_out, d_in)
    if node.op_type in ("Conv", "ConvTranspose"):
        groups = _attrs(node).get("group", 1)
        kernel = shape[2:]
        if conv == "patch":
            block = m.reshape(d_out, -1, *kernel)  # (C_out/g, C_in/g, k...)
        else:
            block = np.zeros((d_out, d_in, *kernel))
            block[(slice(None), slice(None), *(k // 2 for k in kernel))] = m
        if node.op_type == "ConvTranspose":
            block = np.swapaxes(block, 0, 1)  # W[C_in, C_out/g, k...]
        return np.concatenate([block] * groups, axis=0)
    if node.op_type == "Gemm":
        attrs = _attrs(node)
        trans = attrs.get("transB" if index == 1 else "transA", 0)
        flip = (not trans) if index == 1 else bool(trans)
        return m.T if flip else m
    w = m.T if index == 1 else m  # MatMul: B[..., K, N] = W^T, A[..., M, K] = W
    return np.broadcast_to(w, shape).copy()


class LayoutError(UnsupportedModelError):
    """The weight reaches the node through an op whose effect cannot be undone (Expand, Tile)."""


def initializer_value(graph: ModelGraph, tensor: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Undo the layout ops between an initializer and ``tensor``: the initializer's name and
    the array it must hold for ``tensor`` to equal ``value``, in the initializer's dtype."""
    while tensor not in graph.initializers:
        node = graph.node(graph.producer[tensor])
        source = node.input[0]
        if node.op_type == "Transpose":
            perm = _attrs(node).get("perm", list(range(value.ndim))[::-1])
            value = np.transpose(value, np.argsort(perm))
        elif node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            value = value.reshape(graph.value(source).shape)
        elif node.op_type not in ("Identity", "Cast", "CastLike"):
            raise LayoutError(
                f"{tensor!r} is made from an initializer by {node.op_type}, which cannot be "
                "inverted to write a replacement"
            )
        tensor = source
    return tensor, np.ascontiguousarray(value).astype(graph.value(tensor).dtype)


# --- the plan --------------------------------------------------------------------------------


def _roles(graph: ModelGraph) -> tuple[dict[str, str], list]:
    """Role of each parametric node: 'branch_end', 'branch', 'skip' or 'main'."""
    blocks = residual_blocks(graph)
    roles: dict[str, str] = {}
    for block in blocks:
        for node_id in block.skip.parametric:
            roles.setdefault(node_id, "skip")
        for node_id in block.branch:
            if roles.get(node_id) != "branch_end":
                roles[node_id] = "branch"
    for block in blocks:  # a last layer of any branch is a branch end, also in nested blocks
        for node_id in block.branch_ends:
            roles[node_id] = "branch_end"
    return roles, blocks


def plan(graph: ModelGraph, options: IDInitOptions | None = None) -> Plan:
    """IDInit's identity patterns for every Conv/ConvTranspose/Gemm/MatMul weight, biases 0.
    ``graph`` is not changed: each layer is analysed on a view of it holding the values chosen
    upstream (:meth:`ModelGraph.with_values`)."""
    options = options or IDInitOptions()
    if options.idinit_conv not in ("patch", "dirac"):
        raise UnsupportedModelError(f"--idinit-conv {options.idinit_conv!r}: use patch or dirac")
    if not graph.parametric_nodes:
        raise UnsupportedModelError(
            f"{graph.name}: no Conv/ConvTranspose/Gemm/MatMul node with a float constant weight; "
            "idinit has nothing to initialize"
        )
    roles, blocks = _roles(graph)
    parametric = set(graph.parametric_nodes)
    changes: dict[str, Change] = {}
    layers = []
    result = start_propagation(graph, seed=options.seed)
    chosen = graph  # the graph with the values chosen so far
    for node_id in graph.order:
        if graph.is_shape_node(node_id):
            continue
        if node_id not in parametric:
            propagate_node(chosen, node_id, result)
            continue
        node = graph.node(node_id)
        bias = graph.table.layer(node_id).bias
        if bias is not None and bias not in changes:
            zeros = np.zeros_like(graph.value(bias))
            chosen = chosen.with_values({bias: zeros})
            changes[bias] = Change(array=zeros, rule="idinit", target="bias = 0")
        entry, chosen = _choose(chosen, node_id, roles.get(node_id, "main"), options, changes,
                                result)
        propagate_node(chosen, node_id, result)
        entry["output_var"] = result.moments[node.output[0]].total()[1]
        layers.append(entry)
    return Plan(
        method="idinit",
        changes=changes,
        report={
            "tau": options.idinit_tau,
            "eps": options.idinit_eps,
            "conv": options.idinit_conv,
            "residual_blocks": [b.to_dict() for b in blocks],
            "layers": layers,
            "warnings": list(result.warnings),
        },
    )


def _choose(graph, node_id, role, options, changes, result) -> tuple[dict, ModelGraph]:
    """Choose the node's weight (a Change); return its report entry and ``graph`` with it."""
    node = graph.node(node_id)
    layer = graph.table.layer(node_id)
    tensor, weight = node.input[layer.weight_input], layer.weight
    in_name = next(n for n in node.input if graph.is_signal(n))
    in_var = result.moments[in_name].total()[1]
    conv = options.idinit_conv
    d_out, d_in = weight_matrix_dims(graph, node_id, conv)
    entry = {"node": node_id, "op": node.op_type, "weight": weight, "role": role,
             "d_out": d_out, "d_in": d_in, "input_var": in_var}
    if weight in changes:
        entry.update(pattern=None, note="tied weight, set at its first use")
        return entry, graph
    if role == "branch_end":
        eps = options.idinit_eps
        pattern, gain = node_weight(graph, node_id, lambda o, i: zero_preserving(o, i, eps), conv), 1.0
        name = "zero-preserving"
    else:
        tau = options.idinit_tau
        pattern = node_weight(graph, node_id, lambda o, i: padded_identity(o, i, tau), conv)
        name, gain = "padded identity", 1.0
        if d_out < d_in:
            gain = _variance_gain(graph, node_id, tensor, pattern, in_var, result, d_out / d_in)
    try:
        init, array = initializer_value(graph, tensor, pattern * gain)
    except LayoutError as exc:
        entry.update(pattern=None, note=f"left unchanged: {exc}")
        return entry, graph
    target = f"{name} {d_out}x{d_in}" + (f", gain {gain:.4g}" if gain != 1.0 else "")
    changes[init] = Change(array=array, rule=f"idinit:{name}", target=target,
                           note=f"{role} layer {node_id}")
    entry.update(pattern=name, gain=gain)
    return entry, graph.with_values({init: array})


def _variance_gain(graph, node_id, tensor, pattern, in_var, result, independent) -> float:
    """sqrt(Var[x] / Var[W x]) under the weight-aware rule; sqrt(D_out/D_in) if undefined."""
    try:
        init, array = initializer_value(graph, tensor, pattern)
    except LayoutError:
        return float(np.sqrt(independent))
    propagate_node(graph.with_values({init: array}), node_id, result)
    out_var = result.moments[graph.node(node_id).output[0]].total()[1]
    if np.isfinite(out_var) and out_var > 0 and np.isfinite(in_var) and in_var > 0:
        return float(np.sqrt(in_var / out_var))
    return float(np.sqrt(independent))
