import numpy as np
import pytest

from onnxinit.moments import Moments


def test_total_is_law_of_total_variance():
    m = Moments.along([0.0, 2.0], [1.0, 3.0], axis=1, rank=4)
    assert m.mean.shape == (1, 2, 1, 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200_000, 2)) * np.sqrt([1.0, 3.0]) + [0.0, 2.0]
    mean, var = m.total()
    assert mean == pytest.approx(x.mean(), abs=0.01)
    assert var == pytest.approx(x.var(), rel=0.01)
    assert var == pytest.approx(2.0 + 1.0)  # mean of vars 2, var of means 1


def test_values_along_pools_other_axes_and_broadcasts():
    m = Moments.along([1.0, 3.0], [1.0, 1.0], axis=1, rank=3)
    mean, var = m.values_along(1, 2)
    np.testing.assert_allclose(mean, [1.0, 3.0])
    mean, var = m.values_along(2, 5)  # the tracked axis is pooled away
    np.testing.assert_allclose(mean, np.full(5, 2.0))
    np.testing.assert_allclose(var, np.full(5, 2.0))
    scalar = Moments.scalar(0.5, 2.0)
    np.testing.assert_allclose(scalar.values_along(1, 3)[1], [2.0, 2.0, 2.0])


def test_negative_variance_is_clipped_and_pooled_is_scalar():
    m = Moments(np.array([[1.0, 2.0]]), np.array([[-1e-12, 1.0]]))
    assert (m.var >= 0).all()
    assert m.pooled().rank == 0
    assert m.tracked_axes() == (1,)
