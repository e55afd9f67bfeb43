"""A prediction that is not finite stops the analysis with an error naming the node: the
checks, and what they say to the user."""

from __future__ import annotations

import numpy as np

from .errors import PredictionError
from .moments import Moments


def non_finite_constant(graph, node) -> str | None:
    """The first constant input of ``node`` that holds NaN or an infinity, described for the
    user; None when there is none. Only asked once a prediction is not finite (a -inf mask
    alone gives finite predictions)."""
    for name in node.input:
        value = graph.value(name) if name else None
        if value is None or not np.issubdtype(value.dtype, np.floating):
            continue
        counts = ((int(np.isnan(value).sum()), "NaN"), (int(np.isposinf(value).sum()), "+inf"),
                  (int(np.isneginf(value).sum()), "-inf"))
        if any(n for n, _ in counts):
            what = ", ".join(f"{n} {kind}" for n, kind in counts if n)
            kind = "initializer" if name in graph.initializers else "constant"
            return f"its input {kind} {name!r} holds {what} value(s) of {value.size}"
    return None


def require_finite(m: Moments, node_id: str, op: str, tensor: str, rule_name: str,
                   constant_cause=lambda: None, measured: bool = False) -> None:
    """Raise PredictionError unless every statistic of ``m`` is finite (a masked element, mean
    -inf with variance 0, is allowed: the tensor really holds -inf there). ``constant_cause``
    names a non-finite weight of the node, which makes it the model's fault, not a rule's;
    ``measured``: the empirical fallback produced ``m``."""
    if m.mean.size and np.isfinite(m.mean).all():  # nothing masked: the usual case, quickly
        finite = np.isfinite(m.var).all() and all(np.isfinite(m.total()))
    else:
        mean, var = np.broadcast_arrays(m.mean, m.var)
        masked = np.isneginf(mean) & (var == 0)
        finite = np.isfinite(var).all() and (np.isfinite(mean) | masked).all()
        if finite:
            finite = not masked.all() and all(np.isfinite(m.total()))
    if not finite:
        if measured:
            why = ("the empirical fallback measured a non-finite mean or variance for tensor "
                   f"{tensor!r} on samples drawn from its inputs' predicted statistics (the op "
                   "is not finite there, e.g. Log of negative values)")
        elif (cause := constant_cause()) is not None:
            why = (f"tensor {tensor!r} cannot be predicted: {cause}; the model's weights are "
                   "not finite")
        else:
            why = (f"rule {rule_name} predicted a non-finite mean or variance for tensor "
                   f"{tensor!r}; this is a bug in onnxinit, please report it with the model")
        raise PredictionError(f"node {node_id} ({op}): {why}")


__all__ = ["non_finite_constant", "require_finite"]
