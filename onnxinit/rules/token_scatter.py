"""The token field of a sequence written one step at a time (a recurrence unrolled into one
ScatterND per step, ``y[:, t] = h_t``), from the steps' joint draws.

RWKV's WKV output is ``wkv_t = (sum_{i<t} e^{w(t-1-i) + k_i} v_i + e^{u + k_t} v_t) / (...)``:
a weighted average over the past, so neighbouring steps share most of their terms (lag-1
correlation 0.56 measured on the export). The steps are computed by :mod:`.joint_samples`
from one set of draws of their leaves (sample i of step s and of step t come from the same
draw of the keys and values), so their covariance across steps is in those draws:

    corr[s, t] = mean_d Cov(h_s[d], h_t[d]) / sqrt(Var h_s[d] Var h_t[d])

(each feature's correlation, averaged over the features; 1 on the diagonal), attached to the
scattered sequence as a correlation beside its per-element variances (``moments.Tokens``;
:func:`.token_field.attach`). A step not written keeps data's constant (its own token,
correlated with none). Each ScatterND of the chain adds its step's draws to those of its data
(normalised, ``[n, T, F]`` per chain, kept per graph while the chain runs) and its row of the
correlation, ``n T F`` operations per step. Without draws for
every written step (a step not computed jointly, an evicted entry, data that is not a
constant or an earlier step) the sequence keeps no field, as before.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .joint_samples import joint_draws
from .token_field import attach

# ops between a step's computed value and the ScatterND's updates that keep its elements
PASS = ("Reshape", "Expand", "Cast", "Unsqueeze", "Squeeze", "Identity", "Flatten")
WALK = 8  # such ops walked back from the updates, at most
SAMPLES = 1024  # draws per step used for the correlation

_WRITTEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _step_draws(ctx: RuleContext, slot: tuple[int, ...]) -> np.ndarray | None:
    """The updates' joint draws as ``[n, prod(slot)]`` (one slot: the step written at every
    batch element), else None."""
    graph, name = ctx.graph, ctx.node.input[2]
    for _ in range(WALK):
        draws = joint_draws(graph, name, ctx.known)
        if draws is not None:
            break
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type not in PASS or not node.input or not graph.is_signal(node.input[0]):
            return None
        name = node.input[0]
    else:
        return None
    draws = draws[:SAMPLES]
    inner = draws.reshape(draws.shape[0], -1)
    size = int(np.prod(slot, dtype=np.int64))
    if inner.shape[1] == size:
        return inner
    if inner.shape[1] == 1:
        return np.broadcast_to(inner, (inner.shape[0], size))
    return None


class _Chain:
    """The steps written so far: their draws normalised per (token, feature) ``z [n, T, F]``
    (0 where not written or constant), which are live, and their correlation ``corr [T, T]``
    (identity where not written), updated one step at a time."""

    def __init__(self, n: int, tokens: int, features: int):
        self.z = np.zeros((n, tokens, features), np.float32)
        self.live = np.zeros((tokens, features), bool)
        self.corr = np.eye(tokens)

    def copy(self) -> "_Chain":
        other = _Chain.__new__(_Chain)
        other.z, other.live, other.corr = self.z.copy(), self.live.copy(), self.corr.copy()
        return other

    def write(self, t: int, draws: np.ndarray) -> None:
        """Step t's draws ``[n, F]``: its correlation with each written step, the mean over the
        features live in both of each feature's correlation."""
        x = np.asarray(draws, np.float64)
        x = x - x.mean(axis=0)
        sd = np.sqrt((x * x).mean(axis=0))
        live = sd > 0
        z = np.where(live, x / np.where(live, sd, 1.0), 0.0).astype(np.float32)
        self.z[:, t] = 0.0
        self.live[t] = False
        counts = np.maximum(self.live.astype(np.float64) @ live, 1.0)
        row = np.einsum("nf,nsf->s", z, self.z, optimize=True) / z.shape[0] / counts
        row = np.where(self.live.any(axis=1), row, 0.0)
        self.corr[t, :] = row
        self.corr[:, t] = row
        self.corr[t, t] = 1.0
        self.z[:, t] = z
        self.live[t] = live


def scattered_field(ctx: RuleContext, out: Moments, indices: np.ndarray,
                    shape: tuple[int, ...]) -> Moments:
    """``out`` (the ScatterND's moments) with the token field of the steps written so far
    along axis 1 (module docstring); ``out`` unchanged when the writes are not one step of a
    ``[B, T, ...]`` sequence at every batch element, or a step has no joint draws."""
    graph = ctx.graph
    if indices.shape[-1] != 2 or len(shape) < 3 or shape[1] < 2:
        return out
    tuples = indices.reshape(-1, 2) % np.asarray(shape[:2], dtype=np.int64)
    tokens = np.unique(tuples[:, 1])
    if tokens.size != 1 or np.unique(tuples[:, 0]).size != shape[0]:
        return out
    written = _WRITTEN.setdefault(graph, {})
    data = ctx.node.input[0]
    draws = _step_draws(ctx, tuple(shape[2:]))
    if draws is None:
        return out
    if graph.is_signal(data):
        chain = written.get(data)
        if chain is None or chain.z.shape[0] != draws.shape[0]:
            return out
        steps = [r for r, i in graph.consumers.get(data, [])
                 if graph.node(r).op_type == "ScatterND" and i == 0]
        if len(steps) > 1:
            chain = chain.copy()  # another step continues data's chain too
        else:
            del written[data]
    else:
        chain = _Chain(draws.shape[0], shape[1], draws.shape[1])
    if chain.z.shape[2] != draws.shape[1]:
        return out
    chain.write(int(tokens[0]), draws)
    written[ctx.node.output[0]] = chain
    return attach(out, shape, [1], chain.corr.copy())
