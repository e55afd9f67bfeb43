"""Output file names: the default output of a method, and where external data goes."""

from __future__ import annotations

from pathlib import Path

from onnxinit.output_paths import default_output, external_location


def test_default_output_names():
    assert default_output("dir/model.onnx", "autoinit") == Path("dir/model.autoinit.onnx")
    assert default_output("model.onnx", "idinit,autoinit") == Path("model.idinit-autoinit.onnx")
    assert default_output("model.onnx", "idinit-autoinit") == Path("model.idinit-autoinit.onnx")
    assert default_output("a/net", "kaiming") == Path("a/net.kaiming.onnx")
    assert default_output("net.pb", "x/y") == Path("net.x_y.onnx")


def test_external_location_rule():
    rule = external_location
    assert rule("m.onnx.data", "m.onnx", "m.autoinit.onnx", False) == "m.autoinit.onnx.data"
    assert rule("m.weights", "m.onnx", "m.autoinit.onnx", False) == "m.autoinit.weights"
    assert rule("d/w.bin", "m.onnx", "out.onnx", False) == "d/out.w.bin"
    assert rule("d/w.bin", "m.onnx", "out.onnx", True) == "d/w.bin"
