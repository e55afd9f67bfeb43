"""The element-wise ops that joint draws evaluate (:mod:`.joint_samples`,
:mod:`.unrolled_draws`), as numpy functions of the draws."""

from __future__ import annotations

import numpy as np


def _softplus(x):
    return np.logaddexp(x, 0)


def _sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1)


UNARY = {"Neg": np.negative, "Exp": np.exp, "Log": np.log, "Abs": np.abs,
         "Relu": lambda x: np.maximum(x, 0), "Sigmoid": _sigmoid, "Tanh": np.tanh,
         "Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Softplus": _softplus,
         "Identity": lambda x: x, "Cast": lambda x: x}
NARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
        "Pow": np.power, "Max": np.maximum, "Min": np.minimum}
