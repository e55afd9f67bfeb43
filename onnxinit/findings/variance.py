"""Variance findings, judged on the signal path (:mod:`onnxinit.signal_path`).

The numbers judged (growth and signal, relative to the input) are those of
:mod:`onnxinit.findings.scale`.

Rules:

- ``ONNXINIT001 exploding-variance`` (error): growth above ``max_growth`` on the main path, or a
  prediction there that is not finite (onnxinit could not predict the graph: it never passes it;
  a side path's non-finite prediction that reaches the main path makes it non-finite there);
- ``ONNXINIT002 vanishing-variance`` (error): signal below ``min_var`` on the main path, except
  where it first happens in the output head or in a stack of recurrent layers whose input is
  above it (:func:`onnxinit.findings.scale.starts_in_recurrent_stack`);
- ``ONNXINIT003 exponential-variance-trend`` (warning): the log signal variance at the main
  path's *stations* (outputs of its parametric layers and of residual Adds, above the output
  head) is linear in the station index ``k`` (least squares ``log v = a + b k``, R² >= 0.9 over
  at least 8 stations) and the fitted change over all of them, ``exp(b * L)``, is beyond ``max_growth`` or ``min_var``;
- ``ONNXINIT007 off-path-scale`` (note, :mod:`onnxinit.findings.offpath`): the same thresholds
  crossed off the main path or first in the output head.

Aggregation on the main path: each flagged tensor belongs to the *chain* of its first flagged
ancestor with the same flag (where the problem starts on that path); one finding per chain, at
that first tensor, giving the number of flagged tensors downstream and the worst one.
"""

from __future__ import annotations

import math

import numpy as np

from ..analysis import Analysis
from ..signal_path import SignalPaths
from . import offpath
from .base import Finding, RuleInfo, fmt, register
from .scale import (Scale, flag, has_signal_source, judged, scales, severity, starts_in_head,
                    starts_in_recurrent_stack)

EXPLODING, VANISHING, TREND = "ONNXINIT001", "ONNXINIT002", "ONNXINIT003"
MIN_TREND_STATIONS = 8
REJOINS = ("Concat", "Add", "Sub", "Sum")  # where a chain without signal rejoins the signal
MIN_TREND_R2 = 0.9

RESCALE = "onnxinit rescale MODEL --method autoinit"
register(
    RuleInfo(EXPLODING, "exploding-variance", "error", "Predicted variance explodes",
             "A tensor on the main signal path (input to output; residual branches, gates, "
             "attention weights and normalization statistics are side paths) has a predicted "
             "variance at initialization above --max-growth times the input variance, or a "
             "prediction that is not finite. Activations and gradients blow up with depth: the "
             "loss starts huge and SGD diverges at any useful learning rate. Typical causes: "
             "residual blocks without normalization (each block adds its branch's variance to "
             "the skip's), weights too large for the activation. What to do: " + RESCALE +
             "; add normalization (BatchNorm, LayerNorm) or zero-initialise the last layer of "
             "each residual branch; a smaller learning rate only postpones the divergence."),
    RuleInfo(VANISHING, "vanishing-variance", "error", "Predicted signal vanishes",
             "The predicted signal variance (the input-dependent part: the mean over channels "
             "or features of each one's variance, so biases do not hide a dead signal) of a "
             "tensor on the main signal path falls below --min-var times the input variance. "
             "The output no longer depends on the input and the gradients reaching the early "
             "layers shrink by the same factor: the network does not train. Typical causes: "
             "weights too small for the activation over many layers (PyTorch's default Linear "
             "init, variance 1/(3 fan_in), with tanh, sigmoid, SELU or ReLU; a fixed small "
             "Gaussian std). What to do: " + RESCALE + "; use Kaiming (ReLU) or LeCun/Xavier "
             "(tanh, SELU) init, or add normalization. A small output head alone is not this "
             "finding (see ONNXINIT007)."),
    RuleInfo(TREND, "exponential-variance-trend", "warning",
             "Signal variance changes exponentially with depth",
             "log(signal variance) at the main path's stations (outputs of its parametric "
             "layers and residual Adds above the output head) is linear in depth (R² >= 0.9 over at least 8 stations) "
             "and the fitted change over the network's depth goes beyond --max-growth or "
             "--min-var: each layer multiplies the variance by a gain different from 1, and a "
             "deeper copy of the network would explode or vanish. What to do: " + RESCALE +
             " (it makes every layer's gain 1), or normalization."),
)


def chains(analysis: Analysis, flags: dict[str, str]) -> list[list[str]]:
    """Flagged tensors grouped under their *first* flagged ancestor of the same flag.

    Walking the graph in topological order, a flagged tensor none of whose ancestors carries
    the same flag starts a chain; every other flagged tensor joins the chain of its earliest
    such ancestor. A tensor hovering around the threshold therefore stays in one chain, and
    two parallel branches that cross independently give two."""
    graph = analysis.graph
    order = {t.name: i for i, t in enumerate(analysis.tensors)}
    reach: dict[str, frozenset[str]] = {}  # tensor -> chain roots among its ancestors (and it)
    empty: frozenset[str] = frozenset()
    for node_id in graph.order:
        node = graph.node(node_id)
        inherited = empty.union(*(reach.get(n, empty) for n in node.input if n))
        for out in node.output:
            roots = inherited
            kind = flags.get(out)
            if kind is not None and not any(flags[r] == kind for r in roots):
                roots = roots | {out}
            if roots:
                reach[out] = roots
    groups: dict[str, list[str]] = {}
    for name in sorted(flags, key=order.get):
        root = min((r for r in reach[name] if flags[r] == flags[name]), key=order.get)
        groups.setdefault(root, []).append(name)
    return sorted(groups.values(), key=lambda chain: order[chain[0]])


def _chain_finding(chain: list[str], kind: str, analysis: Analysis, paths: SignalPaths,
                   scale: dict[str, Scale]) -> Finding:
    graph = analysis.graph
    first = chain[0]
    worst = max(chain, key=lambda t: severity(scale[t], kind))
    value = judged(scale[first], kind)
    node, op = graph.writer(first)
    where = f"tensor {first!r} ({op} node {node!r}), {paths.describe(first)}"
    if not math.isfinite(value):
        rule = EXPLODING
        message = (f"predicted variance is {fmt(value)} at {where}: onnxinit could not predict "
                   "this graph from here on, so it cannot pass it; run onnxinit analyze -v on "
                   "it and report the node")
    elif kind == "exploding":
        rule = EXPLODING
        message = (f"predicted variance grows to {fmt(value)}x the input variance at {where}, "
                   f"above --max-growth {analysis.max_growth:g}")
    else:
        rule = VANISHING
        message = (f"predicted signal variance falls to {fmt(value)}x the input variance at "
                   f"{where}, below --min-var {analysis.min_var:g}")
    if len(chain) > 1:
        message += f"; {len(chain)} main-path tensors from here on are {kind}"
        if worst != first:
            message += f", the worst {worst!r} at {fmt(judged(scale[worst], kind))}x"
    message += f". What to do: {RESCALE}" + (
        "; or add normalization, or zero-init the last layer of each residual branch"
        if kind == "exploding" else "; or use an init that suits the activation "
        "(Kaiming, LeCun), or add normalization")
    return Finding(rule, "error", message, first, node, op, float(value))


def main_path_findings(analysis: Analysis, paths: SignalPaths,
                       scale: dict[str, Scale]) -> tuple[list[Finding], list[list[str]]]:
    """(errors on the main path, the vanishing chains that start in the output head)."""
    flags = {}
    for name, s in scale.items():
        kind = flag(s, analysis.max_growth, analysis.min_var)
        finite = math.isfinite(s.growth) and math.isfinite(s.signal)
        if kind is not None and paths.is_main(name) and not (
                finite and name in paths.normalized):
            flags[name] = kind
    findings, head_chains = [], []
    for chain in chains(analysis, flags):
        kind = flags[chain[0]]
        if kind == "vanishing" and _constant_part(chain, analysis, paths, flags, scale):
            continue
        if kind == "vanishing" and (starts_in_head(chain[0], analysis, paths, scale) or
                                    starts_in_recurrent_stack(chain[0], analysis, paths, scale)):
            head_chains.append(chain)
            continue
        findings.append(_chain_finding(chain, kind, analysis, paths, scale))
    return findings, head_chains

def _constant_part(chain: list[str], analysis: Analysis, paths: SignalPaths,
                   flags: dict[str, str], scale: dict[str, Scale]) -> bool:
    """A vanishing chain of tensors without any signal variance (exactly 0: a class token's
    row sliced back out of the tokens, TimeSformer's ``embeddings[:, 0]``; an unrolled LSTM
    cell's first ``f_0 c_0`` of a zero initial state) that only rejoins the signal on the main
    path in a Concat, or a sum (Add, Sub, Sum: ``c_1 = f_0 c_0 + i_0 g_0``), whose output is
    not flagged: a constant part of the tokens or a zero term of a sum, not a signal that died
    (a zero-initialised layer on the path has no live operand after it to rejoin). Side paths
    it feeds are judged as side paths."""
    graph, members = analysis.graph, set(chain)
    if any(scale[t].signal != 0.0 for t in chain):
        return False
    rejoined = False
    for t in chain:
        if t in graph.output_names:
            return False
        for node_id, _ in graph.consumers.get(t, []):
            node = graph.node(node_id)
            for out in node.output:
                if out in members or not out or not paths.is_main(out):
                    continue
                if node.op_type not in REJOINS or out in flags:
                    return False
                rejoined = True
    return rejoined


def stations(paths: SignalPaths) -> list[str]:
    """Main-path outputs of parametric layers and residual Adds above the output head (whose
    scale is judged apart, as for ONNXINIT002), topological order."""
    graph = paths.graph
    marks = {graph.node(n).output[0] for n in graph.parametric_nodes}
    marks |= {b.output for b in paths.blocks}
    return [t for t in paths.main if t in marks and t not in paths.head]


def _trend_fit(analysis: Analysis, paths: SignalPaths, scale: dict[str, Scale]):
    """(slope, depth, R², points) of the log-linear fit over the stations; None when there are
    fewer than MIN_TREND_STATIONS, the log variance is flat, or R² < MIN_TREND_R2."""
    points = [(k, math.log(scale[t].signal), t) for k, t in enumerate(stations(paths))
              if t in scale and math.isfinite(scale[t].signal) and scale[t].signal > 0]
    if len(points) < MIN_TREND_STATIONS:
        return None
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot <= 1e-12 * len(y):
        return None  # flat: no trend
    r2 = 1.0 - float(np.sum((y - (slope * x + intercept)) ** 2)) / ss_tot
    if r2 < MIN_TREND_R2:
        return None
    return float(slope), points[-1][0] - points[0][0] + 1, r2, points


def trend_finding(analysis: Analysis, paths: SignalPaths,
                  scale: dict[str, Scale]) -> Finding | None:
    fit = _trend_fit(analysis, paths, scale)
    if fit is None:
        return None
    slope, depth, r2, points = fit
    log_change = slope * depth
    if log_change > math.log(analysis.max_growth):
        bound = f"above --max-growth {analysis.max_growth:g}"
    elif log_change < math.log(analysis.min_var):
        bound = f"below --min-var {analysis.min_var:g}"
    else:
        return None
    factor = math.exp(slope)
    last = points[-1][2]
    node, op = analysis.graph.writer(last)
    message = (f"signal variance changes by a factor {factor:.3g} per layer along the main path "
               f"(log-linear fit over {len(points)} layers and residual blocks, R²={r2:.3f}): "
               f"{fmt(math.exp(log_change))}x over its depth, {bound}, ending at {last!r} "
               f"{paths.describe(last)}. What to do: {RESCALE} (every layer's gain becomes 1), "
               "or normalization")
    return Finding(TREND, "warning", message, last, node, op, factor)


def extremes(analysis: Analysis, paths: SignalPaths) -> dict[str, float]:
    """What the thresholds act on, for calibration: the largest growth on the main path and the
    smallest signal on its body (the main path above the output head, recurrent stacks left out
    as ONNXINIT002 leaves them), normalized tensors left out, relative to the input variance; and the trend's change over depth (1 without a fit)."""
    scale = scales(analysis, paths)
    main = [t for t in paths.main if t in scale and t not in paths.normalized]
    body = [t for t in main if t not in paths.head
            and not starts_in_recurrent_stack(t, analysis, paths, scale)]
    fit = _trend_fit(analysis, paths, scale)
    return {"max_growth": max((scale[t].growth for t in main), default=1.0),
            "min_signal": min((scale[t].signal for t in body), default=1.0),
            "trend_change": math.exp(fit[0] * fit[1]) if fit is not None else 1.0}


def find(analysis: Analysis, paths: SignalPaths) -> list[Finding]:
    """ONNXINIT001/002 chains on the main path (topological), the 003 trend, the 007 notes;
    none for a model whose signal has no known source (:func:`has_signal_source`)."""
    if not has_signal_source(analysis):
        return []
    scale = scales(analysis, paths)
    findings, head_chains = main_path_findings(analysis, paths, scale)
    if (trend := trend_finding(analysis, paths, scale)) is not None:
        findings.append(trend)
    findings.extend(offpath.find(analysis, paths, scale, head_chains))
    return findings
