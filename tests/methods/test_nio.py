"""NIO: sub-batch bounds, alpha-gradients of GradCosine (+ norms) and of the mean norm against
central differences (float64), and its directions on the normalization-free ResNet-20."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.errors import InvalidOptionError
from onnxinit.graph import load
from onnxinit.methods import METHODS, nio
from onnxinit.methods.nio import (
    NIOOptions,
    chunk_bounds,
    chunk_gradients,
    grad_cosine,
    mean_norm_gradient,
    objective,
    objective_gradient,
)
from tests.methods.scaleopt_fixtures import (
    RESNET,
    assert_gradient_matches,
    central_difference,
    random_alpha,
    tiny_run,
)
from tests.models import mlp


def test_registered_with_defaults():
    assert METHODS["nio"] == (nio.plan, NIOOptions)
    o = NIOOptions()
    assert (o.nio_lr, o.nio_iterations, o.nio_gamma, o.nio_splits, o.nio_overlap, o.nio_gn_mul,
            o.nio_objective) == (3e-3, 100, 10.0, 4, 0.2, 1.0, "gc_gn_sqrt")


def test_chunk_bounds_as_the_reference_code():
    # l = 16: [0, 19.2), [12.8, 38.4), [25.6, 57.6), [38.4, 64) truncated as int() does
    assert chunk_bounds(64, 4, 0.2) == [(0, 19), (12, 38), (25, 57), (38, 64)]
    assert chunk_bounds(8, 2, 0.0) == [(0, 4), (4, 8)]
    with pytest.raises(InvalidOptionError, match="cannot be split"):
        chunk_bounds(3, 4, 0.2)


def test_fixed_batch_refused():
    graph = load(mlp([4, 3], activation=None, dynamic_batch=False), batch_size=4)
    with pytest.raises(InvalidOptionError, match="dynamic batch axis"):
        nio.plan(graph, NIOOptions(nio_iterations=1, nio_splits=2))


def test_grad_cosine_is_mean_off_diagonal_cosine():
    run = tiny_run()
    chunks = chunk_gradients(run.oracle, run.space.theta(np.ones(run.space.size)),
                             run.source.batch(0), chunk_bounds(12, 3, 0.2))
    g = np.array(chunks.grads)
    cos = (g @ g.T) / np.outer(np.linalg.norm(g, axis=1), np.linalg.norm(g, axis=1))
    assert grad_cosine(chunks) == pytest.approx((cos.sum() - 3) / 6)


@pytest.mark.parametrize("gn_mul,hvp", [(1.0, "exact"), (0.0, "exact"), (1.0, "fd")])
def test_objective_gradient(gn_mul, hvp):
    """d/dalpha [GradCosine + gn_mul sum |g_i|] through the per-chunk Hessians."""
    run = tiny_run(hvp=hvp)
    oracle, space = run.oracle, run.space
    alpha = random_alpha(run)
    batch, bounds = run.source.batch(0), chunk_bounds(12, 3, 0.2)
    chunks = chunk_gradients(oracle, space.theta(alpha), batch, bounds)
    analytic = objective_gradient(oracle, space, chunks, gn_mul)
    numeric = central_difference(
        lambda a: objective(chunk_gradients(oracle, space.theta(a), batch, bounds), gn_mul), alpha)
    assert_gradient_matches(analytic, numeric, rtol=1e-5 if hvp == "fd" else 1e-6)


def test_mean_norm_gradient():
    run = tiny_run()
    oracle, space = run.oracle, run.space
    alpha = random_alpha(run)
    batch, bounds = run.source.batch(0), chunk_bounds(12, 3, 0.2)
    chunks = chunk_gradients(oracle, space.theta(alpha), batch, bounds)
    numeric = central_difference(
        lambda a: np.mean(chunk_gradients(oracle, space.theta(a), batch, bounds).norms), alpha)
    assert_gradient_matches(mean_norm_gradient(oracle, space, chunks), numeric)


def test_resnet20_nobn_raises_gradcosine():
    """Maximising GradCosine alone (no norm bound) raises it on a held-out batch."""
    graph = load(RESNET, batch_size=8)
    options = NIOOptions(nio_iterations=6, nio_lr=0.03, nio_splits=2, nio_objective="gc",
                         nio_gamma=1e9, seed=0)
    report = nio.plan(graph, options).report
    assert report["constraint_steps"] == 0
    assert report["after"]["gradcosine"] > report["before"]["gradcosine"]


def test_resnet20_nobn_constraint_steps_lower_the_norm():
    """With the default objective and gamma = 10, PyTorch's init (mean sub-batch gradient norm
    about 190 on random data) first gets constraint steps that lower the norm."""
    graph = load(RESNET, batch_size=8)
    options = NIOOptions(nio_iterations=4, nio_lr=0.05, nio_splits=2, seed=0)
    report = nio.plan(graph, options).report
    assert report["trajectory"][0]["constraint"]
    assert report["after"]["gnorm"] < 0.5 * report["before"]["gnorm"]
    assert {"gradcosine", "gnorm"} <= set(report["trajectory"][0])
