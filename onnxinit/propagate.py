"""Topological propagation of moments through a ModelGraph.

Precondition: a ModelGraph (static shapes, constants classified).
Postcondition: every signal tensor has Moments; each is tagged with the rule that produced it;
every node handled by a fallback (empirical measurement or pass-through) is listed, never fatal.
A NaN or infinite prediction is fatal: :class:`~onnxinit.errors.PredictionError` names the node
(elements masked with -inf, mean -inf and variance 0, are the one exception: see moments.py).
After each rule, the token covariance (``Moments.tokens``) is carried to the outputs
(:func:`onnxinit.rules.tokens.carry`); a non-linear point-wise rule sees an input whose field
says its variance differs from token to token with that variance per token
(:func:`onnxinit.rules.per_token.per_token_inputs`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .allocator import huge_pages_unadvised
from .errors import InvalidOptionError
from .finite_predictions import non_finite_constant, require_finite
from .graph import ModelGraph
from .input_shapes import assumed_sizes_hint
from .moments import Moments
from .rules import CommonAncestor, Registration, RuleContext, RuleError, RuleSettings, lookup
from .rules import feature_pairs
from .rules.empirical import EmpiricalError, measure_node, pass_through
from .rules.fusion import described_ancestor
from .rules.layout import PADDED_CAP, holds_padding
from .rules.masks import OFFSET_CAP, derived_moments, feeds_softmax
from .rules.per_token import per_token_fusion, per_token_inputs
from .rules.tokens import carry
from .spatial import drop
from .strict import fall_back
from .window_classes import begin_windows, propagate_windowed

log = logging.getLogger("onnxinit")

EMPIRICAL = "empirical"
PASS_THROUGH = "pass-through"
DERIVED = "input-derived"  # known exactly from an attention_mask input (rules/masks.py)
EMPTY = "empty"  # a tensor of no elements (Phi-3's pass-through part of rotary embeddings)


@dataclass
class Fallback:
    node: str
    op: str
    kind: str  # EMPIRICAL or PASS_THROUGH
    reason: str


@dataclass
class Propagation:
    graph: ModelGraph
    moments: dict[str, Moments]
    rules: dict[str, str]  # tensor -> rule name
    producers: dict[str, str]  # tensor -> node id ("" for graph inputs)
    input_stats: dict[str, tuple[float, float]]
    fallbacks: list[Fallback] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    settings: RuleSettings = field(default_factory=RuleSettings, repr=False)
    # correlation of the features of one row (rules/feature_pairs.py), for tensors that have it
    pairs: dict[str, feature_pairs.Pairs] = field(default_factory=dict, repr=False)
    # padded windows merged with the batch, kept apart by class (onnxinit/window_classes.py)
    windows: dict = field(default_factory=dict, repr=False)
    window_readers: dict = field(default_factory=dict, repr=False)  # readers not yet propagated
    large_grids: set = field(default_factory=set, repr=False)  # see _moves_a_large_grid

    @property
    def input_var(self) -> float:
        """Reference variance for growth: the mean variance of the float graph inputs (or 1)."""
        variances = [v for _, v in self.input_stats.values() if v > 0]
        return float(np.mean(variances)) if variances else 1.0


def input_moments(
    graph: ModelGraph, stats: Mapping[str, tuple[float, float]] | None = None
) -> dict[str, Moments]:
    """Moments of the float graph inputs: N(0, 1) unless ``stats`` gives (mean, var)."""
    stats = dict(stats or {})
    unknown = set(stats) - set(graph.input_names)
    if unknown:
        raise InvalidOptionError(
            f"--stats names {', '.join(sorted(unknown))}, not an input of {graph.name}"
        )
    not_float = [name for name in stats if not graph.is_signal(name)]
    if not_float:
        raise InvalidOptionError(
            f"--stats {not_float[0]}: input {not_float[0]!r} of {graph.name} is not a float "
            "tensor (token ids, a mask...); --stats sets the mean and variance of float inputs"
        )
    return {
        name: Moments.scalar(*stats.get(name, (0.0, 1.0)))
        for name in graph.input_names
        if graph.is_signal(name)
    }


# statistics tracked per tensor at most: every rule's cost grows with them (an element-wise
# rule integrates each one), and a Reshape of per-window statistics (Swin-T's window reverse)
# would otherwise track 56 x 56 x 384 of them through the rest of the stage
MAX_TRACKED = 1 << 16


def _fit(m: Moments, shape: tuple[int, ...] | None, limit: int = MAX_TRACKED) -> Moments:
    """Make a rule's output broadcast to the tensor's shape, pooling when it does not, or when
    it tracks more than ``limit`` statistics (:meth:`Moments.capped`)."""
    return _fitted_shape(m, shape).capped(limit)


def _tracked_limit(ctx: RuleContext, m: Moments, large: set = frozenset()) -> int:
    """MAX_TRACKED, or ``masks.OFFSET_CAP`` for the output of a node that reaches a Softmax:
    its per-element offsets (a causal mask on ``[1, heads, S, S]`` logits) are positions the
    Softmax ignores or shifts, and pooling them into a variance (law of total variance) would
    give the logits the variance of the mask (1e76 for ``finfo.min``). ``PADDED_CAP`` for a
    tensor that holds exact padding (``layout.holds_padding``: a zero-padded window's tokens
    with per-feature means, ``[1, 64, 3 * 384]`` after Swin V2's qkv projection)."""
    if m.tracked_size() <= MAX_TRACKED:
        return MAX_TRACKED
    if feeds_softmax(ctx):
        return OFFSET_CAP
    if holds_padding(m) or _moves_a_large_grid(ctx, large):
        return PADDED_CAP
    return MAX_TRACKED


_MOVES = {"Reshape", "Transpose", "Slice", "Concat", "Split"}


def _moves_a_large_grid(ctx: RuleContext, large: set) -> bool:
    """A layout op that reads a grid of more than MAX_TRACKED statistics that a constant Pad
    spelled out or padded windows spread back on the map (``window_classes.spread``;
    ``large``): it moves them without computing on them, so they stay until the map is cut
    into windows or cropped (the window partition, the roll back, the crop to the map)."""
    return ctx.node.op_type in _MOVES and any(n in large for n in ctx.node.input)


def _fitted_shape(m: Moments, shape: tuple[int, ...] | None) -> Moments:
    """Position classes (``Moments.spatial``) that do not describe this shape are dropped."""
    if m.spatial is not None:
        if shape is not None and len(shape) == 2 + len(m.spatial.maps) and all(
                a.size == n for a, n in zip(m.spatial.maps, shape[2:])):
            return m
        m = drop(m)
    if m.is_scalar:
        if m.rank == 0:
            return m
        mixture = None  # the law of a sum of ReLU outputs and Gaussians: one per component
        if m.mixture is not None and all(np.size(a) == np.shape(a)[0] for a in m.mixture):
            mixture = tuple(np.reshape(a, (np.shape(a)[0],)) for a in m.mixture)
        return Moments(m.mean.reshape(()), m.var.reshape(()), m.source, mixture, m.tokens)
    if shape is None:
        return m.pooled()
    if m.rank > len(shape):
        return m.pooled()
    m = m.expand_rank(len(shape))
    try:
        np.broadcast_shapes(m.mean.shape, m.var.shape, shape)
    except ValueError:
        return m.pooled()
    if np.broadcast_shapes(m.mean.shape, m.var.shape, shape) != tuple(shape):
        return m.pooled()
    return m


def start_propagation(
    graph: ModelGraph,
    stats: Mapping[str, tuple[float, float]] | None = None,
    *,
    seed: int = 0,
    dropout: bool = False,
    initial: Mapping[str, Moments] | None = None,
) -> Propagation:
    """A Propagation holding only the graph inputs' moments; extend it with
    :func:`propagate_node` in topological order (methods that choose weights layer by layer)."""
    moments = dict(initial) if initial is not None else input_moments(graph, stats)
    result = Propagation(
        graph=graph,
        moments=moments,
        rules={name: "input" for name in moments},
        producers={name: "" for name in moments},
        input_stats={name: m.total() for name, m in moments.items()},
        warnings=list(graph.warnings),
    )
    result.settings = RuleSettings(seed=seed, dropout=dropout)
    for node_id in graph.subgraph_nodes():
        result.warnings.append(
            f"node {node_id} ({graph.node(node_id).op_type}) has subgraphs; analysed as opaque"
        )
    return result


def propagate(
    graph: ModelGraph,
    stats: Mapping[str, tuple[float, float]] | None = None,
    *,
    seed: int = 0,
    dropout: bool = False,
    initial: Mapping[str, Moments] | None = None,
) -> Propagation:
    """Predict the moments of every signal tensor of ``graph``.

    ``dropout=False`` (the default) treats Dropout as identity; ``True`` applies training-mode
    dropout. BatchNormalization always uses batch statistics (training semantics).
    ``initial`` overrides the input moments (per-channel statistics, for instance).
    """
    start = time.perf_counter()
    result = start_propagation(graph, stats, seed=seed, dropout=dropout, initial=initial)
    with single_threaded_blas():
        for node_id in graph.order:
            if not graph.is_shape_node(node_id):
                propagate_node(graph, node_id, result)
    log.info("propagated moments through %d nodes of %s in %.2f s%s", len(graph.order),
             graph.name, time.perf_counter() - start, _fallback_summary(result.fallbacks))
    return result


def _fallback_summary(fallbacks: list[Fallback]) -> str:
    """``; empirical fallback: 2 nodes (Foo x2); passed through: 1 node (Bar)``, or ""."""
    parts = []
    for kind, words in ((EMPIRICAL, "empirical fallback"), (PASS_THROUGH, "passed through")):
        ops = Counter(f.op for f in fallbacks if f.kind == kind)
        if ops:
            total = sum(ops.values())
            listed = ", ".join(op if n == 1 else f"{op} x{n}" for op, n in ops.items())
            parts.append(f"{words}: {total} node{'s' * (total > 1)} ({listed})")
    return "".join(f"; {p}" for p in parts)


@contextlib.contextmanager
def single_threaded_blas():
    """A context where BLAS runs on one thread. Rules multiply small matrices (a per-position
    Conv: C_out x C_in k x positions), where a multi-threaded BLAS spends more time waking
    threads than computing, 10-50x more on a busy machine. numpy advises no huge pages for
    the rules' temporaries there either (:func:`onnxinit.allocator.huge_pages_unadvised`)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), huge_pages_unadvised():
        yield


def rule_context(graph: ModelGraph, node_id: str, result: Propagation,
                 registration: Registration | None = None) -> RuleContext:
    """The context the propagator hands the rule of ``node_id``: the node, the settings, and
    for rules registered with ``fusion=True`` the common element-wise ancestor of the two
    signal operands with its moments from ``result`` (:mod:`onnxinit.rules.fusion`)."""
    node = graph.node(node_id)
    ctx = RuleContext(node, node_id, graph, result.settings, known=result.moments)
    if registration is None:
        registration = lookup(node.domain, node.op_type, graph.opset)
    if registration is not None and registration.fusion:
        try:
            found = described_ancestor(ctx, result.moments)
        except RuleError:  # an operand's function cannot be built: no fusion
            found = None
        if found is not None:
            tensor, chain_a, chain_b = found
            ctx.fusion = CommonAncestor(tensor, result.moments[tensor], chain_a, chain_b)
    return ctx


def _empty_outputs(graph: ModelGraph, node) -> bool:
    """Every signal output of ``node`` has a static shape with no elements (a Slice past the
    end): its statistics are those of nothing, 0 (a Concat drops it)."""
    outs = [o for o in node.output if o and graph.is_signal(o)]
    shapes = [graph.shape(o) for o in outs]
    return bool(outs) and all(s is not None and 0 in s for s in shapes)


def propagate_node(graph: ModelGraph, node_id: str, result: Propagation) -> None:
    """Compute (or recompute) the moments of one node's outputs from those in ``result``; a
    node that reads padded windows merged with the batch once per class of windows
    (:mod:`onnxinit.window_classes`)."""
    for name in graph.node(node_id).output:
        result.windows.pop(name, None)
    if result.windows and propagate_windowed(graph, node_id, result, _propagate_node):
        return
    _propagate_node(graph, node_id, result)
    begin_windows(graph, node_id, result)


def _propagate_node(graph: ModelGraph, node_id: str, result: Propagation) -> None:
    node = graph.node(node_id)
    inputs = [
        result.moments.get(name) if graph.is_signal(name) else None for name in node.input
    ]
    ctx = RuleContext(node, node_id, graph, result.settings)
    registration = lookup(node.domain, node.op_type, graph.opset)
    per_token = per_token_inputs(ctx, inputs)  # the rule's inputs; carry() reads the fields
    seen = per_token if per_token is not None else inputs
    outputs, rule_name, reason, fused = None, None, "", None
    if all(m is None for m in inputs):  # computed from an attention_mask input?
        outputs, rule_name = derived_moments(inputs, ctx), DERIVED
    if outputs is None and _empty_outputs(graph, node):
        outputs, rule_name = [Moments.scalar(0.0, 0.0) for _ in node.output], EMPTY
    # a rule is called even without signal inputs: an embedding Gather(table, int ids) has a
    # signal output computed from a constant and an integer tensor; rules that need a signal
    # raise RuleError and the node is measured instead
    if outputs is None and registration is not None:
        try:
            ctx = rule_context(graph, node_id, result, registration)
            fused = per_token_fusion(ctx)  # a fused ancestor spelled per token, for the rule
            # numpy's floating-point warnings are not for the user: a non-finite result is
            # caught below (require_finite) and said in one line
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                outputs = registration.fn(seen, fused or ctx)
            rule_name = registration.fn.__name__
        except RuleError as exc:
            reason = str(exc)
        except Exception as exc:  # a rule bug must not abort the analysis; measure instead
            fall_back(exc)
            log.debug("rule %s failed on %s", registration.fn.__name__, node_id, exc_info=True)
            reason = f"rule {registration.fn.__name__} failed: {type(exc).__name__}: {exc}"
    elif outputs is None:
        reason = "no rule for this op"
    if outputs is None:
        try:
            outputs = measure_node(seen, ctx, result.moments)
            rule_name = EMPIRICAL
            _record(result, Fallback(node_id, node.op_type, EMPIRICAL, reason))
        except Exception as exc:  # EmpiricalError, or a constant input that
            # cannot be folded: never fail the analysis on one node
            if not isinstance(exc, EmpiricalError):
                log.debug("empirical fallback failed on %s", node_id, exc_info=True)
                exc = EmpiricalError(f"{type(exc).__name__}: {exc}")
            outputs = pass_through(inputs, ctx)
            rule_name = PASS_THROUGH
            fallback = Fallback(node_id, node.op_type, PASS_THROUGH, f"{reason}; {exc}")
            if _record(result, fallback):
                result.warnings.append(
                    f"node {node_id} ({node.op_type}): statistics passed through unchanged ({exc})"
                    + assumed_sizes_hint(graph))
    outputs = carry(ctx, inputs, list(outputs), per_token is not None or fused is not None)
    outputs, pairs = feature_pairs.carry(ctx, inputs, outputs, result.pairs)
    for name, m, pair in zip(node.output, outputs, pairs):
        if name and m is not None and graph.is_signal(name):
            m = _fit(m, graph.shape(name), _tracked_limit(ctx, m, result.large_grids))
            if m.tracked_size() > MAX_TRACKED and (node.op_type == "Pad" or _moves_a_large_grid(
                    ctx, result.large_grids)):
                result.large_grids.add(name)
            require_finite(m, node_id, node.op_type, name, rule_name,
                           lambda: non_finite_constant(graph, node), rule_name == EMPIRICAL)
            result.moments[name] = m
            result.rules[name] = rule_name
            result.producers[name] = node_id
            if pair is not None:
                result.pairs[name] = pair
            else:
                result.pairs.pop(name, None)
            if log.isEnabledFor(logging.DEBUG):
                mean, var = result.moments[name].total()
                log.debug("node %s (%s) by %s: %s mean %.4g var %.4g", node_id, node.op_type,
                          rule_name, name, mean, var)


def _record(result: Propagation, fallback: Fallback) -> bool:
    """Record a fallback once per node (a node may be recomputed); True if new."""
    if any(f.node == fallback.node for f in result.fallbacks):
        return False
    result.fallbacks.append(fallback)
    log.debug("node %s (%s): %s (%s)", fallback.node, fallback.op,
             "measured alone by the empirical fallback" if fallback.kind == EMPIRICAL
             else "statistics passed through", fallback.reason)
    return True
