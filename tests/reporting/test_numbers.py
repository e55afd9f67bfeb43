"""Every number of ``onnxinit report``'s page checked against what the command line prints on
its own: ``analyze --json`` (each tensor's moments, measured values, growth), ``check --format
json`` (findings, summary, thresholds), and for a rescaled copy its ``analyze --json`` and the
plan record ``rescale`` stored in the file (the per-layer scales). Stage aggregates (minimum,
maximum, counts over a range of tensors) are recomputed here from those documents. Every other
piece of visible text is a name or message from the documents or prose without digits, so no
number can reach the page without being checked."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import onnx
import pytest

from tests.cli import run
from tests.models import mlp

from .page import read

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
AGGREGATES = {"index", "ordinal", "count", "min", "max", "flagged", "scale"}


def _json(args, capsys) -> dict:
    code, out, err = run(args, capsys)
    assert code in (0, 1), err
    return json.loads(out)


def documents(model: Path, capsys, rescaled: Path | None = None, extra=()) -> dict:
    """The documents the command line prints on its own, keyed as the page's refs name them."""
    shared = [a for a in extra if a != "--measure"]  # what check takes of analyze's options
    docs = {"model": _json(["analyze", model, "--json", "--backward", *extra], capsys),
            "model.check": _json(["check", model, "--format", "json", *shared],
                                 capsys)["models"][0]}
    if rescaled is not None:
        docs["rescaled"] = _json(["analyze", rescaled, "--json", "--backward", *extra], capsys)
        docs["rescaled.check"] = _json(["check", rescaled, "--format", "json", *shared],
                                       capsys)["models"][0]
        record = {p.key: p.value for p in onnx.load(str(rescaled)).metadata_props}
        docs["plan"] = json.loads(record["onnxinit.plan"])
    return docs


def _walk(node, tokens: list[str]):
    for k, token in enumerate(tokens):
        if ":" in token:
            a, b = map(int, token.split(":"))
            assert 0 <= a < b <= len(node), token
            return [_walk(item, tokens[k + 1:]) if tokens[k + 1:] else item
                    for item in node[a:b]]
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def expected(ref: str, docs: dict):
    """The value ``ref`` names, from the documents alone."""
    head, rest = ref.split(":", 1)
    if head == "scale":
        return docs["plan"]["scales"][rest]
    aggregate = head if head in AGGREGATES else None
    doc, pointer = rest.split(":", 1) if aggregate else (head, rest)
    tokens = pointer.lstrip("/").split("/")
    value = _walk(docs[doc], tokens)
    if aggregate == "index":
        return int(tokens[-1])
    if aggregate == "ordinal":
        return int(tokens[-1]) + 1
    if aggregate == "count":
        return len(value)
    if aggregate in ("min", "max"):
        present = [v for v in value if v is not None]
        return (min if aggregate == "min" else max)(present)
    if aggregate == "flagged":
        return sum(1 for t in value if t.get("flag"))
    if isinstance(value, list):
        return "x".join(map(str, value))
    return value


def _close(a: float, b: float, rel: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)


def known_strings(docs: dict) -> tuple[set[str], set[str]]:
    """(names, messages) the page may show: model strings and check's messages, verbatim."""
    names, messages = set(), set()
    for key in ("model", "rescaled"):
        if key not in docs:
            continue
        analysis, check = docs[key], docs[f"{key}.check"]
        names.add(analysis["model"])
        for t in analysis["tensors"]:
            names.update((t["name"], t["node"], t["op"]))
        for p in analysis.get("parameters", []):
            names.update((p["name"], p["node"], p["role"]))
        if "backward" in analysis:
            names.add(analysis["backward"]["loss"])
        for f in check["findings"]:
            names.update((f["rule_id"], f["rule"], f["tensor"], f["node"]))
            messages.add(f["message"])
        messages.update(analysis["warnings"])
    if "plan" in docs:
        names.update(docs["plan"]["scales"])
    return names, messages


def check_page(html: str, docs: dict) -> dict[str, str]:
    """Check every number, name, message and piece of prose of the page; the refs shown."""
    page = read(html)
    assert page.numbers, "no numbers on the page"
    for value, ref, shown in page.numbers:
        want = expected(ref, docs)
        if isinstance(want, str) and not re.fullmatch(r"inf|-inf|nan", want):
            assert value == want == shown, (ref, value, want, shown)
            continue
        want = float(want)
        assert _close(float(value), want, 1e-6), (ref, value, want)
        assert _close(float(shown), want, 6e-4), (ref, shown, want)
    names, messages = known_strings(docs)
    nodes = {t["node"] for key in ("model", "rescaled") if key in docs
             for t in docs[key]["tensors"]}
    for text in page.names:  # a stage label is a scope of node names
        assert text in names or any(n.startswith(text) for n in nodes), text
    for text in page.messages:
        assert text in messages, text
    prose = " ".join(page.prose)
    assert not re.search(r"\d", prose), re.findall(r".{0,40}\d.{0,40}", prose)
    assert page.images and all(u.startswith("data:") for u in page.urls), page.urls[:3]
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    return {ref: shown for _, ref, shown in page.numbers}


def _report(args, capsys, out: Path) -> str:
    code, _, err = run(["report", *args, "-o", out], capsys)
    assert code == 0, err
    return out.read_text()


def test_every_number_of_a_measured_report_is_analyze_and_checks(tmp_path, capsys):
    model = SAMPLES / "small_cnn.onnx"
    html = _report([model, "--measure"], capsys, tmp_path / "r.html")
    docs = documents(model, capsys, extra=["--measure"])
    refs = check_page(html, docs)
    count = len(docs["model"]["tensors"])
    for i in range(count):  # every tensor is on the page, with its measured values
        for field in ("var", "mean", "growth", "measured_var", "relative_error"):
            assert f"model:/tensors/{i}/{field}" in refs
    assert f"max:model:/tensors/0:{count}/relative_error" in refs


def test_rescaled_report_numbers_and_layer_scales(tmp_path, capsys):
    model = SAMPLES / "resnet20_nobn.onnx"
    rescaled = tmp_path / "resnet20.autoinit.onnx"
    assert run(["rescale", model, "-o", rescaled, "-q"], capsys)[0] == 0
    html = _report([model, rescaled], capsys, tmp_path / "r.html")
    docs = documents(model, capsys, rescaled)
    refs = check_page(html, docs)
    layers = [r for r in refs if r.startswith("scale:")]
    # every convolution and the classifier: the weights autoinit scaled, each with its scale
    assert len(layers) == 22 and {r[6:] for r in layers} <= set(docs["plan"]["scales"])
    assert docs["model.check"]["findings"] and not docs["rescaled.check"]["findings"]
    assert "model.check:/findings/0/value" in refs
    assert any(r.startswith("ordinal:model:/residual_blocks/") for r in refs)


def test_a_deep_model_is_read_by_stage(tmp_path, capsys):
    """500 Gemm+ReLU layers (1000 tensors): at most 64 stage rows, consecutive, covering every
    tensor, each checked against the documents; the full table is folded below."""
    model = tmp_path / "deep.onnx"
    onnx.save(mlp([16] * 501), str(model))
    html = _report([model], capsys, tmp_path / "r.html")
    docs = documents(model, capsys)
    refs = check_page(html, docs)
    ranges = sorted((int(a), int(b)) for a, b in
                    (re.fullmatch(r"max:model:/tensors/(\d+):(\d+)/var", r).groups()
                     for r in refs if re.fullmatch(r"max:model:/tensors/\d+:\d+/var", r)))
    assert 1 < len(ranges) <= 64
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000
    assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))
    assert "<details><summary>Every tensor</summary>" in html


def test_a_transformer_stage_is_labelled_by_its_block(tmp_path, capsys):
    model = SAMPLES / "transformer_postln.onnx"
    html = _report([model], capsys, tmp_path / "r.html")
    check_page(html, documents(model, capsys))
    labels = set(read(html).names)
    assert {"/layers.0", "/layers.1", "/layers.2", "/layers.3"} <= labels


@pytest.mark.parametrize("broken", ["number", "prose"])
def test_the_page_check_fails_on_a_wrong_or_unchecked_number(broken, tmp_path, capsys):
    """The checker itself: a number changed on the page, or a digit outside a checked element,
    is caught."""
    model = SAMPLES / "small_cnn.onnx"
    html = _report([model], capsys, tmp_path / "r.html")
    docs = documents(model, capsys)
    match = re.search(r'(<data value="[^"]*" data-ref="model:/tensors/3/var">)([^<]*)<', html)
    if broken == "number":
        html = html.replace(match.group(0), f"{match.group(1)}{float(match.group(2)) * 1.01:.4g}<")
    else:
        html = html.replace("<h2>Tensors</h2>", "<h2>Tensors (12)</h2>")
    with pytest.raises(AssertionError):
        check_page(html, docs)


def test_a_token_id_model_has_no_ratio_to_its_input(tmp_path, capsys):
    """Token ids have no variance to compare with: the summary gives the output's variance
    alone, as ``analyze``'s does."""
    from tests.test_cli_readme import _bert_like

    model = tmp_path / "bert.onnx"
    _bert_like(model)
    extra = ["--input-shape", "input_ids:2x8"]
    html = _report([model, *extra], capsys, tmp_path / "r.html")
    check_page(html, documents(model, capsys, extra=extra))
    assert "x the input" not in html and "predicted variance" in html
