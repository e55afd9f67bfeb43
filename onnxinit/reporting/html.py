"""The report as one self-contained HTML page: inline CSS, the plot as a base64 PNG, no script,
nothing fetched from anywhere.

Every number on the page is a ``<data>`` element whose ``value`` is the number itself and whose
``data-ref`` says where it comes from, so that a reader's tools (and the tests) can check each
against the documents the command line prints:

- ``model:/tensors/5/var``: a JSON pointer into ``analyze --json`` of MODEL (``rescaled:`` of
  RESCALED); ``model.check:/summary/errors`` into MODEL's entry of ``check --format json``;
- ``max:model:/tensors/3:18/var`` and ``min:``: the largest or smallest of that field over
  tensors 3 to 17; ``flagged:model:/tensors/3:18``: how many of them carry a flag;
- ``count:model:/tensors``: a list's length; ``index:model:/tensors/5``: a position in it
  (``ordinal:``: the position counted from one);
- ``scale:NAME``: the weight scale of initializer NAME (:mod:`.scales`).

Model strings (tensor, node, op and parameter names, stage labels) are in elements of class
``name``; check's messages and analysis warnings, verbatim, in elements of class ``message``.
"""

from __future__ import annotations

import base64
import math
from html import escape

from ..report import format_number
from .content import ModelView, ReportContent

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;
max-width:1180px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;
border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}.plot{width:100%;max-width:1100px;display:block;margin:1em 0}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
th,td{padding:.15em .5em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f4f6f8;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:
tabular-nums;white-space:nowrap}.name{font-family:ui-monospace,Menlo,Consolas,monospace;
overflow-wrap:anywhere}td.nowrap{white-space:nowrap}
tr.finding td{background:#fde2e2}tr.exploding td,tr.vanishing td{background:#fff1e0}
tr.block-end td{border-bottom:2px solid #9fb3c8}.level-error{color:#b00020;font-weight:600}
.level-warning{color:#a15c00;font-weight:600}.level-note{color:#555}
.passed{color:#1b7f3b;font-weight:600}.failed{color:#b00020;font-weight:600}
ul.facts{padding-left:1.2em}details{margin:.8em 0}summary{cursor:pointer;color:#1f4e79}
.none{color:#aaa}
"""


def number(value, ref: str) -> str:
    """A number and where it comes from (see the module docstring); ``-`` for None."""
    if value is None:
        return '<span class="none">-</span>'
    if isinstance(value, str):  # "inf" / "nan" as the JSON documents write them
        value = float(value)
    shown = str(value) if isinstance(value, int) else format_number(value)
    raw = str(value) if isinstance(value, int) or not math.isfinite(value) else repr(value)
    return f'<data value="{raw}" data-ref="{escape(ref)}">{shown}</data>'


def name(text: str, tag: str = "span") -> str:
    return f'<{tag} class="name">{escape(text)}</{tag}>'


def _cell(content: str, numeric: bool = False, nowrap: bool = False) -> str:
    if numeric:
        return f'<td class="num">{content}</td>'
    return f'<td class="nowrap">{content}</td>' if nowrap else f"<td>{content}</td>"


def _table(header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _summary(content: ReportContent) -> str:
    items = []
    for view in content.views:
        tensors, key = view.tensors, view.key
        status = view.check["status"]

        def checked(field: str, view=view) -> str:
            return number(view.check["summary"][field], f"{view.key}.check:/summary/{field}")

        last = len(tensors) - 1
        what = "Model" if key == "model" else "Rescaled model"
        facts = [f"{number(len(tensors), f'count:{key}:/tensors')} float tensors analysed",
                 f"output {name(tensors[last]['name'])}: predicted variance "
                 f"{number(tensors[last]['var'], f'{key}:/tensors/{last}/var')}, "
                 f"{number(tensors[last]['growth'], f'{key}:/tensors/{last}/growth')}x the input",
                 f'check: <span class="{status}">{status}</span>; '
                 + ", ".join(f"{field} {checked(field)}"
                             for field in ("errors", "warnings", "notes"))
                 + f" (--max-growth {checked('max_growth')}, --min-var {checked('min_var')})"]
        if view.measured:
            worst = max((t.get("relative_error", 0.0) for t in tensors), default=0.0)
            facts.append("predicted vs measured variance: worst relative error "
                         f"{number(worst, f'max:{key}:/tensors/0:{len(tensors)}/relative_error')}")
        if view.backward:
            facts.append(f"gradients from the loss {name(view.analysis['backward']['loss'])}")
        items.append(f"<li>{what} {name(view.path)}<ul class=\"facts\">"
                     + "".join(f"<li>{f}</li>" for f in facts) + "</ul></li>")
    return f'<ul class="facts">{"".join(items)}</ul>'


def _findings(view: ModelView) -> str:
    if not view.findings:
        return "<p>No findings.</p>"
    rows = []
    for k, f in enumerate(view.findings):
        rows.append("<tr>" + "".join([
            _cell(f'<span class="level-{escape(f["level"])}">{escape(f["level"])}</span>'),
            _cell(name(f["rule_id"]) + "<br>" + name(f["rule"]), nowrap=True),
            _cell(name(f["tensor"]) + "<br>" + name(f["node"])),
            _cell(number(f.get("value"), f"{view.key}.check:/findings/{k}/value"), True),
            f'<td class="message">{escape(f["message"])}</td>']) + "</tr>")
    return _table(["level", "rule", "tensor / node", "value", "message"], rows)


def _flag_text(tensor: dict, rules: list[str]) -> str:
    parts = [escape(tensor["flag"])] if tensor.get("flag") else []
    parts += [name(r) for r in rules]
    return " ".join(parts)


def _tensor_rows(content: ReportContent) -> tuple[list[str], list[str]]:
    model, after = content.model, content.rescaled
    measured, backward = model.measured, model.backward
    header = ["#", "tensor", "op", "shape", "mean", "var", "growth"]
    if measured:
        header += ["measured mean", "measured var", "rel. error"]
    if backward:
        header += ["grad var"] + (["measured grad var"] if measured else [])
    if after is not None:
        header += ["var after", "growth after", "flag after"]
    header += (["block"] if content.blocks else []) + ["flag"]
    ends = {end: k for k, _, end in content.blocks}
    found = model.findings_at()
    found_after = after.findings_at() if after is not None else {}
    rows = []
    for i, t in enumerate(model.tensors):
        ref = f"model:/tensors/{i}"
        shape = "x".join(map(str, t["shape"])) if t.get("shape") else None
        cells = [_cell(number(i, f"index:{ref}"), True), _cell(name(t["name"])),
                 _cell(name(t["op"])),
                 _cell(f'<data value="{escape(shape)}" data-ref="{ref}/shape">{escape(shape)}'
                       "</data>" if shape else '<span class="none">-</span>')]
        cells += [_cell(number(t.get(f), f"{ref}/{f}"), True) for f in ("mean", "var", "growth")]
        if measured:
            cells += [_cell(number(t.get(f), f"{ref}/{f}"), True)
                      for f in ("measured_mean", "measured_var", "relative_error")]
        if backward:
            fields = ["grad_var"] + (["measured_grad_var"] if measured else [])
            cells += [_cell(number(t.get(f), f"{ref}/{f}"), True) for f in fields]
        if after is not None:
            a = after.tensors[i]
            cells += [_cell(number(a.get(f), f"rescaled:/tensors/{i}/{f}"), True)
                      for f in ("var", "growth")]
            cells.append(_cell(_flag_text(a, found_after.get(a["name"], []))))
        k = ends.get(i)
        if content.blocks:
            cells.append(_cell("" if k is None else "end of block "
                               + number(k + 1, f"ordinal:model:/residual_blocks/{k}"),
                               nowrap=True))
        cells.append(_cell(_flag_text(t, found.get(t["name"], []))))
        classes = [c for c in ("finding" if t["name"] in found else "",
                               t.get("flag") or "", "block-end" if k is not None else "") if c]
        rows.append(f'<tr class="{" ".join(classes)}">{"".join(cells)}</tr>')
    return header, rows


def _stage_rows(content: ReportContent) -> tuple[list[str], list[str]]:
    model, after = content.model, content.rescaled
    header = ["stage", "tensors", "last tensor", "var at end", "min var", "max var", "flagged"]
    if model.measured:
        header.append("worst rel. error")
    if model.backward:
        header.append("grad var at end")
    if after is not None:
        header += ["var at end after", "min var after", "max var after"]
    header.append("findings")
    found = model.findings_at()
    rows = []
    for s in content.stages:
        span = model.tensors[s.first:s.last + 1]
        part = f"/tensors/{s.first}:{s.last + 1}"
        end = f"/tensors/{s.last}"
        cells = [_cell(name(s.label) if s.label else '<span class="none">-</span>'),
                 _cell(f"{number(s.first, f'index:model:/tensors/{s.first}')} to "
                       f"{number(s.last, f'index:model:{end}')}", True),
                 _cell(name(model.tensors[s.last]["name"])),
                 _cell(number(model.tensors[s.last]["var"], f"model:{end}/var"), True)]
        cells += [_cell(number(fn(t["var"] for t in span), f"{fn.__name__}:model:{part}/var"),
                        True) for fn in (min, max)]
        cells.append(_cell(number(sum(1 for t in span if t.get("flag")),
                                  f"flagged:model:{part}"), True))
        if model.measured:
            errors = [t["relative_error"] for t in span if "relative_error" in t]
            cells.append(_cell(number(max(errors) if errors else None,
                                      f"max:model:{part}/relative_error"), True))
        if model.backward:
            cells.append(_cell(number(model.tensors[s.last].get("grad_var"),
                                      f"model:{end}/grad_var"), True))
        if after is not None:
            later = after.tensors[s.first:s.last + 1]
            cells.append(_cell(number(after.tensors[s.last]["var"], f"rescaled:{end}/var"), True))
            cells += [_cell(number(fn(t["var"] for t in later),
                                   f"{fn.__name__}:rescaled:{part}/var"), True)
                      for fn in (min, max)]
        rules = [r for t in span for r in found.get(t["name"], [])]
        cells.append(_cell(" ".join(name(r) for r in dict.fromkeys(rules))))
        rows.append(f'<tr class="{"finding" if rules else ""}">{"".join(cells)}</tr>')
    return header, rows


def _layer_scales(content: ReportContent) -> str:
    index = content.index()
    rows = []
    for s in content.layers:
        i = index.get(s.output)
        before = content.model.tensors[i]["var"] if i is not None else None
        after = content.rescaled.tensors[i]["var"] if i is not None else None
        rows.append("<tr>" + "".join([
            _cell(name(s.node)), _cell(name(s.weight)),
            _cell(number(s.scale, f"scale:{s.weight}"), True), _cell(name(s.output)),
            _cell(number(before, f"model:/tensors/{i}/var"), True),
            _cell(number(after, f"rescaled:/tensors/{i}/var"), True)]) + "</tr>")
    return _table(["layer", "weight", "scale", "output", "var before", "var after"], rows)


def _parameters(view: ModelView) -> str:
    fields = ["grad_var", "weight_rms", "update_ratio"]
    if any("measured_grad_var" in p for p in view.analysis["parameters"]):
        fields.append("measured_grad_var")
    rows = []
    for k, p in enumerate(view.analysis["parameters"]):
        cells = [_cell(name(p["name"])), _cell(name(p["node"])), _cell(name(p["role"]))]
        cells += [_cell(number(p.get(f), f"{view.key}:/parameters/{k}/{f}"), True)
                  for f in fields]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return _table(["parameter", "node", "role", *(f.replace("_", " ") for f in fields)], rows)


def _folded(title: str, body: str, open_: bool) -> str:
    return f"<details{' open' if open_ else ''}><summary>{escape(title)}</summary>{body}</details>"


def document(content: ReportContent, png: bytes) -> str:
    """The HTML page of ``content`` with the figure ``png``."""
    model, after = content.model, content.rescaled
    title = f"onnxinit report: {model.path}"
    parts = [f"<h1>onnxinit report</h1><p class=\"sub\">{name(model.path)}"
             + (f" and its rescaled copy {name(after.path)}" if after is not None else "")
             + "</p>", _summary(content),
             '<img class="plot" alt="predicted variance of every tensor by depth, log scale" '
             f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">']
    for view in content.views:
        label = "" if view.key == "model" else " of the rescaled model"
        parts.append(f"<h2>Check findings{label}</h2>{_findings(view)}")
    tensors = _table(*_tensor_rows(content))
    if content.stages:
        parts.append("<h2>Tensors by stage</h2><p>Consecutive tensors grouped at residual "
                     "blocks (or layers); the full table follows, folded.</p>"
                     + _table(*_stage_rows(content)))
        parts.append(_folded("Every tensor", tensors, False))
    else:
        parts.append(f"<h2>Tensors</h2>{tensors}")
    if content.layers:
        parts.append("<h2>Per-layer weight scales</h2><p>rms of the rescaled weight over rms "
                     "of the original one.</p>" + _layer_scales(content))
    for view in content.views:
        if view.backward:
            label = "" if view.key == "model" else " of the rescaled model"
            parts.append(f"<h2>Parameter gradients{label}</h2><p>Predicted variance of dL/dW, "
                         "the weight's rms and their update ratio (learning rate one).</p>"
                         + _parameters(view))
    for view in content.views:
        warnings = view.analysis["warnings"]
        if warnings:
            parts.append(f"<h2>Warnings ({escape(view.key)})</h2><ul>"
                         + "".join(f'<li class="message">{escape(w)}</li>' for w in warnings)
                         + "</ul>")
    parts.append("<footer><p class=\"sub\">Written by onnxinit report: predictions from the "
                 "moment rules with the actual weights; the findings are onnxinit check's. "
                 "This page loads nothing from the network.</p></footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
