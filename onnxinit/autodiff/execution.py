"""Running a built graph: onnxruntime (CUDA when usable, else CPU) for float32; for float64 the
CPU provider, or onnx's reference evaluator (numpy) when onnxruntime has no double kernel for
some op of the graph (its CPU provider has none for Conv, ConvTranspose, AveragePool, Erf, ...),
with the corrections of :mod:`.reference_ops`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

try:
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
except ImportError:  # no onnxruntime: runtime.make_session refuses with the install command
    OrtNotImplemented = NotImplementedError

from ..runtime import make_session
from .reference_ops import corrected_ops


class Runner:
    """Runs one model; ``backend`` says which engine ('onnxruntime' or 'reference').
    ``backend='reference'`` skips the onnxruntime attempt (for a float64 graph built on one that
    onnxruntime already refused: creating the session can take seconds before it fails)."""

    def __init__(self, model: onnx.ModelProto, *, device: str, float64: bool,
                 threads: int | None = None, backend: str | None = None):
        self.output_names = [o.name for o in model.graph.output]
        self._session = None
        self._reference = None
        self.backend = "onnxruntime"
        if not (float64 and backend == "reference"):
            try:
                self._session = make_session(model, device="cpu" if float64 else device,
                                             threads=threads)
                return
            except OrtNotImplemented:
                if not float64:
                    raise
        # the reference evaluator is slow to import: only this fallback needs it
        from onnx.reference import ReferenceEvaluator

        self._reference = ReferenceEvaluator(model, new_ops=corrected_ops())
        self.backend = "reference"

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers() if self._session is not None else []

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None):
        names = list(outputs) if outputs is not None else self.output_names
        if self._session is not None:
            return self._session.run(names, dict(feeds))
        return self._reference.run(names, dict(feeds))
