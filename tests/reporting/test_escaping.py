"""A model is data from anyone: its names reach the page as text, never as markup."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save_model

from tests.cli import run
from tests.models import make_model

from .page import read

HOSTILE = '<img src=x onerror="alert(1)">&amp;<script>alert(2)</script>'


def test_model_strings_are_escaped(tmp_path, capsys):
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), f"w{HOSTILE}")
    model = make_model([helper.make_node("MatMul", ["x", w.name], [f"y{HOSTILE}"],
                                         name=f"mm{HOSTILE}")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                       [helper.make_tensor_value_info(f"y{HOSTILE}", TensorProto.FLOAT, [2, 4])],
                       [w])
    path = tmp_path / "hostile.onnx"
    save_model(model, str(path))
    page = tmp_path / "r.html"
    code, _, err = run(["report", path, path, "-o", page], capsys)
    assert code == 0, err
    html = page.read_text()
    assert "<script" not in html and "<img src=x" not in html
    names = read(html).names
    assert f"y{HOSTILE}" in names and f"mm{HOSTILE}" in names and f"w{HOSTILE}" in names
