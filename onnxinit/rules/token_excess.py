"""A row's energy excess token by token (``Pairs.token_excess``), where a row normalisation
normalises some tokens and only scales others.

An RMSNorm ``y = x / sqrt(s + eps)`` keeps the share ``rho_t^2`` of a token's relative energy
variance, ``rho_t = eps / (s_t + eps)`` (:func:`.row_norm.normalisation_degree`): 0 where the
token's mean square ``s_t`` is far above eps (a normalised row, energy excess ``-2 q``), 1 where
eps dominates (a scale, the input's excess). At init a decoder's sublayer-output norms (OLMo-2,
EXAONE 4) see both: after a causal attention the first tokens' output has a mean square above
eps, the later tokens' far below, so the excess goes from ``-2 q`` at token 0 to about the
input's at the last token. The pooled excess, ``Var[x^T A x] = 2 tr (A C)^2 + e (tr A C)^2``
summed over tokens of covariance ``r_t C`` (``r_t`` the token's relative variance, mean 1), is
``e = sum_t r_t^2 e_t / sum_t r_t^2`` (:func:`pooled`): what a mean square of the row reads. A
reader whose own weights differ needs the tokens: the gated product ``f_a(A^T h) f_b(B^T h)``
(:mod:`.shared_row`) has per token the second moment ``r_t^(a+b) (1 + a b e_t / (1 + 2 q))``
and the energy excess ``P(2 q + e_t)`` (``P`` the gamma law's :func:`.shared_row.power_relvar`),
which its own mean square weights by the product's energy squared, ``r_t^(2 (a + b))``
(:func:`product_terms`). Each token is a pair ``(r_t, e_t)``; a dense layer keeps the pairs and
shifts every ``e_t`` by what it adds to the pooled excess, a residual sum combines them per
token (``e_t = (e_at v_at^2 + e_bt v_bt^2) / (v_at + v_bt)^2``, :func:`summed`), and every other
op drops them (the pooled excess alone)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .shared_row import power_relvar, shared_scale


def normalised(shares: np.ndarray, kept: np.ndarray, q: float, x_tokens: tuple,
               x_excess: float) -> tuple:
    """``((r_t, e_t), ...)`` of a row normalisation's output: ``e_t = kept_t (2 q + e_x,t) - 2
    q`` with the input's per-token excess where it has as many tokens, else its pooled one;
    ``shares`` the output's per-token variance (any scale). () for a single token."""
    shares, kept = np.asarray(shares, np.float64), np.asarray(kept, np.float64)
    total = float(np.mean(shares)) if shares.size else 0.0
    if shares.size < 2 or shares.shape != kept.shape or not total > 0:
        return ()
    e_x = (np.array([e for _, e in x_tokens]) if len(x_tokens) == shares.size
           else np.full(shares.size, x_excess))
    e = kept * (2 * q + e_x) - 2 * q
    return tuple((float(r), float(v)) for r, v in zip(shares / total, e))


def pooled(tokens: tuple, default: float) -> float:
    """``sum_t r_t^2 e_t / sum_t r_t^2``; ``default`` without tokens."""
    if not tokens:
        return default
    r, e = np.array(tokens).T
    w = r * r
    return float(np.sum(w * e) / np.sum(w)) if np.sum(w) > 0 else default


def shifted(tokens: tuple, by: float) -> tuple:
    """Every token's excess moved by ``by`` (what a dense layer adds: its inputs' kurtosis)."""
    return tuple((r, e + by) for r, e in tokens) if by and np.isfinite(by) else tokens


def _profile(m: Moments, t: int) -> np.ndarray:
    """Per-token relative variance (mean 1) of ``m`` over ``t`` tokens: its token field's
    profile where it has ``t`` tokens, else flat."""
    if m.tokens is not None:
        d = np.diag(np.asarray(m.tokens.cov, np.float64))
        if d.size == t and np.mean(d) > 0:
            return d / np.mean(d)
    return np.ones(t)


def summed(a: tuple, a_excess: float, am: Moments, b: tuple, b_excess: float,
           bm: Moments) -> tuple:
    """The tokens of ``a + b``, independent: per token ``v_t = v_at + v_bt`` and ``e_t = (e_at
    v_at^2 + e_bt v_bt^2) / v_t^2`` (an operand without tokens: its token field's profile and
    its pooled excess). () when neither has tokens or their counts differ."""
    t = len(a) or len(b)
    if not t or (a and b and len(a) != len(b)):
        return ()
    va, vb = float(np.mean(am.var)), float(np.mean(bm.var))
    if not (va >= 0 and vb >= 0 and va + vb > 0):
        return ()
    ra, ea = (np.array(a).T if a else (_profile(am, t), np.full(t, a_excess)))
    rb, eb = (np.array(b).T if b else (_profile(bm, t), np.full(t, b_excess)))
    v_a, v_b = va * ra, vb * rb
    v = v_a + v_b
    if not np.all(v > 0):
        return ()
    e = (ea * v_a**2 + eb * v_b**2) / v**2
    return tuple((float(r), float(x)) for r, x in zip(v / np.mean(v), e))


def token_sum(found, a, am: Moments, b, bm: Moments):
    """``found``, the Pairs of a residual sum ``a + b`` (:func:`.pair_algebra.independent_sum`),
    with the operands' tokens summed (:func:`summed`) and its excess their pooled one, where
    either operand has tokens; ``found`` otherwise."""
    if found is None or not (a.token_excess or b.token_excess) or am is None or bm is None:
        return found
    tokens = summed(a.token_excess, a.excess, am, b.token_excess, b.excess, bm)
    return replace(found, token_excess=tokens, excess=pooled(tokens, found.excess))


def product_terms(tokens: tuple, alpha_a: float, alpha_b: float, q: float
                  ) -> tuple[float, float] | None:
    """(the factor on the product's second moment, its energy excess) for a gated product of a
    row with these tokens: ``sum_t w_t s_t / sum_t w_t`` with ``w_t = r_t^(a + b)`` and ``s_t =
    1 + a b e_t / (1 + 2 q)`` (:func:`.shared_row.shared_scale`), and ``sum_t u_t^2 P(2 q +
    e_t) / sum_t u_t^2`` with ``u_t = w_t s_t`` the product's energy at token t; None without
    tokens."""
    if not tokens:
        return None
    r, e = np.array(tokens).T
    w = r ** (alpha_a + alpha_b)
    s = np.array([shared_scale(alpha_a, alpha_b, x / (1 + 2 * q)) for x in e])
    u = w * s
    if not (np.sum(w) > 0 and np.sum(u * u) > 0):
        return None
    relvar = np.array([power_relvar(2 * q + x, alpha_a + alpha_b) for x in e])
    return float(np.sum(u) / np.sum(w)), float(np.sum(u * u * relvar) / np.sum(u * u))


__all__ = ["normalised", "pooled", "product_terms", "shifted", "summed", "token_sum"]
