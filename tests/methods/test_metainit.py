"""MetaInit: the same norm trajectory as a PyTorch MetaInit written from the paper's Figure 2
(tests/references/metainit_ref.py: exact double backward for H g, a third backward for dGQ) on a
tanh MLP, a normalization-free ResNet-20 with max pooling and a 2-layer transformer; where it
deliberately differs (a norm bound; finite differences as an option); its gradient quotient
lowered on fresh batches measured in PyTorch; the quotient's alpha-gradient against central
differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinit.methods import METHODS, metainit
from onnxinit.methods.metainit import MetaInitOptions, gradient_quotient, is_weight
from tests.methods.scaleopt_fixtures import (
    assert_gradient_matches,
    central_difference,
    random_alpha,
    tiny_run,
)

torch = pytest.importorskip("torch")

from tests.references.compare import ITERATIONS, TOLERANCE, compare  # noqa: E402
from tests.references.fresh import deep_tanh_mlp, run_and_measure  # noqa: E402
from tests.references.metainit_ref import metainit_reference  # noqa: E402
from tests.references.twins import TWINS  # noqa: E402
from tests.references.compare import slow as SLOW  # noqa: E402


def test_registered_with_defaults():
    assert METHODS["metainit"] == (metainit.plan, MetaInitOptions)
    o = MetaInitOptions()
    assert (o.metainit_lr, o.metainit_momentum, o.metainit_steps, o.metainit_eps,
            o.metainit_hvp) == (0.1, 0.9, 500, 1e-5, "auto")


@pytest.mark.parametrize("twin", ["tanh_mlp", SLOW("transformer"), SLOW("resnet20_maxpool")])
def test_same_norms_as_the_paper_algorithm(twin):
    """20 sign-SGD steps (lr 0.01: these small nets' weight norms are 1 to 5, and the paper's
    0.1 with momentum 0.9 moves a norm by up to 1 per step) from the same weights and batches:
    every scale within 1e-3 of the reference's after every step, with exact derivatives."""
    difference, compared, plan, _ = compare(
        "metainit", twin, metainit_reference, dict(metainit_steps=ITERATIONS, metainit_lr=0.01),
        dict(lr=0.01))
    assert plan.report["hessian_vector_products"].startswith("exact")
    assert compared == ITERATIONS and difference < TOLERANCE, difference


def test_norm_bound_is_the_one_deliberate_difference():
    """At the paper's lr 0.1 a small net's norm is driven below zero within 20 steps: the
    paper's code then flips the tensor's sign (p *= new_norm / norm < 0); onnxinit stops the
    scale at metainit_min_scale. Up to that step the trajectories agree."""
    from tests.references.compare import onnxinit_trajectory, torch_threads

    twin = TWINS["tanh_mlp"]()
    names, ours, _, source = onnxinit_trajectory(
        "metainit", twin, metainit_steps=ITERATIONS, metainit_lr=0.1, precision="float64")
    with torch_threads():
        theirs, _, ref_names = metainit_reference(twin, source, iterations=ITERATIONS)
    theirs = [np.asarray(h)[[ref_names.index(n) for n in names]] for h in theirs]
    first = next(t for t, h in enumerate(theirs) if np.min(h) < 0.01)
    for t in range(first):
        assert np.allclose(ours[t], theirs[t], rtol=1e-9)
    assert np.min(ours[first]) == 0.01 and np.min(ours) >= 0.01


def test_finite_differences_follow_the_paper_on_a_smooth_net():
    """metainit_hvp='fd' (central differences of gradients in float64) tracks the exact
    trajectory on the tanh MLP (on ReLU nets the differences cross kinks: a smoothed
    quotient, a different objective, hence exact by default)."""
    difference, compared, plan, _ = compare(
        "metainit", "tanh_mlp", metainit_reference,
        dict(metainit_steps=ITERATIONS, metainit_lr=0.01, metainit_hvp="fd"), dict(lr=0.01))
    assert plan.report["hessian_vector_products"] == "finite differences of gradients"
    assert compared == ITERATIONS and difference < TOLERANCE, difference


@pytest.mark.parametrize("twin", [
    "tanh_mlp", SLOW("resnet20_maxpool"), SLOW("deep"),
    pytest.param("transformer", marks=[pytest.mark.slow, pytest.mark.xfail(
        strict=True, reason="known shortfall (issue note): after 60 default steps the quotient "
                            "on fresh batches is not lower on the transformer")]),
])
def test_defaults_lower_the_quotient_on_fresh_batches(tmp_path, twin):
    """Default hyperparameters (60 steps instead of 500, to keep the suite fast; the full-length
    runs are in the issue note): the gradient quotient on synthetic batches the method never
    drew, computed in PyTorch by double backward, is lower."""
    model = deep_tanh_mlp() if twin == "deep" else TWINS[twin]()
    result = run_and_measure("metainit", model, tmp_path, metainit_steps=60)
    assert result["improved"], (result["before"], result["after"])


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
    """dGQ/dalpha (the third-order program, or H (a - H b) - D3L[b, g, .] on difference
    products) against central differences of GQ."""
    run = tiny_run(hvp=hvp, select=is_weight)
    oracle, space = run.oracle, run.space
    assert space.names == ("w0", "w1", "w2")  # rank >= 2 only
    alpha = random_alpha(run)
    batch = run.source.batch(0)
    analytic = gradient_quotient(oracle, space, alpha, batch, 1e-5).grad
    numeric = central_difference(
        lambda a: gradient_quotient(oracle, space, a, batch, 1e-5, gradient=False).gq, alpha)
    assert_gradient_matches(analytic, numeric, rtol=1e-5)
