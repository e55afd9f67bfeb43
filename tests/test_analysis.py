"""``analyze``: the JSON other tools parse, the table, residual blocks, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from onnxinit.analysis import analyze

from .cli import run
from .test_rescale import sample

NUMBER = {"type": "number"}
SCHEMA = {
    "type": "object",
    "required": ["model", "inputs", "tensors", "warnings", "residual_blocks"],
    "properties": {
        "model": {"type": "string"},
        "inputs": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["shape", "dtype"]}},
        "tensors": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "node", "op", "shape", "mean", "var", "rule"],
            "properties": {
                "name": {"type": "string"}, "node": {"type": "string"}, "op": {"type": "string"},
                "shape": {"type": ["array", "null"], "items": {"type": "integer"}},
                "mean": NUMBER, "var": NUMBER, "rule": {"type": "string"},
                "measured_mean": NUMBER, "measured_var": NUMBER, "relative_error": NUMBER,
                "flag": {"enum": ["exploding", "vanishing"]},
            },
        }},
        "residual_blocks": {"type": "array", "items": {
            "type": "object",
            "required": ["add", "branch", "branch_end", "skip", "depth"],
            "properties": {"add": {"type": "string"}, "branch_end": {"type": "string"},
                           "branch": {"type": "array", "items": {"type": "string"}},
                           "skip": {"type": "array", "items": {"type": "string"}},
                           "depth": {"type": "integer", "minimum": 1}},
        }},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}


def test_json_schema_and_topological_order(capsys):
    model = sample("resnet20_nobn")
    code, out, _ = run(["analyze", "--json", "--measure", model], capsys)
    assert code == 0
    data = json.loads(out)
    jsonschema.validate(data, SCHEMA)
    names = [t["name"] for t in data["tensors"]]
    assert names[0] == "x" and names[-1] == "logits" and len(names) == len(set(names))
    assert all("measured_var" in t for t in data["tensors"])
    position = {t["name"]: i for i, t in enumerate(data["tensors"])}
    graph = analyze(model).graph
    for node_id in graph.order:  # every tensor comes after the tensors its node reads
        node = graph.node(node_id)
        for out_name in node.output:
            for in_name in node.input:
                if out_name in position and in_name in position:
                    assert position[in_name] < position[out_name]


def test_residual_blocks_of_resnet20(capsys):
    blocks = analyze(sample("resnet20_nobn")).to_dict()["residual_blocks"]
    assert len(blocks) == 9
    projections = [b for b in blocks if b["skip"]]
    assert [len(b["skip"]) for b in projections] == [1, 1]  # the two 1x1 shortcut Convs
    assert all(b["depth"] == 2 and b["branch_end"] == b["branch"][-1] for b in blocks)
    _code, out, _ = run(["analyze", sample("resnet20_nobn")], capsys)
    table = out.split("\n\n")[0].splitlines()
    assert "block" in table[0].split()
    marked = [line for line in table if any(c.startswith("res") for c in line.split()[-2:])]
    assert len(marked) == 9 and all(" Add " in line for line in marked)
    assert "residual blocks: 9 (7 with identity skip; branch depth 2)" in out


def test_transformer_blocks_are_attention_and_feed_forward():
    blocks = analyze(sample("transformer_postln")).residual_blocks
    assert len(blocks) == 8 and all(b.identity_skip for b in blocks)
    assert [b.depth for b in blocks] == [2, 2] * 4


def test_warnings_go_to_stderr_and_table_to_stdout(tmp_path, capsys):
    import onnx

    from .test_check import mlp

    path = tmp_path / "custom.onnx"
    onnx.save_model(mlp(depth=3, custom=True), str(path))
    code, out, err = run(["analyze", path], capsys)
    assert code == 0 and "node mystery (Mystery)" in err and "passed through" in err
    assert out.splitlines()[0].split()[:3] == ["#", "tensor", "op"]


@pytest.mark.parametrize("content", [None, b"junk", b"\x08\x07\x12"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run(["analyze", path], capsys)
    assert code == 2 and out == "" and err.startswith("onnxinit: error:")
    assert len(err.strip().splitlines()) == 1


def test_truncated_sample_model(tmp_path, capsys):
    data = Path(sample("small_cnn")).read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    code, _, err = run(["analyze", path], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def _dynamo_like_convnet(rule_name: str | None):
    """Three bias-free Convs + ReLU with the layers' own weight names, as torch.onnx's dynamo
    exporter writes a Conv + BatchNorm network (it folds the BatchNorm, drops the zero bias and
    records the onnxscript rewrite rule in the node's metadata); ``rule_name`` None: no record
    (a network whose Convs simply have no bias)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import make_model

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        w = f"features.{i}.0.weight"
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((4, 4, 3, 3)) * 0.2).astype(np.float32), w))
        conv = helper.make_node("Conv", [x, w], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}")
        if rule_name is not None:
            entry = conv.metadata_props.add()
            entry.key, entry.value = "pkg.onnxscript.rewriter.rule_name", rule_name
        nodes += [conv, helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)]
    return make_model(nodes, inputs, outputs, inits)


def test_batchnorm_folded_by_the_dynamo_exporter_is_named():
    """torch.onnx.export(dynamo=True) folds BatchNorm into the Convs even in training mode and
    keeps the weights' names (the zero-bias evidence is gone); its metadata says so."""
    folded = analyze(_dynamo_like_convnet("RemoveOptionalBiasFromConv, FuseBatchNormIntoConv"))
    assert any("folded into 3 node(s) by the exporter" in w for w in folded.warnings)
    plain = analyze(_dynamo_like_convnet(None))
    assert not any("folded" in w for w in plain.warnings)
