"""The command line's tensor specs (``--input-shape``, ``--stats``)."""

from __future__ import annotations

import pytest

from onnxinit.cli.specs import parse_input_shapes, parse_stats
from onnxinit.errors import InvalidOptionError


def test_option_parsers():
    assert parse_input_shapes(["x:1x3x224x224", "ids:2,16"]) == {"x": (1, 3, 224, 224), "ids": (2, 16)}
    assert parse_stats(["x:0.5,2"]) == {"x": (0.5, 2.0)}
    for bad in (["x"], ["x:1xq"]):
        with pytest.raises(InvalidOptionError):
            parse_input_shapes(bad)
    for bad in (["x:1"], ["x:0,-1"], ["x:a,b"]):
        with pytest.raises(InvalidOptionError):
            parse_stats(bad)
