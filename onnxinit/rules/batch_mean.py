"""The batch mean of a training-mode BatchNormalization, with what the input already carries.

Per channel, over the N samples and K positions of a batch (n = N K elements), with the
element variance ``nu`` as the analysis reports it (pooled over the batch), the per-sample
spatial correlation ``rho`` (``F = (1/K) sum_{p,p'} rho(p - p')``,
``correlation.mean_variance_factor``) and the fraction ``c`` of a sample's spatial-mean variance
that is already centred over the batch (``Correlation.batch_centred``: 1 after a BatchNorm,
carried through convs and sums), write ``u`` for the uncentred per-sample variance. Then

    nu          = u (1 - c F / n)              (the centred part's batch mean is removed)
    Var(m_hat)  = u F (1 - c) / n              (only the uncentred part has a batch mean)
    Var(mean_p) = u F / K (1 - c / N)          (a sample's spatial mean over the batch)

so the batch mean's share of ``nu`` is ``q = F (1 - c) / (n - c F)`` (``1/n`` for independent,
uncentred elements: the plain formula) and a global spatial mean has the variance
``nu F / K (1 - c / N) / (1 - c F / n)``: at K = 1 the element itself. Modelled: the batch mean
as one draw per channel, exchangeable positions; not modelled: the sample variance's own
fluctuation (``v_hat`` taken at its expectation, as the normalisation rule does).
"""

from __future__ import annotations

import numpy as np

from .. import correlation


def batch_mean_share(corr: correlation.Correlation | None, channels: int, sizes,
                     batch: int) -> np.ndarray | float:
    """``q`` per channel (module docstring): the share of each channel's element variance
    that the batch mean of N = ``batch`` samples of K = prod(``sizes``) positions carries;
    ``1/n`` without a correlation."""
    n = max(1, int(batch) * int(np.prod(sizes)))
    if corr is None:
        return 1.0 / n
    f = np.broadcast_to(correlation.mean_variance_factor(corr, sizes), (channels,))
    c = np.clip(corr.batch_centred(channels), 0.0, 1.0)
    return np.clip(f * (1.0 - c) / np.maximum(n - c * f, 1e-12), 0.0, 1.0)


def pooled_centring(corr: correlation.Correlation, channels: int, sizes,
                    batch: int) -> np.ndarray:
    """Per channel, the factor ``(1 - c/N) / (1 - c F / n)`` that turns ``nu F / K`` (the
    pooled element variance) into the variance of a global spatial mean over a batch of N."""
    n = max(1, int(batch) * int(np.prod(sizes)))
    f = np.broadcast_to(correlation.mean_variance_factor(corr, sizes), (channels,))
    c = np.clip(corr.batch_centred(channels), 0.0, 1.0)
    return (1.0 - c / max(1, int(batch))) / np.maximum(1.0 - c * f / n, 1e-12)
