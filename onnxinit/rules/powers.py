"""``x ** c`` for a constant whole exponent, by multiplication.

numpy's ``power`` on float64 calls the C library's ``pow`` per element (about 10x the cost of a
multiplication); GPT-2's tanh GELU integrates ``Pow(x, 3)`` over millions of quadrature points,
where that was a third of the model's analysis. Exponentiation by squaring gives the same values
to a few units in the last place (``pow`` is correctly rounded or nearly, each multiplication
adds at most half an ulp), the same infinities, NaNs and signs, and the same broadcast shape.
"""

from __future__ import annotations

import numpy as np

MAX_EXPONENT = 8  # larger or mixed exponents go to np.power (the error grows with the squarings)


def integer_power(x, c) -> np.ndarray:
    """``np.power(x, c)`` for ``c`` holding one whole number in [0, MAX_EXPONENT] (any shape
    that broadcasts with ``x``), by exponentiation by squaring; ``np.power`` otherwise."""
    c = np.asarray(c)
    x = np.asarray(x)
    first = c.flat[0] if c.size else None
    if (first is None or not np.all(c == first) or not float(first).is_integer()
            or not 0 <= first <= MAX_EXPONENT or not np.issubdtype(x.dtype, np.floating)):
        return np.power(x, c)
    shape = np.broadcast_shapes(x.shape, c.shape)
    dtype = np.result_type(x, c)
    n, base, result = int(first), x.astype(dtype, copy=False), None
    while n:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    if result is None:  # x ** 0 = 1, NaN and inf included
        return np.ones(shape, dtype)
    if result is x:
        result = result.copy()
    return result if result.shape == shape else np.broadcast_to(result, shape).copy()


def gaussian_power(c):
    """The closed form ``(mu, var) -> (E[x^n], Var[x^n])`` for ``x ~ N(mu, var)`` when ``c`` is
    one whole ``n`` in {2, 3} (RMSNorm's mean square, the tanh GELU's cube), else None.
    With ``x = mu + s z``: n = 2, ``E = mu^2 + var``, ``Var = 4 mu^2 var + 2 var^2``; n = 3,
    ``E = mu^3 + 3 mu var``, ``Var = 9 mu^4 var + 36 mu^2 var^2 + 15 var^3`` (central terms
    only: no cancellation when var << mu^2)."""
    c = np.asarray(c)
    if c.size != 1 or float(c.reshape(())) not in (2.0, 3.0):
        return None
    if float(c.reshape(())) == 2.0:
        return lambda mu, var: (mu * mu + var, 4 * mu * mu * var + 2 * var * var)
    return lambda mu, var: (mu**3 + 3 * mu * var,
                            9 * mu**4 * var + 36 * mu * mu * var * var + 15 * var**3)


__all__ = ["MAX_EXPONENT", "gaussian_power", "integer_power"]
