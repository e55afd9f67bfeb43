"""The scale-optimisation core: flat layouts, alphas and bounds, the chain rule (1), exact and
finite-difference Hessian-vector products, the two optimisers, the loop with its held-out checks,
and the Plan."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import progress
from onnxinit.errors import OnnxInitError, UnsupportedModelError
from onnxinit.graph import load
from onnxinit.methods.gradinit import GradInitOptions
from onnxinit.methods.optimisers import RescaleAdam, SignMomentum
from onnxinit.methods.scaleopt import (
    Assessment,
    Step,
    checkpoint_iterations,
    finish,
    optimise,
    prepare,
)
from onnxinit.methods.scales import Layout
from onnxinit.rescale import rescale
from tests.methods.scaleopt_fixtures import (
    MLP50,
    SAMPLES,
    assert_gradient_matches,
    central_difference,
    random_alpha,
    tiny_run,
)
from tests.models import make_model, mlp


def test_layout_round_trip_and_segment_dot():
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([1.0, -2.0]), "c": np.zeros((0,))}
    layout = Layout.of(arrays)
    flat = layout.join(arrays)
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 1, -2]
    back = layout.split(flat)
    assert back["a"].shape == (2, 3) and back["c"].shape == (0,)
    dots = layout.segment_dot(flat, np.ones(layout.size))
    assert dots.tolist() == [15.0, -1.0, 0.0]


def test_zero_norm_tensors_skipped_and_bounds_by_role():
    model = mlp([4, 5, 3], activation="Tanh")
    zero = numpy_helper.from_array(np.zeros(5, dtype=np.float32), "b0")
    model.graph.initializer[1].CopyFrom(zero)
    graph = load(model, batch_size=6)
    run = prepare(graph, GradInitOptions(), min_scale=0.05, device="cpu")
    space = run.space
    assert "b0" not in space.names and "norm is 0" in space.skipped["b0"]
    assert "b0" in run.oracle.wrt  # still differentiated (GradInit's first step moves it)
    bounds = dict(zip(space.names, space.lower))
    assert bounds == {"w0": 0.05, "w1": 0.05, "b1": 0.0}


def test_constant_mul_operand_is_not_a_parameter():
    w = numpy_helper.from_array(np.ones((3, 3), dtype=np.float32), "w")
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Mul", ["h", "half"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, half])
    run = prepare(load(model, batch_size=4), GradInitOptions(), min_scale=0.01, device="cpu")
    assert run.space.names == ("w",)


def test_no_rescalable_tensor_is_an_error():
    model = mlp([3, 2], activation=None)
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(np.zeros(tuple(init.dims), np.float32), init.name))
    with pytest.raises(UnsupportedModelError, match="non-zero norm"):
        prepare(load(model, batch_size=4), GradInitOptions(), min_scale=0.01, device="cpu")


def test_alpha_gradient_is_the_chain_rule():
    """dL/dalpha_i = <dL/dp_i, p0_i> against central differences of L in alpha (float64)."""
    run = tiny_run()
    oracle, space = run.oracle, run.space
    alpha = random_alpha(run)
    batch = run.source.batch(0)
    _, grad = oracle.gradient(space.theta(alpha), batch)
    numeric = central_difference(lambda a: oracle.gradient(space.theta(a), batch)[0], alpha)
    assert_gradient_matches(space.alpha_gradient(grad), numeric, rtol=1e-7)


@pytest.mark.parametrize("hvp", ["exact", "fd"])
def test_hvp_matches_difference_of_gradients(hvp):
    """H v (exact, or by (2)) against a central difference of gradients with a larger step."""
    run = tiny_run(hvp=hvp)
    oracle = run.oracle
    theta = run.space.theta(random_alpha(run))
    batch = run.source.batch(0)
    v = np.random.default_rng(2).standard_normal(theta.size)
    h = 1e-4
    reference = (oracle.gradient(theta + h * v, batch)[1]
                 - oracle.gradient(theta - h * v, batch)[1]) / (2 * h)
    hv = oracle.hvp(theta, v, batch)
    assert np.linalg.norm(hv - reference) < 1e-6 * np.linalg.norm(reference)
    assert oracle.exact_passes == (1 if hvp == "exact" else 0)


@pytest.mark.parametrize("hvp", ["exact", "fd"])
def test_third_order_product(hvp):
    """grad (a' H b) is symmetric in a, b and equals the derivative of H b along a."""
    run = tiny_run(hvp=hvp)
    oracle = run.oracle
    theta = run.space.theta(random_alpha(run))
    batch = run.source.batch(0)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(theta.size), rng.standard_normal(theta.size)
    h = 1e-3
    reference = (oracle.hvp(theta + h * a, b, batch) - oracle.hvp(theta - h * a, b, batch)) / (2 * h)
    ab, ba = oracle.third(theta, a, b, batch), oracle.third(theta, b, a, batch)
    assert np.linalg.norm(ab - reference) < 1e-4 * np.linalg.norm(reference)
    assert np.linalg.norm(ab - ba) < 1e-4 * np.linalg.norm(reference)


def test_rescale_adam_first_step_clip_bounds_and_two_moments():
    adam = RescaleAdam(np.array([0.0, 0.5, 0.0]), lr=0.1, clip=1.0)
    alpha = adam.step(np.ones(3), np.array([5.0, 0.3, -2.0]), constraint=False)
    # Adam's first step has length lr whatever the gradient's size: m / sqrt(v) = sign(g)
    assert np.allclose(alpha, [0.9, 0.9, 1.1], atol=1e-6)
    alpha = adam.step(np.full(3, 0.55), np.array([1.0, 1.0, 1.0]), constraint=False)
    assert alpha[1] == 0.5  # clamped at its lower bound
    # a constraint step uses its own first moment (bias-corrected from its first step) but the
    # shared second moment: a first constraint step of the same gradient as before is shorter
    fresh = RescaleAdam(np.zeros(1), lr=0.1, clip=0.0)
    fresh.step(np.ones(1), np.array([-10.0]), constraint=False)
    moved = fresh.step(np.ones(1), np.array([1.0]), constraint=True)
    v = 0.999 * 0.001 * 100 + 0.001 * 1.0
    expected = 1.0 - 0.1 * 1.0 / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    assert moved[0] == pytest.approx(expected)


def test_sign_momentum_moves_norms():
    opt = SignMomentum(np.array([2.0, 4.0]), np.array([0.01, 0.01]), lr=0.1, momentum=0.9)
    alpha = opt.step(np.ones(2), np.array([3.0, -1e-9]))
    assert np.allclose(alpha, [1 - 0.1 / 2, 1 + 0.1 / 4])  # norm moves by -lr sign(g)
    alpha = opt.step(alpha, np.array([3.0, -1e-9]))
    assert np.allclose(alpha, [1 - 0.1 / 2 - 0.19 / 2, 1 + 0.1 / 4 + 0.19 / 4])


def _quadratic(target):
    def step(t, alpha):  # a quadratic in alpha: the loop must walk to its minimum
        return Step(float(np.sum((alpha - target) ** 2)), 2 * (alpha - target), 1.0,
                    constraint=t == 0, metrics={"extra": float(t)})
    return step


def test_optimise_records_trajectory_and_finish_builds_plan():
    run = tiny_run()
    space = run.space
    target = np.linspace(0.5, 2.0, space.size)
    seen = []
    outcome = optimise(space, _quadratic(target), RescaleAdam(space.lower, lr=0.05, clip=0), 200,
                       description="test", assess=None, observe=lambda t, a: seen.append(t))
    trajectory = outcome.trajectory
    assert seen == list(range(200)) and not outcome.checks
    assert len(trajectory) == 200 and trajectory[0]["constraint"] and trajectory[1]["extra"] == 1
    assert trajectory[-1]["objective"] < 1e-2 * trajectory[0]["objective"]
    plan = finish("test", space, outcome, objective="quadratic", details={"k": 1}, started=0.0)
    assert set(plan.changes) == set(space.names)
    assert all(plan.changes[n].scale == pytest.approx(t, abs=0.05) for n, t in
               zip(space.names, target))
    report = plan.report
    assert report["k"] == 1 and len(report["trajectory"]) == 200
    assert report["moved_most"][0]["tensor"] == space.names[0]  # 0.5: |log| largest
    assert report["constraint_steps"] == 1 and report["before"] is None
    assert report["kept_iteration"] == 200


def test_checkpoints_evenly_spaced_and_last():
    assert checkpoint_iterations(100, 4) == {20, 40, 60, 80, 100}
    assert checkpoint_iterations(3, 5) == {1, 2, 3}
    assert checkpoint_iterations(10, 0) == {10} and checkpoint_iterations(0, 5) == set()


def test_held_out_checks_keep_the_best_scales_and_warn(caplog):
    """The loop walks to a target; the held-out measure prefers scales near another point, so
    the kept scales are the checked ones closest to it, with a warning naming the iteration."""
    run = tiny_run()
    space = run.space
    target, preferred = np.full(space.size, 2.0), np.full(space.size, 1.5)

    def assess(alpha):
        distance = float(np.sum((alpha - preferred) ** 2))
        return Assessment({"distance": distance}, (0, distance))

    with caplog.at_level("WARNING", logger="onnxinit"):
        outcome = optimise(space, _quadratic(target), RescaleAdam(space.lower, lr=0.05, clip=0),
                           100, description="test", assess=assess, checkpoints=9)
        plan = finish("test", space, outcome, objective="q", details={}, started=0.0)
    checks = plan.report["held_out_checks"]
    assert [c["iteration"] for c in checks] == list(range(0, 101, 10))
    best = min(checks, key=lambda c: c["distance"])
    assert plan.report["kept_iteration"] == best["iteration"] not in (0, 100)
    assert plan.report["after"]["distance"] == best["distance"]
    kept = dict(zip(space.names, outcome.checks[best["iteration"] // 10][1]))
    assert all(plan.changes[n].scale == kept[n] for n in space.names)
    assert f"kept the scales of iteration {best['iteration']}" in caplog.text


def test_held_out_checks_keep_the_input_when_nothing_helped(caplog):
    run = tiny_run()
    space = run.space

    def assess(alpha):
        distance = float(np.sum((alpha - 1.0) ** 2))
        return Assessment({"distance": distance}, (0, distance))

    with caplog.at_level("WARNING", logger="onnxinit"):
        outcome = optimise(space, _quadratic(np.full(space.size, 3.0)),
                           RescaleAdam(space.lower, lr=0.05, clip=0), 20, description="test",
                           assess=assess)
        plan = finish("test", space, outcome, objective="q", details={}, started=0.0)
    assert plan.changes == {} and plan.report["kept_iteration"] == 0
    assert "kept the model's scales unchanged" in caplog.text


def test_optimise_refuses_non_finite_objective():
    run = tiny_run()
    with pytest.raises(UnsupportedModelError, match="not finite at iteration 0"):
        optimise(run.space, lambda t, a: Step(float("nan"), np.zeros(len(a)), 1.0),
                 RescaleAdam(run.space.lower, lr=0.1), 3, description="test", assess=None)


def test_optimise_overflow_keeps_the_last_finite_scales(caplog):
    """An optimiser that overshoots into overflow at iteration 3 ends the run on the alphas of
    iteration 2, with a warning and a 'stopped' entry, instead of losing the run."""
    run = tiny_run()
    seen = []

    def step(t, alpha):
        seen.append(alpha.copy())
        value = float("inf") if t == 3 else float(np.sum(alpha ** 2))
        return Step(value, 2 * alpha, 1.0)

    with caplog.at_level("WARNING", logger="onnxinit"):
        outcome = optimise(run.space, step, RescaleAdam(run.space.lower, lr=0.1), 10,
                           description="test", assess=None)
    alpha, trajectory = outcome.alpha, outcome.trajectory
    assert len(seen) == 4 and np.array_equal(alpha, seen[2]) and not np.array_equal(alpha,
                                                                                    seen[3])
    assert [r["iteration"] for r in trajectory] == [0, 1, 2, 3]
    assert "stopped" in trajectory[-1] and "not finite at iteration 3" in caplog.text


def test_progress_quiet_in_ci_and_off_a_terminal(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert not progress.enabled()
    monkeypatch.setenv("CI", "")
    # pytest captures stderr: not a terminal
    assert not progress.enabled()
    with progress.bar(3, "x") as b:
        b.update()
        assert b.disable


def test_auto_falls_back_to_differences_where_autodiff_cannot(monkeypatch):
    """small_cnn's MaxPool gradient ends in a DepthToSpace (its windows tile the input);
    without a backward rule for it (as for any op the second-order graph needs and the autodiff
    lacks) 'auto' uses differences of gradients and says why; 'exact' refuses."""
    from onnxinit.autodiff.backward.registry import RULES

    graph = load(SAMPLES / "small_cnn.onnx", batch_size=2)
    run = prepare(graph, GradInitOptions(), min_scale=0.01, device="cpu", hvp="exact")
    theta = run.space.theta(np.ones(run.space.size))
    assert np.all(np.isfinite(run.oracle.hvp(theta, np.ones_like(theta), run.source.batch(0))))
    assert run.oracle.hvp_note.startswith("exact")  # MaxPool nets have exact products now
    monkeypatch.delitem(RULES, "DepthToSpace")
    run = prepare(graph, GradInitOptions(), min_scale=0.01, device="cpu", hvp="auto")
    theta = run.space.theta(np.ones(run.space.size))
    v = np.ones_like(theta)
    assert np.all(np.isfinite(run.oracle.hvp(theta, v, run.source.batch(0))))
    assert run.oracle.hvp_note.startswith("finite differences") and "DepthToSpace" in \
        run.oracle.hvp_note and run.oracle.exact_passes == 0
    strict = prepare(graph, GradInitOptions(), min_scale=0.01, device="cpu", hvp="exact")
    with pytest.raises(OnnxInitError, match="DepthToSpace"):
        strict.oracle.hvp(theta, v, strict.source.batch(0))


@pytest.mark.parametrize("method,options", [
    ("metainit", {"metainit_steps": 2}), ("nio", {"nio_iterations": 2}),
])
def test_same_seed_same_bytes(tmp_path, method, options):
    from onnxinit.rescale import rescale

    model = SAMPLES / "tanh_mlp50.onnx"
    files = [rescale(model, method, output=tmp_path / f"{seed}{tag}.onnx", seed=seed,
                     batch_size=8, **options).output.read_bytes()
             for seed, tag in ((0, "a"), (0, "b"), (1, "c"))]
    assert files[0] == files[1] and files[0] != files[2]


def _conv_bn_tanh_model():
    """Conv -> BatchNormalization (training) -> Tanh -> Conv -> Tanh -> pool -> Gemm: smooth,
    so exact and finite-difference Hessian-vector products must agree."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape, s=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"],
                              ["n1", "rm", "rv"], training_mode=1),
             helper.make_node("Tanh", ["n1"], ["t1"]),
             helper.make_node("Conv", ["t1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c2"], ["t2"]),
             helper.make_node("GlobalAveragePool", ["t2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    inits = [init("w1", 4, 3, 3, 3), init("w2", 4, 4, 3, 3), init("wf", 5, 4),
             numpy_helper.from_array((1 + 0.2 * rng.standard_normal(4)).astype(np.float32), "g"),
             init("b", 4, s=0.1), numpy_helper.from_array(np.zeros(4, np.float32), "m"),
             numpy_helper.from_array(np.ones(4, np.float32), "v")]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", 1, ["batch", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", 1, ["batch", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_exact_and_difference_products_agree_through_batch_norm():
    """Reverse over reverse differentiates the gradient graph, whose batch-norm backward must
    itself be differentiable with training semantics (an inference-mode BatchNormalization in it
    would be lowered to batch statistics again and silently give a wrong product)."""
    graph = load(_conv_bn_tanh_model(), batch_size=8)
    products = {}
    for mode in ("exact", "fd"):
        run = prepare(graph, GradInitOptions(precision="float64"), min_scale=0.01, device="cpu",
                      hvp=mode)
        theta = run.space.theta(np.ones(run.space.size))
        v = np.random.default_rng(1).standard_normal(theta.shape)
        products[mode] = run.oracle.hvp(theta, v, run.source.batch(0))
        assert run.oracle.hvp_note.startswith("exact" if mode == "exact" else "finite")
    error = np.linalg.norm(products["exact"] - products["fd"]) / np.linalg.norm(products["fd"])
    assert error < 1e-6, error


@pytest.mark.parametrize("method,steps", [("gradinit", "gradinit_iterations"),
                                          ("nio", "nio_iterations"),
                                          ("metainit", "metainit_steps")])
def test_a_composition_equals_the_methods_run_one_after_the_other(tmp_path, method, steps):
    """``kaiming,METHOD`` must optimise from kaiming's weights: its file equals METHOD run on
    the file kaiming wrote (same seed, same synthetic batches). The gradient methods once built
    their oracle from the model as given, so the composition optimised the original weights
    and multiplied the scales onto kaiming's."""
    options = {"batch_size": 8, "seed": 3, steps: 3, "held_out_batches": 0}
    composed = tmp_path / "composed.onnx"
    rescale(MLP50, f"kaiming,{method}", output=composed, **options)
    first = tmp_path / "kaiming.onnx"
    rescale(MLP50, "kaiming", output=first, seed=3)
    sequential = tmp_path / "sequential.onnx"
    rescale(first, method, output=sequential, **options)

    def weights(path):
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}

    a, b = weights(composed), weights(sequential)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-7, err_msg=name)
