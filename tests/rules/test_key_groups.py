"""Softmax of jointly Gaussian logits (``rules/key_groups.correlated_rows``) against a direct
Monte Carlo of the same logits written here: rows that share their draws (groups of consecutive
rows), causal prefixes, a mask with holes, constant keys, and logits large enough to need the
shift before ``exp``."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from onnxinit.rules import key_groups

N = 12


def _correlation(rng) -> np.ndarray:
    """An uneven correlation: a factor shared by the first half of the keys, one by all."""
    a = rng.standard_normal((N, 3)) * np.r_[np.ones(N // 2), np.zeros(N - N // 2)][:, None]
    cov = a @ a.T + 0.5 * np.ones((N, N)) + np.eye(N)
    d = np.sqrt(np.diag(cov))
    return cov / np.outer(d, d)


def _oracle(rel, var, masked, corr, draws=100_000, seed=7):
    """E and Var of softmax per row by direct sampling of each row's unmasked logits."""
    rng = np.random.default_rng(seed)
    ex, vx = np.zeros(rel.shape), np.zeros(rel.shape)
    chol = np.linalg.cholesky(corr)
    for r in range(rel.shape[0]):
        keys = ~masked[r]
        if not keys.any():
            continue
        z = np.where(keys, rel[r], 0.0) + np.sqrt(var[r]) * (rng.standard_normal((draws, N)) @ chol.T)
        z = z[:, keys]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        ex[r, keys], vx[r, keys] = p.mean(axis=0), p.var(axis=0)
    return ex, vx


def _rows(rng, rows, scale):
    rel = rng.normal(0.0, 0.5, (rows, N))
    var = scale * rng.uniform(0.5, 1.5, (rows, N))
    masked = np.zeros((rows, N), bool)
    for r in range(rows):
        masked[r, (r % N) + 1:] = True  # causal prefixes
    masked[13] = True
    masked[13, [0, 1, 3, 7]] = False  # a mask with holes
    masked[2] = True  # a row with every key masked
    var[3, 2] = 0.0  # a constant key among varying ones
    return np.where(masked, -np.inf, rel), np.where(masked, 0.0, var), masked


@functools.lru_cache(maxsize=None)
def _case(scale):
    rng = np.random.default_rng(3)
    corr = _correlation(rng)
    rel, var, masked = _rows(rng, 24, scale)
    return corr, rel, var, masked, _oracle(rel, var, masked, corr)


@pytest.mark.parametrize("groups", [1, 4, 256])
@pytest.mark.parametrize("scale", [1.0, 1e5])  # 1e5: logits reach past exp's range
def test_correlated_rows_match_direct_sampling(monkeypatch, groups, scale):
    corr, rel, var, masked, (ref_e, ref_v) = _case(scale)
    w, v = np.linalg.eigh(corr)
    factor = v * np.sqrt(np.maximum(w, 0.0))
    monkeypatch.setattr(key_groups, "DRAW_GROUPS", groups)
    ex, vx = key_groups.correlated_rows(rel, var, masked, factor, np.random.default_rng(0),
                                        draws=0, minimum=40_000)
    assert np.all(np.isfinite(ex)) and np.all(np.isfinite(vx))
    assert np.all(ex[masked] == 0) and np.all(vx[masked] == 0)
    live = ~masked.all(axis=1)
    assert np.allclose(ex[live].sum(axis=1), 1.0)
    assert np.max(np.abs(ex - ref_e)) < 0.01
    big = ref_v > 0.01 * ref_v.max()
    assert np.max(np.abs(vx[big] / ref_v[big] - 1)) < 0.1
    assert abs(vx.sum() / ref_v.sum() - 1) < 0.01
