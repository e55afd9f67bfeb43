"""Optimisers of the scales: GradInit's Adam (also NIO's) and MetaInit's sign-SGD with momentum.
Both return the next scales from the current ones and an alpha-gradient."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidOptionError


class RescaleAdam:
    """Adam on alpha as GradInit's code does it (also NIO's). Per alpha, with c = ``clip``:

        g  = clip(dF/dalpha, -c, c)                (c = 0: no clipping)
        m_k = b1 m_k + (1 - b1) g                  k = constraint or objective step, own count t_k
        v  = b2 v + (1 - b2) g^2                   shared, count t = t_constraint + t_objective
        alpha = max(alpha - lr / (1 - b1^t_k) * m_k / (sqrt(v / (1 - b2^t)) + eps), lower)
    """

    def __init__(self, lower: np.ndarray, *, lr: float, clip: float = 1.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not lr > 0:
            raise InvalidOptionError(f"the scale learning rate must be > 0, not {lr}")
        if not clip >= 0:
            raise InvalidOptionError(f"the gradient clip must be >= 0, not {clip}")
        self.lower = np.asarray(lower, dtype=np.float64)
        self.lr, self.clip, self.betas, self.eps = lr, clip, betas, eps
        n = len(self.lower)
        self.first = {True: np.zeros(n), False: np.zeros(n)}
        self.count = {True: 0, False: 0}
        self.second = np.zeros(n)

    def step(self, alpha: np.ndarray, grad: np.ndarray, constraint: bool) -> np.ndarray:
        b1, b2 = self.betas
        g = np.clip(grad, -self.clip, self.clip) if self.clip > 0 else np.asarray(grad)
        self.count[constraint] += 1
        self.first[constraint] = b1 * self.first[constraint] + (1 - b1) * g
        self.second = b2 * self.second + (1 - b2) * g * g
        t_k, t = self.count[constraint], self.count[True] + self.count[False]
        denom = np.sqrt(self.second / (1 - b2 ** t)) + self.eps
        update = self.lr / (1 - b1 ** t_k) * self.first[constraint] / denom
        return np.maximum(alpha - update, self.lower)


class SignMomentum:
    """MetaInit's sign-SGD with momentum on each tensor's norm |p_i| = alpha_i |p0_i|:

        m_i = momentum m_i - lr sign(dF/dalpha_i)
        |p_i| <- |p_i| + m_i,  i.e.  alpha_i <- max(alpha_i + m_i / |p0_i|, lower_i)

    (sign(<dF/dp, p>/|p|) = sign(dF/dalpha) since alpha > 0)."""

    def __init__(self, norms: np.ndarray, lower: np.ndarray, *, lr: float, momentum: float):
        if not lr > 0:
            raise InvalidOptionError(f"the learning rate must be > 0, not {lr}")
        if not 0 <= momentum < 1:
            raise InvalidOptionError(f"the momentum must be in [0, 1), not {momentum}")
        self.norms = np.asarray(norms, dtype=np.float64)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.lr, self.momentum = lr, momentum
        self.memory = np.zeros(len(self.norms))

    def step(self, alpha: np.ndarray, grad: np.ndarray, constraint: bool = False) -> np.ndarray:
        self.memory = self.momentum * self.memory - self.lr * np.sign(grad)
        return np.maximum(alpha + self.memory / self.norms, self.lower)
