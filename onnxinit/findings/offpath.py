"""``ONNXINIT007 off-path-scale`` (note): ``--max-growth`` or ``--min-var`` crossed off the main
signal path (:mod:`onnxinit.signal_path`: residual branches, gates, attention weights and logits,
normalization statistics, tensors only a normalization reads) or first in the output head (a
small classifier init) or in a stack of recurrent layers. One note per (kind of side path,
direction), and one per head or recurrent chain; an
exploding residual branch gives none (it reaches the signal at its Add, which the main path
judges). Notes never fail the gate: they say where, by how much, and ask whether it is by design.
"""

from __future__ import annotations

import math

from ..analysis import Analysis
from ..side_paths import BRANCH, FUNCTION, SidePath
from ..signal_path import SignalPaths
from .base import Finding, RuleInfo, fmt, register
from .scale import Scale, flag, head_input_of, judged, recurrent_stack, severity

OFF_PATH = "ONNXINIT007"
NORMALIZED = "normalized"
register(
    RuleInfo(OFF_PATH, "off-path-scale", "note", "Large or small scale off the main signal path",
             "A tensor that is not on the main signal path crosses --max-growth or --min-var: "
             "inside a residual branch (a branch small next to its skip is LayerScale, "
             "zero-init, Fixup or SkipInit by design: the skip carries the signal), on a gating "
             "side path (squeeze-excite, sigmoid/softmax gates), among attention weights and "
             "logits (probabilities of about 1/tokens have a tiny variance by construction; "
             "masks of -inf, finfo.min or -100 a huge one), among normalization statistics; or "
             "the output head alone makes the logits small (a classifier initialised with a "
             "small std). None of these stops training; the note says where, by how much, and "
             "asks whether it is by design."),
)



def _side_note(kind: str, direction: str, tensors: list[str], analysis: Analysis,
               paths: SignalPaths, scale: dict[str, Scale]) -> Finding:
    graph = analysis.graph
    worst = max(tensors, key=lambda t: severity(scale[t], direction))
    first = tensors[0]
    side = paths.side.get(first)
    where = ("main path, before a normalization" if kind == NORMALIZED else
             f"{kind}, at {_count(len({paths.side[t].join for t in tensors}), 'join')}")
    value = judged(scale[worst], direction)
    bound = (f"above --max-growth {analysis.max_growth:g}" if direction == "exploding"
             else f"below --min-var {analysis.min_var:g}")
    quantity = "variance" if direction == "exploding" else "signal variance"
    message = (f"{_count(len(tensors), 'tensor')} whose scale does not reach the signal "
               f"({where}) {'has' if len(tensors) == 1 else 'have'} a {quantity} {bound}, first "
               f"{first!r} {paths.describe(first)}, the most extreme {worst!r} at {fmt(value)}x "
               "the input variance")
    if kind == BRANCH:
        message += _branch_ratio(side, scale)
    message += f": {_BY_DESIGN[kind]}"
    return Finding(OFF_PATH, "note", message, first, *graph.writer(first), float(value))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


_BY_DESIGN = {
    BRANCH: "the skip carries the signal; a small residual branch is LayerScale, zero-init, "
            "Fixup or SkipInit by design?",
    "gate": "a gate (squeeze-excite, sigmoid or softmax gating) scales the signal without "
            "carrying it; by design?",
    "attention": "attention probabilities (about 1/tokens each) and masks (-inf, finfo.min, "
                 "-100) have extreme variances by construction; by design?",
    "statistic": "normalization statistics and other broadcast side inputs do not carry the "
                 "signal; by design?",
    NORMALIZED: "each feeds only a normalization layer, which divides its scale out (e.g. a "
                "depthwise convolution initialised with fan_out over all channels); by design?",
}


def _branch_ratio(side: SidePath, scale: dict[str, Scale]) -> str:
    branch, skip = scale.get(side.tensor), scale.get(side.carrier)
    if branch is None or skip is None or skip.signal <= 0:
        return ""
    return (f" (block {side.join!r}: the branch ends at {fmt(branch.signal / skip.signal)}x the "
            "signal variance of its skip)")


def _head_note(chain: list[str], analysis: Analysis, paths: SignalPaths,
               scale: dict[str, Scale]) -> Finding:
    graph = analysis.graph
    first = chain[0]
    head_input = head_input_of(first, analysis, paths)
    value = scale[first].signal
    gain = value / scale[head_input].signal if scale[head_input].signal > 0 else math.inf
    message = (f"the output head makes the signal small: {first!r} {paths.describe(first)} is at "
               f"{fmt(value)}x the input variance, below --min-var {analysis.min_var:g}, while "
               f"the head's input {head_input!r} is at {fmt(scale[head_input].signal)}x (the head "
               f"multiplies the signal variance by {fmt(gain)}): small logits at initialization "
               "(a classifier initialised with a small std, or zero) do not stop training; by "
               "design?")
    return Finding(OFF_PATH, "note", message, first, *graph.writer(first), float(value))


def _recurrent_note(chain: list[str], analysis: Analysis, paths: SignalPaths,
                    scale: dict[str, Scale]) -> Finding:
    graph = analysis.graph
    first = chain[0]
    worst = min(chain, key=lambda t: scale[t].signal)
    entry, layers = recurrent_stack(first, analysis, paths)
    value = scale[worst].signal
    message = (f"a stack of recurrent layers makes the signal small: {first!r} "
               f"{paths.describe(first)} is at {fmt(scale[first].signal)}x the input variance, "
               f"below --min-var {analysis.min_var:g} ({worst!r} at {fmt(value)}x), while the "
               f"stack's input {entry!r} is at {fmt(scale[entry].signal)}x ({layers} recurrent "
               "layers up to here): PyTorch's default LSTM/GRU init shrinks the signal about 20x "
               "per layer, and such stacks train with an adaptive optimizer (Adam); with SGD, "
               "onnxinit rescale MODEL --method autoinit")
    return Finding(OFF_PATH, "note", message, first, *graph.writer(first), float(value))


def find(analysis: Analysis, paths: SignalPaths, scale: dict[str, Scale],
                   head_chains: list[list[str]]) -> list[Finding]:
    groups: dict[tuple[str, str], list[str]] = {}
    for t in analysis.tensors:
        side = paths.side.get(t.name)
        if t.name not in scale or (side is None and t.name not in paths.normalized):
            continue
        if t.name in paths.unused:  # reaches no output: a training-mode BatchNormalization's
            continue  # running mean and variance, a LayerNorm's saved statistics
        direction = flag(scale[t.name], analysis.max_growth, analysis.min_var)
        if direction is None:
            continue
        kind = NORMALIZED if t.name in paths.normalized else side.kind
        if (kind, direction) == (BRANCH, "exploding") or kind == FUNCTION:
            continue  # it reaches the signal only at its Add / as the function's output
        groups.setdefault((kind, direction), []).append(t.name)
    notes = [_side_note(kind, direction, tensors, analysis, paths, scale)
             for (kind, direction), tensors in groups.items()]
    notes.extend(_head_note(chain, analysis, paths, scale)
                 if head_input_of(chain[0], analysis, paths) is not None
                 else _recurrent_note(chain, analysis, paths, scale) for chain in head_chains)
    return notes
