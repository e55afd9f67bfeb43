"""GradInit: alpha-gradients of its two objectives against central differences (float64), its
direction on the normalization-free ResNet-20, the CLI report, and byte-identical reruns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxinit.cli import main
from onnxinit.graph import load
from onnxinit.methods import METHODS, gradinit
from onnxinit.methods.gradinit import (
    GradInitOptions,
    batch_pair,
    first_step,
    gradient_norm,
    loss_after_step,
    norm_gradient,
)
from onnxinit.rescale import rescale
from tests.methods.scaleopt_fixtures import (
    MLP50,
    RESNET,
    assert_gradient_matches,
    central_difference,
    random_alpha,
    tiny_run,
)
from tests.models import mlp


def test_registered_with_prefixed_options():
    plan, options = METHODS["gradinit"]
    assert plan is gradinit.plan and options is GradInitOptions
    defaults = GradInitOptions()
    assert (defaults.gradinit_lr, defaults.gradinit_iterations, defaults.gradinit_eta,
            defaults.gradinit_gamma, defaults.gradinit_alg, defaults.gradinit_min_scale,
            defaults.gradinit_grad_clip) == (1e-2, 390, 0.1, 1.0, "sgd", 0.01, 1.0)


@pytest.mark.parametrize("alg", ["sgd", "adam"])
def test_loss_after_step_gradient(alg):
    """d/dalpha [L(S~; theta(alpha) - eta d) / eta] with d = A[g] held constant."""
    run = tiny_run()
    oracle, space = run.oracle, run.space
    alpha = random_alpha(run)
    first, second = batch_pair(run.source, 0)
    _, g = oracle.gradient(space.theta(alpha), first)
    step = first_step(g, alg, gamma=1.0)
    _, analytic = loss_after_step(oracle, space, alpha, step, second, eta=0.1)
    numeric = central_difference(
        lambda a: loss_after_step(oracle, space, a, step, second, eta=0.1)[0], alpha)
    assert_gradient_matches(analytic, numeric)


@pytest.mark.parametrize("alg,hvp", [("sgd", "exact"), ("adam", "exact"), ("sgd", "fd")])
def test_constraint_gradient(alg, hvp):
    """d|g(theta(alpha))|_p / dalpha through the Hessian-vector product."""
    run = tiny_run(hvp=hvp)
    oracle, space = run.oracle, run.space
    alpha = random_alpha(run)
    batch = run.source.batch(0)
    _, g = oracle.gradient(space.theta(alpha), batch)
    analytic = norm_gradient(oracle, space, alpha, g, batch, alg)
    numeric = central_difference(
        lambda a: gradient_norm(oracle.gradient(space.theta(a), batch)[1], alg), alpha)
    assert_gradient_matches(analytic, numeric, rtol=1e-5 if hvp == "fd" else 1e-6)


def test_second_batch_shares_half_of_the_first():
    run = tiny_run(batch_size=8)
    first, second = batch_pair(run.source, 3)
    x1, x2 = first.feeds["x"], second.feeds["x"]
    assert np.array_equal(x1[:4], x2[:4]) and not np.array_equal(x1[4:], x2[4:])


def test_resnet20_nobn_lowers_objective_within_gamma():
    """From PyTorch's default init (|g|_2 about 190 on random data) the constraint steps bring
    the gradient norm under gamma, then the loss after one step on held-out batches falls."""
    graph = load(RESNET, batch_size=8)
    options = GradInitOptions(gradinit_iterations=12, gradinit_lr=0.05, seed=0)
    report = gradinit.plan(graph, options).report
    trajectory = report["trajectory"]
    assert trajectory[0]["constraint"] and trajectory[0]["grad_norm"] > 10
    assert not trajectory[-1]["constraint"]
    assert trajectory[-1]["grad_norm"] <= options.gradinit_gamma
    assert report["after"]["grad_norm"] <= options.gradinit_gamma < report["before"]["grad_norm"]
    assert report["after"]["objective"] < 0.5 * report["before"]["objective"]
    assert set(report["scales"]) == {n for n in graph.parameters}
    assert report["moved_most"][0]["scale"] != 1.0


def test_cli_report_has_trajectory(tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    main(["rescale", str(MLP50), "--method", "gradinit", "--gradinit-iterations", "4",
          "--gradinit-lr", "0.05", "--batch-size", "8", "--seed", "3", "-o", str(out),
          "--report", str(report), "--quiet"])
    data = json.loads(report.read_text())
    details = data["method_reports"]["gradinit"]
    assert len(details["trajectory"]) == 4
    assert {"objective", "grad_norm", "constraint"} <= set(details["trajectory"][0])
    assert details["data"] == "synthetic" and details["batch_size"] == 8 and details["seed"] == 3
    assert set(details["scales"]) and out.is_file()
    assert data["changes"] and all(c["rule"] == "gradinit" for c in data["changes"].values())


def test_same_seed_same_bytes(tmp_path):
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"]
    for path, seed in zip(paths, (5, 5, 6)):
        rescale(MLP50, "gradinit", output=path, batch_size=8, seed=seed, gradinit_iterations=3,
                gradinit_lr=0.05)
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b
    assert a != c  # the seed does reach the data


def test_data_file_with_mse_targets(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((40, 5)).astype(np.float32),
             targets=rng.standard_normal((40, 4)).astype(np.float32))
    result = rescale(mlp([5, 7, 4], activation="Tanh"), "gradinit", output=tmp_path / "o.onnx",
                     batch_size=8, data=str(data), loss="mse", gradinit_iterations=3,
                     gradinit_gamma=100.0)
    report = result.method_reports["gradinit"]
    assert report["data"] == "file" and report["loss"] == "mse"
    assert [r["constraint"] for r in report["trajectory"]] == [False] * 3
    assert report["after"]["objective"] != report["before"]["objective"]
