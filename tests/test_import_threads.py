"""A command's imports compute the rule modules' quadrature nodes with BLAS on one thread
(onnxinit.allocator.blas_single_threaded): OpenBLAS's default threads spent 20x the CPU on
them. Checked by the thread count BLAS reports (threadpoolctl) inside numpy's quadrature
functions while ``analyze``'s modules are imported (numpy's BLAS, the one they call), and
the count as it was afterwards; the same for a library's first use of ``onnxinit.analyze``
and ``onnxinit.rescale`` (``lazy.lazy_exports``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import json
import numpy as np
from threadpoolctl import threadpool_info

numpys = {i["filepath"] for i in threadpool_info() if i["user_api"] == "blas"}


def blas_threads():  # numpy's BLAS (scipy may load one of its own during the imports)
    return max((i["num_threads"] for i in threadpool_info() if i["filepath"] in numpys),
               default=None)

seen = []
for module, name in ((np.polynomial.hermite, "hermgauss"), (np.polynomial.hermite_e,
                     "hermegauss"), (np.polynomial.legendre, "leggauss")):
    original = getattr(module, name)

    def probe(*args, _original=original, **kwargs):
        seen.append(blas_threads())
        return _original(*args, **kwargs)

    setattr(module, name, probe)
before = blas_threads()
IMPORT
print(json.dumps([before, seen, blas_threads()]))
"""

_IMPORTS = {"command": 'from onnxinit.cli import _load\n_load("analyze")',
            "analyze": "import onnxinit\nonnxinit.analyze",
            "rescale": "import onnxinit\nonnxinit.rescale"}


@pytest.mark.parametrize("entry", sorted(_IMPORTS))
def test_the_commands_imports_compute_quadrature_nodes_on_one_blas_thread(entry):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _PROBE.replace("IMPORT", _IMPORTS[entry])],
                         capture_output=True, text=True, check=True, env=env)
    before, seen, after = json.loads(out.stdout)
    if before is None or before < 2:
        pytest.skip("BLAS runs on one thread here anyway")
    assert len(seen) >= 10  # the rule modules' nodes (14 problems when written)
    assert set(seen) == {1}
    assert after == before
