"""``check``: the CI gate. Turns an :class:`~onnxinit.analysis.Analysis` into findings.

Rules (ids are stable; SARIF and the other formats use them):

- ``ONNXINIT001 exploding-variance`` (error): a tensor's predicted variance exceeds
  ``max_growth`` times the input variance (or is not finite).
- ``ONNXINIT002 vanishing-variance`` (error): a tensor's predicted variance is below
  ``min_var`` times the input variance.
- ``ONNXINIT003 exponential-variance-trend`` (warning): log(variance) of the parametric nodes'
  outputs is linear in their depth index ``k`` (least-squares fit ``log var = a + b k``,
  R² >= 0.9 over at least 8 layers) and the fitted growth over the whole depth,
  ``exp(b * L)`` for ``L`` parametric layers, exceeds ``max_growth`` or falls below ``min_var``.
  The message gives the per-layer factor ``exp(b)``.
- ``ONNXINIT004 unanalysed-op`` (note; error with ``strict``): nodes that no rule predicted,
  measured by the empirical fallback or passed through unchanged, so a gate never passes
  silently on a graph it did not understand.

Aggregation: a 50-layer network that explodes has hundreds of exploding tensors. Each flagged
tensor belongs to the *chain* of its first flagged ancestor with the same flag (the tensor where
the problem starts on that path); one finding per chain, at that first tensor, whose message
gives the number of flagged tensors downstream of it and the worst one. Everything downstream
of a first crossing is one finding (even past a normalization that resets the variance); two
branches that cross independently are two.
Unanalysed ops give one note per (op type, fallback kind), naming the first node and the count.

The gate fails (exit 1) when any finding is an error or a warning; notes never fail it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .analysis import Analysis, TensorReport
from .propagate import EMPIRICAL

MIN_TREND_LAYERS = 8
MIN_TREND_R2 = 0.9


@dataclass(frozen=True)
class RuleInfo:
    id: str
    name: str
    level: str
    short: str
    full: str


RULES = {
    r.id: r
    for r in (
        RuleInfo("ONNXINIT001", "exploding-variance", "error",
                 "Predicted variance explodes",
                 "A tensor's predicted variance at initialization exceeds --max-growth times the "
                 "input variance: activations (and gradients) blow up with depth. Rescale the "
                 "weights, e.g. onnxinit rescale MODEL --method autoinit."),
        RuleInfo("ONNXINIT002", "vanishing-variance", "error",
                 "Predicted variance vanishes",
                 "A tensor's predicted variance at initialization falls below --min-var times the "
                 "input variance: the signal dies out with depth. Rescale the weights, e.g. "
                 "onnxinit rescale MODEL --method autoinit."),
        RuleInfo("ONNXINIT003", "exponential-variance-trend", "warning",
                 "Variance changes exponentially with depth",
                 "log(variance) of the parametric layers' outputs is linear in depth (R² >= 0.9 "
                 "over at least 8 layers) and the fitted trend over the network's depth goes "
                 "beyond --max-growth or --min-var: a per-layer gain different from 1."),
        RuleInfo("ONNXINIT004", "unanalysed-op", "note",
                 "Op analysed by a fallback",
                 "No propagation rule covers this op: its moments were measured by running the "
                 "node alone on Gaussian samples (empirical fallback) or passed through "
                 "unchanged. The prediction downstream is less certain; --strict makes this an "
                 "error."),
    )
}
EXPLODING, VANISHING, TREND, UNANALYSED = "ONNXINIT001", "ONNXINIT002", "ONNXINIT003", "ONNXINIT004"


@dataclass
class Finding:
    rule_id: str
    level: str  # "error" | "warning" | "note"
    message: str
    tensor: str
    node: str
    op: str
    value: float | None = None

    @property
    def rule_name(self) -> str:
        return RULES[self.rule_id].name

    @classmethod
    def from_dict(cls, entry: dict) -> Finding:
        """The finding :meth:`to_dict` wrote (a value "inf"/"nan" back to a float)."""
        value = entry.get("value")
        return cls(entry["rule_id"], entry["level"], entry["message"], entry["tensor"],
                   entry["node"], entry["op"], None if value is None else float(value))

    def to_dict(self) -> dict:
        """JSON-safe: a non-finite value becomes the string "inf" or "nan"."""
        out = {"rule_id": self.rule_id, "rule": self.rule_name,
               **{k: v for k, v in asdict(self).items() if k != "rule_id"}}
        if out["value"] is not None and not math.isfinite(out["value"]):
            out["value"] = str(out["value"])
        return out


def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _chains(analysis: Analysis) -> list[list[TensorReport]]:
    """Flagged tensors grouped under their *first* flagged ancestor of the same flag.

    Walking the graph in topological order, a flagged tensor none of whose ancestors carries
    the same flag starts a chain; every other flagged tensor joins the chain of its earliest
    such ancestor. A tensor hovering around the threshold (ReLU halves the variance, the next
    layer doubles it) therefore stays in one chain, and two parallel branches that explode
    independently give two."""
    flagged = {t.name: t for t in analysis.tensors if t.flag and t.node}
    graph = analysis.graph
    order = {t.name: i for i, t in enumerate(analysis.tensors)}
    reach: dict[str, frozenset[str]] = {}  # tensor -> chain roots among its ancestors (and it)
    empty: frozenset[str] = frozenset()
    for node_id in graph.order:
        node = graph.node(node_id)
        inherited = empty.union(*(reach.get(n, empty) for n in node.input if n))
        for out in node.output:
            roots = inherited
            t = flagged.get(out)
            if t is not None and not any(flagged[r].flag == t.flag for r in roots):
                roots = roots | {out}
            if roots:
                reach[out] = roots
    groups: dict[str, list[TensorReport]] = {}
    for t in analysis.tensors:
        if t.name in flagged:
            root = min((r for r in reach[t.name] if flagged[r].flag == t.flag), key=order.get)
            groups.setdefault(root, []).append(t)
    return sorted(groups.values(), key=lambda chain: order[chain[0].name])


def _severity(t: TensorReport) -> float:
    """Larger is worse: log growth for exploding tensors, -log growth for vanishing ones."""
    if not math.isfinite(t.growth):
        return math.inf
    g = max(t.growth, 1e-300)
    return math.log(g) if t.flag == "exploding" else -math.log(g)


def _chain_finding(chain: list[TensorReport], analysis: Analysis) -> Finding:
    first = chain[0]
    worst = max(chain, key=_severity)
    if first.flag == "exploding":
        rule, bound = EXPLODING, f"above --max-growth {analysis.max_growth:g}"
        verb = "grows to"
    else:
        rule, bound = VANISHING, f"below --min-var {analysis.min_var:g}"
        verb = "falls to"
    message = (f"predicted variance {verb} {_g(first.growth)}x the input variance at tensor "
               f"{first.name!r} ({first.op} node {first.node!r}), {bound}")
    if len(chain) > 1:
        message += f"; {len(chain)} tensors from here on are {first.flag}"
        if worst is not first:
            message += f", the worst {worst.name!r} at {_g(worst.growth)}x"
    return Finding(rule, RULES[rule].level, message, first.name, first.node, first.op,
                   float(first.growth))


def _trend_finding(analysis: Analysis) -> Finding | None:
    graph = analysis.graph
    by_name = {t.name: t for t in analysis.tensors}
    layers = graph.parametric_nodes
    points = []
    for k, node_id in enumerate(layers):
        t = by_name.get(graph.node(node_id).output[0])
        if t is not None and math.isfinite(t.var) and t.var > 0:
            points.append((k, math.log(t.var), t))
    if len(points) < MIN_TREND_LAYERS:
        return None
    x = np.array([p[0] for p in points], dtype=np.float64)
    y = np.array([p[1] for p in points], dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot <= 1e-12 * len(y):
        return None  # flat: no trend
    r2 = 1.0 - float(np.sum((y - (slope * x + intercept)) ** 2)) / ss_tot
    log_growth = slope * len(layers)
    if r2 < MIN_TREND_R2:
        return None
    if log_growth > math.log(analysis.max_growth):
        bound = f"above --max-growth {analysis.max_growth:g}"
    elif log_growth < math.log(analysis.min_var):
        bound = f"below --min-var {analysis.min_var:g}"
    else:
        return None
    factor = math.exp(slope)
    last = points[-1][2]
    message = (f"variance changes by a factor {factor:.3g} per parametric layer (log-linear fit "
               f"over {len(points)} layers, R²={r2:.3f}): {_g(math.exp(log_growth))}x over the "
               f"network's {len(layers)} layers, {bound}")
    return Finding(TREND, RULES[TREND].level, message, last.name, last.node, last.op, factor)


def _fallback_findings(analysis: Analysis, strict: bool) -> list[Finding]:
    graph = analysis.graph
    groups: dict[tuple[str, str, str], list] = {}
    for fb in analysis.propagation.fallbacks:
        domain = graph.node(fb.node).domain or "ai.onnx"
        groups.setdefault((domain, fb.op, fb.kind), []).append(fb)
    findings = []
    for (domain, op, kind), fallbacks in groups.items():
        first = fallbacks[0]
        how = ("measured by running it alone on Gaussian samples (empirical fallback)"
               if kind == EMPIRICAL else "passed through unchanged (it could not run alone)")
        count = f"{len(fallbacks)} {op} nodes" if len(fallbacks) > 1 else f"{op} node"
        message = (f"{count} ({domain}) not covered by a rule, first {first.node!r}: moments "
                   f"{how}; {first.reason}")
        node = graph.node(first.node)
        tensor = next((o for o in node.output if graph.is_signal(o)), node.output[0])
        findings.append(Finding(UNANALYSED, "error" if strict else "note", message, tensor,
                                first.node, op, float(len(fallbacks))))
    return findings


def find(analysis: Analysis, *, strict: bool = False) -> list[Finding]:
    """The findings of ``analysis`` (thresholds are the analysis's ``max_growth``/``min_var``),
    in order: explosions/vanishing chains (topological), the trend, unanalysed ops."""
    findings = [_chain_finding(chain, analysis) for chain in _chains(analysis)]
    if (trend := _trend_finding(analysis)) is not None:
        findings.append(trend)
    findings.extend(_fallback_findings(analysis, strict))
    return findings


def failed(findings: list[Finding]) -> bool:
    """True when the gate fails: an error or a warning (notes never fail it)."""
    return any(f.level != "note" for f in findings)


def summary(findings: list[Finding]) -> dict:
    counts = {level: sum(f.level == level for f in findings) for level in ("error", "warning",
                                                                          "note")}
    return {"errors": counts["error"], "warnings": counts["warning"], "notes": counts["note"],
            "passed": not failed(findings)}
