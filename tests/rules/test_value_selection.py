"""The value-selection ratio R of rules/value_selection.py against its definition written out
as explicit sums."""

from __future__ import annotations

import numpy as np

from onnxinit.rules.value_selection import selection_ratio


def test_selection_ratio_is_its_definition():
    """R = mean_{h,v} sum_e C_ve^2 / sum_e nu_ke, C_ve = sum_i W_v,iv nu_i W_k,ie,
    nu_ke = sum_i W_k,ie^2 nu_i: every sum written out over the input features."""
    rng = np.random.default_rng(0)
    heads, features, dk, dv = 3, 7, 4, 5
    wk = rng.normal(size=(heads, features, dk))
    wv = rng.normal(size=(heads, features, dv))
    nu = rng.uniform(0.2, 3.0, features)
    terms = []
    for h in range(heads):
        nu_k = sum(wk[h, i, e] ** 2 * nu[i] for i in range(features) for e in range(dk))
        for v in range(dv):
            c2 = sum(sum(wv[h, i, v] * nu[i] * wk[h, i, e] for i in range(features)) ** 2
                     for e in range(dk))
            terms.append(c2 / nu_k)
    assert abs(selection_ratio(wk, wv, nu) / np.mean(terms) - 1) < 1e-13
