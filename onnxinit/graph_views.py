"""Views of a :class:`~onnxinit.graph.ModelGraph` whose initializers hold other values: the
methods try weights layer by layer on a view while the analysis they started from stays
valid. A view shares the structure, shapes and parameter table of the graph it was made from
(its ``root``) and recomputes on use only the constants downstream of what it changed."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from typing import Self

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InvalidOptionError
from .plan import Change


class ChangeViews:
    """The view-making half of ModelGraph (a mixin: it reads the graph's ``initializers``,
    ``constants``, ``consumers``, ``node_by_id``, ``source``, ``value`` and the view state
    ``_root``, ``_values``, ``_stale``, ``_changes``, ``generation``)."""

    def with_values(self, overrides: Mapping[str, np.ndarray]) -> Self:
        """A view of this graph in which the initializers in ``overrides`` hold the given values
        and every constant computed from them is recomputed on use; the structure, shapes,
        parameter table and all other values are shared. Neither graph is changed, so a method
        can try weights layer by layer while the analysis it started from stays valid."""
        view = self._view(overrides)
        view._values.update({name: np.asarray(value) for name, value in overrides.items()})
        return view

    def with_changes(self, changes: Mapping[str, Change]) -> Self:
        """A view as :meth:`with_values` in which each initializer named in ``changes`` holds
        that Change applied to its current value (after this view's own change, if any),
        computed as the file writer computes it (:func:`~onnxinit.plan.changed_values`: float64,
        rounded once to the tensor's dtype) when a rule reads it. Nothing is computed up front,
        and large values are not kept, so a view of a large model costs no memory."""
        view = self._view(changes)
        view._changes.update(self._composed(changes))
        return view

    def take_changes(self, changes: Mapping[str, Change]) -> None:
        """Apply ``changes`` to this view itself, as :meth:`with_changes` applies them to a new
        one: for the one caller that made the view and alone reads it (autoinit's pass, whose
        view per layer would copy the tables of every change before it: quadratic in depth).
        Never on a loaded graph (the root of views), which others share."""
        if self._root is None:
            raise ValueError("take_changes changes a view made by with_changes, not the graph")
        composed, fresh = self._in_place(changes)
        for name in fresh:
            self._values.pop(name, None)
        self._stale.update(fresh)
        self._changes.update(composed)
        self.generation += 1

    @contextlib.contextmanager
    def trying(self, changes: Mapping[str, Change]):
        """Within the block, this view reads as :meth:`with_changes` would make it; afterwards
        it is as before. For the one caller that made the view and alone reads it (autoinit's
        ``--keep-bias`` tries three scales of each layer's weight): the cost is that of the
        changed tensors and the constants computed from them, where a new view per try copied
        the tables of every change before it (quadratic in depth)."""
        if self._root is None:
            raise ValueError("trying changes a view made by with_changes, not the graph")
        composed, fresh = self._in_place(changes)
        saved_values = {name: self._values.pop(name) for name in fresh if name in self._values}
        saved_changes = {name: self._changes.get(name) for name in composed}
        added = fresh - self._stale
        self._stale.update(added)
        self._changes.update(composed)
        self.generation += 1
        try:
            yield self
        finally:
            self.generation += 1
            for name in fresh:
                self._values.pop(name, None)
            self._values.update(saved_values)
            self._stale.difference_update(added)
            for name, change in saved_changes.items():
                if change is None:
                    self._changes.pop(name, None)
                else:
                    self._changes[name] = change

    def _in_place(self, changes: Mapping[str, Change]) -> tuple[dict[str, Change], frozenset[str]]:
        """(the composed changes, the constants they make stale) for a change of this view
        itself; its stale set becomes a set of its own, grown in place."""
        self._require_initializers(changes)
        if not isinstance(self._stale, set):
            self._stale = set(self._stale)
        return self._composed(changes), self.downstream_constants(changes)

    def _require_initializers(self, names) -> None:
        unknown = [name for name in names if name not in self.initializers]
        if unknown:
            raise InvalidOptionError(
                f"{', '.join(repr(n) for n in unknown)}: not an initializer of {self.name}")

    def _composed(self, changes: Mapping[str, Change]) -> dict[str, Change]:
        """Each change after this view's own change of the same initializer, if any."""
        out = {}
        for name, change in changes.items():
            previous = self._changes.get(name)
            if previous is None and self._root is not None and name in self._values:
                previous = Change(array=self._values[name])  # a value given to with_values
            out[name] = previous.then(change) if previous is not None else change
        return out

    def _view(self, names: Mapping[str, object]) -> Self:
        self._require_initializers(names)
        fresh = self.downstream_constants(names)
        view = copy.copy(self)
        if self._root is None:
            view._root, view._values, view._stale = self, {}, frozenset(fresh)
        else:
            view._values = {k: v for k, v in self._values.items() if k not in fresh}
            view._stale = self._stale | fresh
        view._changes = {k: c for k, c in self._changes.items() if k not in names}
        return view

    def downstream_constants(self, tensors) -> frozenset[str]:
        """Constants computed (through any number of nodes) from ``tensors``, themselves
        included."""
        seen, stack = set(tensors), list(tensors)
        while stack:
            for node_id, _ in self.consumers.get(stack.pop(), []):
                for out in self.node_by_id[node_id].output:
                    if out and out in self.constants and out not in seen:
                        seen.add(out)
                        stack.append(out)
        return frozenset(seen)

    def source_with_values(self) -> onnx.ModelProto:
        """The model as given with this view's values (:meth:`with_values`,
        :meth:`with_changes`) in its initializers: what a method that runs the model after
        other methods of a composition must execute. The source itself on a graph that is not a
        view or whose view changes no initializer."""
        if self._root is None:
            return self.source
        changed = {n for n in self.initializers if n in self._changes or n in self._values}
        if not changed:
            return self.source
        model = onnx.ModelProto()
        model.CopyFrom(self.source)
        for init in model.graph.initializer:
            if init.name in changed:
                init.CopyFrom(numpy_helper.from_array(np.asarray(self.value(init.name)),
                                                      init.name))
        return model
