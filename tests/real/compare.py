"""Predicted against measured variance, tensor by tensor, for a real export.

``compare(path, batch_size=8, runs=1)`` predicts with ``onnxinit.analyze`` (or takes the
predicted variances, ``predicted={tensor: var}``, from elsewhere: another checkout) and measures with
onnxruntime (the analysis's training semantics: BatchNormalization on batch statistics, Dropout
as identity) on ``runs`` seeded batches of N(0, 1) inputs in one session, pooling the moments over
all of them. One session matters for models with random ops (stochastic depth draws a Bernoulli
mask per sample with RandomUniformLike): each run draws new masks, so the pooled moments average
over ``runs x batch_size`` draws, which is the expectation the analysis predicts; a single batch
of 8 is one draw, where a block kept with probability 0.99 is usually never dropped.

Tensors computed from random ops and constants only (the masks themselves: ``[N, 1, 1, 1]``
Bernoulli draws and their casts) are left out of the comparison: a handful of draws cannot
measure a variance set by a drop probability of a few percent. So are auxiliary outputs that
are not activations (BatchNormalization's running statistics, LayerNormalization's saved mean
and inverse standard deviation, Dropout's mask). Every other float activation is compared; one
the analysis did not predict counts as a miss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import helper

import onnxinit
from onnxinit.feeds import synthetic_feeds
from onnxinit.graph import load
from onnxinit.measure import measurable_model
from onnxinit.runtime import make_session

RANDOM_OPS = {"RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal",
              "Bernoulli", "Multinomial"}


def seeded(model, seed: int = 0):
    """``model`` with every random op given its own ``seed`` attribute, so that a measurement
    draws the same stochastic-depth masks each time it runs (onnxruntime seeds each kernel once,
    at session creation: successive runs of a session still draw new masks). Unseeded, a
    strict test near its threshold could pass or fail by the draws alone."""
    for index, node in enumerate(model.graph.node):
        if node.op_type in RANDOM_OPS:
            kept = [a for a in node.attribute if a.name != "seed"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("seed", float(seed * 7919 + index))])
    return model


@dataclass
class Row:
    tensor: str
    op: str
    predicted: float | None  # None: not predicted
    measured: float

    @property
    def ratio(self) -> float:
        """max(p/m, m/p): 1 when equal, infinite when one is 0 or missing."""
        p, m = self.predicted, self.measured
        if p is None or not np.isfinite(p):
            return float("inf")
        if p == m:
            return 1.0
        if p <= 0 or m <= 0:
            return float("inf")
        return max(p / m, m / p)

    @property
    def within(self) -> bool:
        return self.predicted is not None and abs(self.predicted - self.measured) <= 0.10 * abs(
            self.measured)


@dataclass
class Comparison:
    rows: list[Row]
    analyze_s: float
    excluded: list[str] = field(default_factory=list)  # random-mask tensors

    @property
    def within_10(self) -> float:
        return float(np.mean([r.within for r in self.rows]))

    @property
    def within_2x(self) -> float:
        return float(np.mean([r.ratio <= 2.0 for r in self.rows]))

    @property
    def median_ratio(self) -> float:
        """Median predicted/measured over the tensors predicted with a positive measurement."""
        ratios = [r.predicted / r.measured for r in self.rows
                  if r.predicted is not None and np.isfinite(r.predicted) and r.measured > 0]
        return float(np.median(ratios)) if ratios else float("nan")

    @property
    def coverage(self) -> float:
        return float(np.mean([r.predicted is not None for r in self.rows]))

    def worst(self, n: int = 8) -> list[str]:
        rows = sorted(self.rows, key=lambda r: -r.ratio)[:n]
        return [f"{r.ratio:.3f} {r.op} {r.tensor} (pred {r.predicted}, meas {r.measured:.4g})"
                for r in rows]


def random_only(graph) -> set[str]:
    """Float tensors computed from random ops and constants only: no float path from a graph
    input (a stochastic-depth mask takes only the input's shape, an integer)."""
    from_input: set[str] = set(graph.input_names)
    random: set[str] = set()
    for node_id in graph.order:
        node = graph.node(node_id)
        ins = [n for n in node.input if n]
        if any(n in from_input and graph.is_float(n) for n in ins):
            from_input.update(o for o in node.output if o)
        elif node.op_type in RANDOM_OPS or any(n in random for n in ins):
            random.update(o for o in node.output if o)
    return random


# auxiliary outputs, not activations: running statistics, saved mean / inverse std, masks
AUXILIARY = {"BatchNormalization", "LayerNormalization", "Dropout"}


def auxiliary(graph) -> set[str]:
    out = set()
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type in AUXILIARY:
            out.update(o for o in node.output[1:] if o)
    return out


def measured_moments(graph, tensors: list[str], batch_size: int, runs: int,
                     seed: int = 0, first: dict | None = None) -> dict[str, tuple[float, float]]:
    """(mean, var) of each tensor pooled over ``runs`` batches in one onnxruntime session;
    ``first``, when given, receives each tensor's (shape, var) on the first batch. Elements
    that are -inf (logits masked with -inf before a softmax) are left out, as
    ``onnxinit.measure`` and the predictions (``Moments.total``) leave them out: with them the
    variance was NaN, a miss whatever the prediction."""
    session = make_session(seeded(measurable_model(graph, tensors), seed), device="cpu")
    names = [o.name for o in session.get_outputs()]
    wanted = [n for n in names if n in set(tensors)]
    # each batch's mean and centred variance, pooled as the mean of the variances plus the
    # variance of the means (the same value as E[v^2] - E[v]^2 over the batches, without its
    # cancellation: a gate 0.5 + 1e-8 z read 0 or 1e-16 noise instead of its 1e-17 variance)
    within = dict.fromkeys(wanted, 0.0)
    means: dict[str, list[float]] = {n: [] for n in wanted}
    rng = np.random.default_rng(seed)
    for run in range(runs):
        values = dict(zip(names, session.run(names, synthetic_feeds(graph, rng=rng))))
        for n in wanted:
            v = np.asarray(values.pop(n), dtype=np.float64)
            masked = np.isneginf(v)
            if masked.any() and not masked.all():  # an attention mask written with -inf: the
                v = v[~masked]  # other elements, as onnxinit.measure and the predictions
            if run == 0 and first is not None:
                first[n] = (v.shape, float(v.var()))
            means[n].append(float(v.mean()))
            within[n] += float(v.var()) / runs
    return {n: (float(np.mean(means[n])), within[n] + float(np.var(means[n]))) for n in wanted}


def predicted_and_measured(model, tensors: list[str], batch_size: int, runs: int):
    """``analyze``'s report of every tensor (by name) and onnxruntime's pooled (mean, var) of
    each of ``tensors`` over ``runs`` batches of ``batch_size`` (:func:`measured_moments`)."""
    predicted = {t.name: t for t in onnxinit.analyze(model, batch_size=batch_size).tensors}
    return predicted, measured_moments(load(model, batch_size=batch_size), tensors, batch_size,
                                       runs)


def compare(path: str | Path, batch_size: int = 8, runs: int = 1,
            predicted: dict[str, float] | None = None, analyze_s: float = float("nan"),
            first: dict | None = None) -> Comparison:
    """Rows for every compared tensor; ``predicted`` (with the ``analyze_s`` it took) replaces
    this checkout's own analysis; ``first`` as in :func:`measured_moments`."""
    start = time.perf_counter()
    graph = load(path, batch_size=batch_size)
    if predicted is None:  # load and propagation, as `onnxinit analyze` does them
        predicted = {t.name: t.var for t in onnxinit.analyze(graph).tensors}
        analyze_s = time.perf_counter() - start
    excluded = random_only(graph) | auxiliary(graph)
    user = graph.user_tensors()  # the file's own tensors, not those the passes add
    tensors = [t for t in graph.float_activations()
               if t not in excluded and t not in graph.input_names and t in user]
    measured = measured_moments(graph, tensors, batch_size, runs, first=first)
    rows = [Row(t, user[t][1], predicted.get(t), measured[t][1])
            for t in tensors if t in measured]
    return Comparison(rows, analyze_s, sorted(excluded & set(graph.float_activations())))
