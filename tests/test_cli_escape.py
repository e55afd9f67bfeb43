"""Item 17: model-supplied strings never reach any output raw. A model whose node and tensor
names carry workflow commands, the runner's legacy ``##[`` syntax, terminal escapes and
bidirectional overrides, in a file whose name does too, is run through every command and
format; the output is read as a GitHub Actions runner reads a log (tests/actions_runner.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from .actions_runner import commands, parse_line
from .cli import run

INJECT = "h\n::error file=evil.py,line=7::injected"
LEGACY = "##[warning]legacy"
ANSI = "\x1b[31mred\x1b[0m"
BIDI = "\u202eevil"
LEADING = "::warning::lead"
RAW = ("\x1b", "\u202e", "\r")


def hostile_model() -> onnx.ModelProto:
    """Six exploding MatMul layers (orthogonal weights times 2) and an op of an unknown domain
    (a fallback warning and an ONNXINIT004 note naming it), every name hostile."""
    rng = np.random.default_rng(0)
    names = [INJECT, LEGACY, ANSI, BIDI, LEADING, "plain"]
    nodes, inits, x = [], [], "x"
    for i, name in enumerate(names):
        q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
        inits.append(numpy_helper.from_array((2 * q).astype(np.float32), f"{name} w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"{name} w{i}"], [f"{name} t{i}"],
                                      name=f"{name} n{i}"))
        x = f"{name} t{i}"
    nodes.append(helper.make_node("Mystery", [x], ["y"], name=INJECT + " custom",
                                  domain="com.example"))
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("x", 1, [4, 16])],
                              [helper.make_tensor_value_info("y", 1, [4, 16])], inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    path = folder / "##[error]m\n::error::x.onnx"
    onnx.save_model(hostile_model(), str(path))
    return path


def _assert_inert(text: str) -> None:
    assert not commands(text), [parse_line(line) for line in text.splitlines()
                                if parse_line(line)]
    assert not any(ch in text for ch in RAW)


@pytest.mark.parametrize("args", [["analyze"], ["analyze", "-v"], ["analyze", "--json"],
                                  ["check"], ["check", "-vv", "--format", "json"],
                                  ["check", "--format", "sarif"]])
def test_no_output_of_a_hostile_model_is_a_workflow_command(hostile, args, capsys):
    code, out, err = run([*args, hostile], capsys)
    assert code in (0, 1), err
    assert "warning" in err  # the fallback warning that names the node was printed...
    _assert_inert(out)
    _assert_inert(err)  # ...escaped
    if "--json" in args or "json" in args or "sarif" in args:
        text = json.dumps(json.loads(out))  # the JSON still decodes to the real names
        assert json.dumps(INJECT)[1:-1] in text
        if args[0] == "analyze":
            assert all(json.dumps(n)[1:-1] in text for n in (LEGACY, ANSI, BIDI, LEADING))


def test_github_format_annotates_only_the_findings(hostile, capsys):
    code, out, _ = run(["check", "--format", "json", hostile], capsys)
    (entry,) = json.loads(out)["models"]
    code, out, err = run(["check", "--format", "github", hostile], capsys)
    assert code == 1
    _assert_inert(err)
    found = commands(out)
    assert [c.name for c in found] == [{"error": "error", "warning": "warning",
                                        "note": "notice"}[f["level"]]
                                       for f in entry["findings"]]
    assert all(c.properties["file"] == str(hostile) and not c.legacy for c in found)
    assert all(c.properties["line"] == "1" for c in found)
    assert not any(ch in out for ch in RAW)


def test_rescale_and_export_summaries_are_inert(hostile, tmp_path, capsys):
    out_model = tmp_path / "out.onnx"
    code, out, err = run(["rescale", hostile, "-o", out_model,
                          "--export-weights", tmp_path / "w.npz"], capsys)
    assert code == 0, err
    assert "scale" in out
    _assert_inert(out)
    _assert_inert(err)
    code, out, err = run(["export-weights", out_model, "-o", tmp_path / "w2.npz"], capsys)
    assert code == 0
    _assert_inert(out + err)


def test_errors_naming_model_strings_are_inert(hostile, capsys):
    code, _, err = run(["analyze", hostile, "--stats", f"{INJECT}:0,1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    _assert_inert(err)


def test_escape_text_is_idempotent_and_keeps_plain_text():
    from onnxinit import escape  # here, so the CLI tests above also run against older code

    for s in (INJECT, LEGACY, ANSI, BIDI, LEADING, "plain/name:0", "résumé 名前"):
        once = escape.text(s)
        assert escape.text(once) == once and "\n" not in once and parse_line(once) is None
    assert escape.text("plain/name:0") == "plain/name:0"
    assert escape.text("résumé 名前") == "résumé 名前"
