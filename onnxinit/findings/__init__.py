"""The families of ``check`` findings, one module each (see :mod:`onnxinit.check`)."""
