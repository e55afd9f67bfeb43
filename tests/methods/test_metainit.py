"""MetaInit: the gradient quotient's alpha-gradient (second and third-order terms) against
central differences (float64), the update rule's scope, and its direction on the
normalization-free ResNet-20."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.graph import load
from onnxinit.methods import METHODS, metainit
from onnxinit.methods.metainit import MetaInitOptions, gradient_quotient, is_weight
from tests.methods.scaleopt_fixtures import (
    RESNET,
    assert_gradient_matches,
    central_difference,
    random_alpha,
    tiny_run,
)


def test_registered_with_defaults():
    assert METHODS["metainit"] == (metainit.plan, MetaInitOptions)
    o = MetaInitOptions()
    assert (o.metainit_lr, o.metainit_momentum, o.metainit_steps, o.metainit_eps) == (
        0.1, 0.9, 500, 1e-5)


def test_quotient_value():
    """GQ = mean |(g - Hg) / (g + eps sign g) - 1| over every parameter element."""
    run = tiny_run()
    oracle, space = run.oracle, run.space
    alpha = random_alpha(run)
    batch = run.source.batch(0)
    result = gradient_quotient(oracle, space, alpha, batch, 1e-5, gradient=False)
    theta = space.theta(alpha)
    _, g = oracle.gradient(theta, batch)
    hg = oracle.hvp(theta, g, batch)
    expected = np.mean(np.abs((g - hg) / (g + 1e-5 * np.where(g >= 0, 1, -1)) - 1))
    assert result.gq == pytest.approx(expected) and result.grad is None
    assert len(g) == sum(v.size for v in oracle.values.values())  # N: every parameter


@pytest.mark.parametrize("hvp", ["exact", "fd"])
def test_quotient_gradient(hvp):
    """dGQ/dalpha = <H (a - H b) - D3L[b, g, .], p0> against central differences of GQ."""
    run = tiny_run(hvp=hvp, select=is_weight)
    oracle, space = run.oracle, run.space
    assert space.names == ("w0", "w1", "w2")  # rank >= 2 only
    alpha = random_alpha(run)
    batch = run.source.batch(0)
    analytic = gradient_quotient(oracle, space, alpha, batch, 1e-5).grad
    numeric = central_difference(
        lambda a: gradient_quotient(oracle, space, a, batch, 1e-5, gradient=False).gq, alpha)
    assert_gradient_matches(analytic, numeric, rtol=1e-5)


def test_resnet20_nobn_lowers_gradient_quotient():
    """Six sign-SGD steps on random Gaussian data lower GQ on a held-out batch; only weights
    (rank >= 2) are rescaled."""
    graph = load(RESNET, batch_size=8)
    plan = metainit.plan(graph, MetaInitOptions(metainit_steps=6, seed=0))
    report = plan.report
    assert report["after"]["gq"] < 0.5 * report["before"]["gq"]
    assert report["hessian_vector_products"] == "finite differences of gradients"
    assert all(graph.parameters[n].shape.__len__() >= 2 for n in plan.changes)
    assert len(report["trajectory"]) == 6 and report["constraint_steps"] == 0
