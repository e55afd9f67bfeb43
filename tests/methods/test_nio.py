"""NIO: the same scale trajectory as a PyTorch NIO written from the paper and the authors'
configuration (tests/references/nio_ref.py: sub-batch gradients of one forward by double
backward) on a tanh MLP, a normalization-free ResNet-20 with max pooling and a 2-layer
transformer; its objective raised on fresh batches measured in PyTorch; sub-batch bounds and
alpha-gradients against central differences (float64)."""

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
    assert_gradient_matches,
    central_difference,
    random_alpha,
    tiny_run,
)
from tests.models import mlp

torch = pytest.importorskip("torch")

from tests.references.compare import ITERATIONS, TOLERANCE, compare  # noqa: E402
from tests.references.fresh import deep_tanh_mlp, run_and_measure  # noqa: E402
from tests.references.nio_ref import nio_reference, sub_batches  # noqa: E402
from tests.references.twins import TWINS  # noqa: E402
from tests.references.compare import slow as SLOW  # noqa: E402

# bounds that put some of the 20 iterations of each twin above the bound and some below
GAMMA = {"tanh_mlp": 1.0, "transformer": 1.5, "resnet20_maxpool": 1.0}


def test_registered_with_defaults():
    assert METHODS["nio"] == (nio.plan, NIOOptions)
    o = NIOOptions()
    assert (o.nio_lr, o.nio_iterations, o.nio_gamma, o.nio_splits, o.nio_overlap, o.nio_gn_mul,
            o.nio_objective) == (3e-3, 100, 10.0, 4, 0.2, 1.0, "gc_gn_sqrt")


@pytest.mark.parametrize("twin", ["tanh_mlp", SLOW("transformer"), SLOW("resnet20_maxpool")])
def test_same_scales_as_the_paper_algorithm(twin):
    """20 iterations, 4 overlapping sub-batches of a batch of 8: every scale within 1e-3 of the
    reference's after every iteration, with the same constraint steps."""
    gamma = GAMMA[twin]
    difference, compared, plan, records = compare(
        "nio", twin, nio_reference, dict(nio_iterations=ITERATIONS, nio_lr=0.01, nio_gamma=gamma),
        dict(lr=0.01, gamma=gamma))
    branches = [r["constraint"] for r in plan.report["trajectory"]]
    assert branches == [r["constraint"] for r in records]
    assert any(branches) and not all(branches)
    assert compared == ITERATIONS and difference < TOLERANCE, difference


def test_same_scales_as_the_paper_algorithm_gradcosine_alone():
    difference, compared, _, _ = compare(
        "nio", "tanh_mlp", nio_reference,
        dict(nio_iterations=ITERATIONS, nio_lr=0.01, nio_objective="gc", nio_splits=2),
        dict(lr=0.01, objective="gc", splits=2))
    assert compared == ITERATIONS and difference < TOLERANCE, difference


@pytest.mark.parametrize("twin", ["tanh_mlp", SLOW("transformer"), SLOW("resnet20_maxpool"),
                                  SLOW("deep")])
def test_defaults_raise_the_objective_on_fresh_batches(tmp_path, twin):
    """Default hyperparameters (30 iterations instead of 100, to keep the suite fast; the
    full-length runs are in the issue note) on teacher-labelled data: on batches of a second
    draw, measured in PyTorch, the objective is higher with the mean sub-batch gradient norm
    within gamma."""
    model = deep_tanh_mlp() if twin == "deep" else TWINS[twin]()
    result = run_and_measure("nio", model, tmp_path, nio_iterations=30)
    assert result["improved"], (result["before"], result["after"])


def test_chunk_bounds_as_the_reference_code():
    # l = 16: [0, 19.2), [12.8, 38.4), [25.6, 57.6), [38.4, 64) truncated as int() does
    assert chunk_bounds(64, 4, 0.2) == [(0, 19), (12, 38), (25, 57), (38, 64)]
    assert chunk_bounds(8, 2, 0.0) == [(0, 4), (4, 8)]
    for size, splits, overlap in ((64, 4, 0.2), (8, 4, 0.2), (30, 3, 0.5)):
        assert chunk_bounds(size, splits, overlap) == sub_batches(size, splits, overlap)
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
