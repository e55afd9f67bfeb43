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


__all__ = ["MAX_EXPONENT", "integer_power"]
