"""A value computed on first use (a field that a rule may never read: the spatial correlation
of a Sigmoid whose only reader is its SiLU's fused Mul)."""

from __future__ import annotations

from collections.abc import Callable


class Deferred:
    """``compute()`` called on the first :meth:`get`, its result kept (and ``compute``, with
    what it holds, dropped). ``compute`` must read only what it was given, never state that
    changes after its maker returned: the value is then the one computing it at once gives."""

    __slots__ = ("_compute", "_value")

    def __init__(self, compute: Callable[[], object]):
        self._compute: Callable[[], object] | None = compute
        self._value: object = None

    def get(self) -> object:
        compute = self._compute
        if compute is not None:
            self._value = compute()
            self._compute = None
        return self._value

    @property
    def computed(self) -> bool:
        return self._compute is None


class DeferredCorrelation(Deferred):
    """A :class:`~onnxinit.correlation.Correlation` computed on first use whose ``radius`` and
    ``energy_pairs`` flag are known before (a rule that asks only for those does not compute
    it)."""

    __slots__ = ("radius", "energy_pairs")

    def __init__(self, compute: Callable[[], object], radius: tuple[int, ...],
                 energy_pairs: bool = False):
        super().__init__(compute)
        self.radius = radius
        self.energy_pairs = energy_pairs

    def get(self) -> object:
        value = super().get()
        if value.radius != self.radius or value.energy_pairs != self.energy_pairs:
            raise AssertionError("a deferred correlation is not what its maker said")
        return value


def resolved(value: object) -> object:
    """``value``, or what it computes when it is a :class:`Deferred`."""
    return value.get() if isinstance(value, Deferred) else value


__all__ = ["Deferred", "DeferredCorrelation", "resolved"]
