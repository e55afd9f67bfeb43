"""``ONNXINIT004 unanalysed-op``: nodes no rule predicted (measured by the empirical fallback or
passed through unchanged), one note per (domain, op, fallback kind) naming the first node and the
count; errors with ``strict``, so a gate never passes silently on a graph it did not understand.
"""

from __future__ import annotations

from ..analysis import Analysis
from ..propagate import EMPIRICAL
from .base import Finding, RuleInfo, register

UNANALYSED = "ONNXINIT004"
register(RuleInfo(
    UNANALYSED, "unanalysed-op", "note", "Op analysed by a fallback",
    "No propagation rule covers this op: its moments were measured by running the node alone on "
    "Gaussian samples (empirical fallback) or passed through unchanged. The prediction "
    "downstream is less certain; --strict makes this an error. What to do: nothing, or write a "
    "rule for the op and register it through the onnxinit.rules entry-point group (README, "
    "'How predictions are made')."))


def find(analysis: Analysis, strict: bool) -> list[Finding]:
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
