"""``--input-shape`` and ``--stats`` specs: per-model forms and names that contain ``:``."""

from __future__ import annotations

import pytest

from onnxinit.cli.specs import (
    for_model,
    of_one_model,
    parse_input_shapes,
    parse_stats,
    split_by_model,
)
from onnxinit.errors import InvalidOptionError


def test_shapes_and_stats_parse():
    assert parse_input_shapes(["x:1x3x224x224", "ids:2,16"]) == {"x": (1, 3, 224, 224), "ids": (2, 16)}
    assert parse_stats(["x:0.5,2"]) == {"x": (0.5, 2.0)}


def test_names_may_contain_colons():
    assert parse_input_shapes(["serving_default_x:0:1x3x8x8"]) == {
        "serving_default_x:0": (1, 3, 8, 8)}
    assert parse_stats(["input:0:0.5,2"]) == {"input:0": (0.5, 2.0)}


def test_degenerate_values_are_refused():
    for bad in (["x:0x3"], ["x:"], ["x"], ["x:1xq"]):
        with pytest.raises(InvalidOptionError):
            parse_input_shapes(bad)
    for bad in (["x:0,0"], ["x:0,-1"], ["x:nan,1"], ["x:0,inf"], ["x:a,b"], ["x:1"]):
        with pytest.raises(InvalidOptionError):
            parse_stats(bad)


def test_a_model_prefix_is_recognised_only_for_models_given():
    models = ["a.onnx", "dir/a.onnx", "C:/m.onnx"]
    everywhere, own = split_by_model(
        ["x:1x2", "a.onnx:x:3x4", "dir/a.onnx:ids:2x8", "C:/m.onnx:in:0:5x5", "b.onnx:x:1x1"],
        models)
    assert everywhere == ["x:1x2", "b.onnx:x:1x1"]  # b.onnx is not a model given: a name
    assert own == {"a.onnx": ["x:3x4"], "dir/a.onnx": ["ids:2x8"], "C:/m.onnx": ["in:0:5x5"]}
    assert of_one_model(["a.onnx:x:3x4", "y:1"], "a.onnx") == ["y:1", "x:3x4"]
    assert for_model({"x": (1,), "y": (2,)}, ["y", "z"]) == {"y": (2,)}
