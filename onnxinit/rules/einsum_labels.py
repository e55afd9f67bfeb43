"""An Einsum equation with its ellipsis spelled out as letters.

``...`` stands for the leading (broadcast) axes of each operand: ``rank - (letters in the
term)`` of them, right-aligned across the operands as numpy and ONNX broadcast them; the
output's ``...`` has as many as the longest. Hugging Face models write their blocked attention
this way (LongT5's ``...qhd,...khd->...hqk`` over blocks of tokens, ``...nd,...ng->...gd`` for
its global tokens); the rules that read an equation take explicit labels, so
``...ij,...jk->...ik`` on ranks (4, 3) becomes ``abij,bjk->abik`` (letters not used by the
equation, taken in order).
"""

from __future__ import annotations

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def needs_ranks(equation: str) -> bool:
    """Whether :func:`explicit` needs the operands' ranks (an ellipsis or an implicit output)."""
    return "." in equation or "->" not in equation


def explicit(equation: str, ranks: list[int]) -> str | None:
    """``equation`` (spaces removed) with each ``...`` replaced by letters for the operands of
    ``ranks`` and the output written out where it is implicit (the ellipsis, then the letters
    that appear once, in alphabetical order, as ONNX and numpy define it); None where the
    terms and ranks disagree or the letters run out. An explicit equation without an ellipsis
    is returned as it is."""
    eq = equation.replace(" ", "")
    if "->" not in eq:
        letters = eq.replace("...", "").replace(",", "")
        once = sorted(c for c in set(letters) if letters.count(c) == 1)
        eq = eq + "->" + ("..." if "..." in eq else "") + "".join(once)
    if eq.count("->") != 1:
        return None
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    if "..." not in eq:
        return eq
    counts = []
    for term, rank in zip(terms, ranks):
        letters = len(term.replace("...", ""))
        if term.count("...") > 1 or "." in term.replace("...", ""):
            return None
        count = rank - letters if "..." in term else 0
        if count < 0 or ("..." not in term and rank != letters):
            return None
        counts.append(count)
    if rhs.count("...") > 1 or "." in rhs.replace("...", ""):
        return None
    free = [c for c in _LETTERS if c not in eq]
    width = max(counts)
    if width > len(free):
        return None
    leading = "".join(free[:width])

    def spell(term: str, count: int) -> str:
        return term.replace("...", leading[width - count:]) if count else term.replace("...", "")

    out = spell(rhs, width) if "..." in rhs else rhs
    return ",".join(spell(t, c) for t, c in zip(terms, counts)) + "->" + out
