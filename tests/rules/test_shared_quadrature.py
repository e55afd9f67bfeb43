"""``x * Sigmoid(x)`` integrated in the Sigmoid's pass (``smooth_quadrature.sharing``,
``rules/fused_ahead.py``) gives the bits of its own integration: the oracle is the unshared
quadrature (``moments_and_amplitudes`` of the fused function alone), and a whole analysis
with the look-ahead switched off."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxinit
from onnxinit.propagate import single_threaded_blas
from onnxinit.rules import elementwise, smooth_quadrature
from onnxinit.rules.activations import _sigmoid
from onnxinit.rules.smooth_quadrature import Companion, sharing, smooth_moments

from ..models import make_model

_RNG = np.random.default_rng(1)
_OPS = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract}


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with single_threaded_blas():
        yield


def _fused(op, first: bool):
    """The fused rule's function ``op(x, Sigmoid(x))`` (or ``op(Sigmoid(x), x)``), and the
    companion's ``after`` as fused_ahead builds it."""
    if first:
        return (lambda z: op(z, _sigmoid(z))), (lambda x, y: op(x, y))
    return (lambda z: op(_sigmoid(z), z)), (lambda x, y: op(y, x))


def _bits_equal(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.shape == v.shape and u.tobytes() == v.tobytes()


@pytest.mark.parametrize("cells", [1, 7, 257, 3329, 48000, 103065])
@pytest.mark.parametrize("op,first", [("Mul", True), ("Mul", False), ("Sub", False),
                                      ("Add", True)])
def test_companion_gives_the_bits_of_its_own_integral(cells, op, first):
    mean = _RNG.normal(size=(1, cells)) * 2
    var = _RNG.gamma(2.0, size=(1, cells))
    h, after = _fused(_OPS[op], first)
    key = ("Fused", op, first)
    alone_sigmoid = smooth_quadrature.moments_and_amplitudes(_sigmoid, mean, var)
    alone_h = smooth_quadrature.moments_and_amplitudes(h, mean, var)
    with sharing([Companion((("Sigmoid",),), (key,), h, after)]):
        shared_sigmoid = smooth_moments((("Sigmoid",),), _sigmoid, mean, var)
    _bits_equal(shared_sigmoid, alone_sigmoid[:2])
    assert any(k == (key,) for k, *_ in smooth_quadrature._ready)  # integrated ahead
    taken = smooth_moments((key,), h, mean.copy(), var.copy())
    assert not any(k == (key,) for k, *_ in smooth_quadrature._ready)  # and taken
    _bits_equal(taken, alone_h[:2])
    _bits_equal([smooth_quadrature.recall((key,), mean, var)], [alone_h[2]])


def test_companion_is_not_taken_for_other_cells():
    mean = _RNG.normal(size=(1, 500))
    var = _RNG.gamma(2.0, size=(1, 500))
    h, after = _fused(np.multiply, True)
    key = ("Fused", "other cells")
    with sharing([Companion((("Sigmoid",),), (key,), lambda z: 0.0 * z, after)]):
        smooth_moments((("Sigmoid",),), _sigmoid, mean, var)
    other = mean.copy()
    other[0, 3] += 1e-12
    got = smooth_moments((key,), h, other, var)
    _bits_equal(got, smooth_quadrature.moments_and_amplitudes(h, other, var)[:2])
    smooth_quadrature._ready.clear()


def test_offered_companions_do_not_outlive_the_block():
    h, after = _fused(np.multiply, True)
    with sharing([Companion((("Sigmoid",),), (("unused",),), h, after)]):
        pass
    smooth_moments((("Sigmoid",),), _sigmoid, np.zeros((1, 3)), np.ones((1, 3)))
    assert not any(k == (("unused",),) for k, *_ in smooth_quadrature._ready)


def _silu_model(path):
    """Conv -> x * Sigmoid(x) -> Conv -> Sigmoid(x) * x: the position classes of a padded
    conv, both operand orders."""
    w1 = (_RNG.normal(size=(6, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (_RNG.normal(size=(5, 6, 3, 3)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["a"], ["s"]),
             helper.make_node("Mul", ["a", "s"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Sigmoid", ["c"], ["t"]),
             helper.make_node("Mul", ["t", "c"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [1, 3, 12, 12])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(model, path)
    return str(path)


def test_analysis_is_the_same_without_the_look_ahead(tmp_path, monkeypatch):
    path = _silu_model(tmp_path / "silu.onnx")
    taken = []
    take = smooth_quadrature._take_ready

    def counted(*args):
        out = take(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(smooth_quadrature, "_take_ready", counted)
    shared = onnxinit.analyze(path, batch_size=8)
    assert sum(taken) == 2  # both Muls took the answer integrated in their Sigmoid's pass
    monkeypatch.setattr(elementwise, "QUADRATURE_COMPANIONS", [])
    alone = onnxinit.analyze(path, batch_size=8)
    assert [t.name for t in shared.tensors] == [t.name for t in alone.tensors]
    for a, b in zip(shared.tensors, alone.tensors):
        assert repr((a.mean, a.var)) == repr((b.mean, b.var))
