"""``check``: the CI gate. Turns an :class:`~onnxinit.analysis.Analysis` into findings.

The findings are judged on the path the signal travels (:mod:`onnxinit.signal_path`): the main
path from the inputs to the outputs, apart from residual branches, gates, attention weights and
normalization statistics, whose scale is a design, not a failure. Each family of rules lives in
its own module of :mod:`onnxinit.findings`, registers its rules there, and has a ``find``:

- :mod:`onnxinit.findings.variance`: ``ONNXINIT001 exploding-variance`` (error),
  ``ONNXINIT002 vanishing-variance`` (error), ``ONNXINIT003 exponential-variance-trend``
  (warning);
- :mod:`onnxinit.findings.offpath`: ``ONNXINIT007 off-path-scale`` (note);
- :mod:`onnxinit.findings.fallback`: ``ONNXINIT004 unanalysed-op`` (note; error with ``strict``);
- :mod:`onnxinit.findings.gradient`: ``ONNXINIT005 exploding-gradient`` and
  ``ONNXINIT006 vanishing-gradient`` (errors), from the backward analysis (``check`` runs it
  unless ``--no-gradients``).

Rule ids are stable (SARIF and the other formats use them). Every finding's message names the
tensor and node, the path it lies on, the predicted ratio, and what to do; ``RULES[id].full``
(``onnxinit check --explain ID``) is the long description. The gate fails (exit 1) when any
finding is an error or a warning; notes never fail it.
"""

from __future__ import annotations

import textwrap

from .analysis import Analysis
from .findings import fallback, gradient, offpath, variance
from .findings.base import RULES as _REGISTERED
from .findings.base import Finding, RuleInfo
from .signal_path import SignalPaths, signal_paths

RULES: dict[str, RuleInfo] = dict(sorted(_REGISTERED.items()))
EXPLODING, VANISHING, TREND = variance.EXPLODING, variance.VANISHING, variance.TREND
UNANALYSED, OFF_PATH = fallback.UNANALYSED, offpath.OFF_PATH
EXPLODING_GRADIENT = gradient.EXPLODING_GRADIENT
VANISHING_GRADIENT = gradient.VANISHING_GRADIENT


def paths_of(analysis: Analysis) -> SignalPaths:
    """The signal paths of the analysed graph (its residual blocks reused)."""
    return signal_paths(analysis.graph, analysis.residual_blocks)


def find(analysis: Analysis, *, strict: bool = False,
         paths: SignalPaths | None = None,
         max_gradient_ratio: float = gradient.DEFAULT_MAX_RATIO,
         min_gradient_ratio: float = gradient.DEFAULT_MIN_RATIO) -> list[Finding]:
    """The findings of ``analysis`` (thresholds are the analysis's ``max_growth``/``min_var``
    and the gradient ratios), in order: main-path explosions and vanishing (topological), the
    trend, notes off the main path, the gradient findings (when the analysis has a backward
    part), unanalysed ops."""
    paths = paths if paths is not None else paths_of(analysis)
    return (variance.find(analysis, paths)
            + gradient.find(analysis, paths, max_ratio=max_gradient_ratio,
                            min_ratio=min_gradient_ratio)
            + fallback.find(analysis, strict))


def explain(rule_id: str) -> str:
    """The long description of a rule, for ``check --explain``."""
    rule = RULES[rule_id.upper()]
    return f"{rule.id} {rule.name} ({rule.level}): {rule.short}\n\n{textwrap.fill(rule.full, 100)}"


def failed(findings: list[Finding]) -> bool:
    """True when the gate fails: an error or a warning (notes never fail it)."""
    return any(f.level != "note" for f in findings)


def summary(findings: list[Finding]) -> dict:
    counts = {level: sum(f.level == level for f in findings) for level in ("error", "warning",
                                                                          "note")}
    return {"errors": counts["error"], "warnings": counts["warning"], "notes": counts["note"],
            "passed": not failed(findings)}


__all__ = ["RULES", "Finding", "RuleInfo", "explain", "failed", "find", "paths_of", "summary"]
