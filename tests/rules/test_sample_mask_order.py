"""The factors of a sum or concatenation of sample-masked tensors come in the order their
masks were first met, not in a set's order: that follows Python's per-process string hash,
and the sums over factors then ran in another order in each process (EfficientNet-B0's
predictions moved by up to 8e-10 relative from one run of ``analyze`` to the next)."""

from __future__ import annotations

import os
import subprocess
import sys

_CODE = """
import numpy as np
from onnxinit.rules.sample_masks import concat_factors, sum_factors
names = ["mask/%d" % i for i in range(12)]
a = {n: (0.1 + i / 100, np.full(2, i), None) for i, n in enumerate(names[:8])}
b = {n: (0.2, np.zeros(2), None) for n in names[4:]}
print(",".join(sum_factors(a, b, 0.5)) + ";" + ",".join(concat_factors([(2, a), (2, b)])))
"""


def test_factor_order_is_the_same_in_every_process():
    orders = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", _CODE], env=env, capture_output=True,
                             text=True, check=True)
        orders.add(out.stdout.strip())
    names = ",".join("mask/%d" % i for i in range(12))
    assert orders == {names + ";" + names}
