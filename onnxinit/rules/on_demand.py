"""Fields a rule asks for on demand (the kurtosis and the per-sample energy a global pool reads):
computed for the tensor asked about by walking back through its producers, each tensor once
per propagation state, iteratively (no recursion limit on deep graphs).

A memoised value stays valid while the propagation's moments of its tensor are the same
object: a node recomputed with new moments (a rescale's later pass) recomputes the field.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from .context import RuleContext


class OnDemandField:
    """One field's memo per graph (weakly held: it goes with the graph)."""

    def __init__(self) -> None:
        self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def value(self, ctx: RuleContext, tensor: str, deps: Callable[[str], list],
              compute: Callable[[str, Callable], object]):
        """The field at ``tensor``: ``compute(name, field_of)`` once every tensor of
        ``deps(name)`` has its value, ``field_of`` reading those."""
        known = ctx.known
        memo = self._memo.setdefault(ctx.graph, {})

        def cached(name):
            hit = memo.get(name)
            return hit is not None and hit[0] is known.get(name)

        # a dependency already lower on the stack (a residual block's input, read by its
        # branch and its skip) is pushed again, so that it is computed before its reader;
        # ``expanded`` guards against a cycle, which a graph does not have
        stack, expanded = [tensor], set()
        while stack:
            name = stack[-1]
            if cached(name):
                stack.pop()
                continue
            missing = [d for d in deps(name) if not cached(d)]
            if missing and name not in expanded:
                expanded.add(name)
                stack.extend(missing)
                continue
            memo[name] = (known.get(name), compute(name, lambda n: memo[n][1]))
            stack.pop()
        return memo[tensor][1]


__all__ = ["OnDemandField"]
