"""LSUV: measured unit variance on a fresh batch, the per-try formula, real data, determinism,
CLI options."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from onnxinit.data import data_source
from onnxinit.graph import load
from onnxinit.measure import measure
from onnxinit.methods import METHODS, make_options
from onnxinit.methods.lsuv import LSUVOptions, layer_output, plan
from onnxinit.rescale import rescale
from onnxinit.writeback import apply_plan

from ..samples import sample


def _fresh_variances(graph, batch_size=32, seed=123) -> list[float]:
    """Measured variance of every parametric layer's output on a batch LSUV never saw."""
    feeds = data_source(graph, batch_size=batch_size, seed=seed).batch(5).feeds
    outputs = [layer_output(graph, n) for n in graph.parametric_nodes]
    measured = measure(graph, feeds, outputs, device="cpu")
    return [measured[o][1] for o in outputs]


def test_resnet20_nobn_unit_variance_on_a_fresh_batch():
    graph = load(sample("resnet20_nobn"), batch_size=32)
    before = _fresh_variances(graph)
    assert max(before) > 2  # the default init explodes with depth: the check below can fail
    result = plan(graph, LSUVOptions(seed=0))
    after = _fresh_variances(load(apply_plan(graph.source, result), batch_size=32))
    assert all(0.9 <= v <= 1.1 for v in after), after
    layers = result.report["layers"]
    assert len(layers) == 22 and not result.report["not_converged"]  # 21 Conv + Gemm
    for entry in layers:
        assert abs(entry["final_var"] - 1) < 0.1
        assert entry["iterations"] == len(entry["trajectory"]) - 1 <= 10
        # convs without bias: one try divides the variance by itself exactly
        if entry["op"] == "Conv" and entry["iterations"] >= 1:
            assert entry["trajectory"][1] == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("name", ["tanh_mlp50", "small_cnn"])
def test_other_samples(name):
    graph = load(sample(name), batch_size=64)
    before = _fresh_variances(graph, 64)
    assert min(before) < 0.5
    result = plan(graph, LSUVOptions(seed=1))
    assert not result.report["not_converged"]
    after = _fresh_variances(load(apply_plan(graph.source, result), batch_size=64), 64)
    assert all(0.8 <= v <= 1.2 for v in after), after
    # orthogonal pre-init: weights are replaced, biases zeroed
    assert result.replaced() and all(c.array is not None for c in result.changes.values())


def test_keep_pre_init_only_scales_and_follows_the_formula():
    graph = load(sample("small_cnn"), batch_size=16)
    result = plan(graph, LSUVOptions(lsuv_init="keep", lsuv_tolerance=0.01, seed=2))
    assert not result.replaced()
    for entry in result.report["layers"]:
        # total scale = product over tries of sqrt(1 / v_t)
        expected = np.prod([np.sqrt(1 / v) for v in entry["trajectory"][:-1]])
        assert entry["scale"] == pytest.approx(expected, rel=1e-6)
        assert result.changes[entry["weight"]].scale == pytest.approx(entry["scale"])
        assert abs(entry["final_var"] - 1) < 0.01


def test_max_iterations_zero_measures_only():
    graph = load(sample("small_cnn"), batch_size=16)
    result = plan(graph, LSUVOptions(lsuv_init="keep", lsuv_max_iterations=0))
    assert not result.changes
    assert len(result.report["not_converged"]) == 4  # default init: all far from 1


def test_real_data_and_determinism(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "digits.npz"
    np.savez(data, x=rng.uniform(0, 1, (100, 64)).astype(np.float32),
             labels=rng.integers(0, 64, 100))
    model = sample("tanh_mlp50")
    paths = [tmp_path / f"{k}.onnx" for k in range(3)]
    for path, seed in zip(paths, (3, 3, 4)):
        result = rescale(model, "lsuv", output=path, seed=seed, data=str(data), batch_size=32)
        assert result.method_reports["lsuv"]["data"] == str(data)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_registered_with_data_options():
    plan_fn, options_class = METHODS["lsuv"]
    options = make_options("lsuv", {"data": "x.npz", "loss": "mse", "lsuv_tolerance": 0.05,
                                     "seed": 7, "target_var": 3.0})
    assert plan_fn is plan and isinstance(options, options_class)
    assert (options.data, options.lsuv_tolerance, options.seed) == ("x.npz", 0.05, 7)
    assert not hasattr(options, "loss")  # forward passes only: no loss, no labels needed


def test_cli(tmp_path):
    out = tmp_path / "out.onnx"
    args = [sys.executable, "-c", "from onnxinit.cli import main; main()", "rescale", str(sample("small_cnn")),
            "--method", "lsuv", "--lsuv-init", "keep", "--lsuv-max-iterations", "3",
            "--batch-size", "8", "-o", str(out), "--report", str(tmp_path / "r.json")]
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.exists() and "real data" in done.stderr
    bad = subprocess.run(args + ["--data", str(tmp_path / "missing.npz")], check=False,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "missing.npz: no such file" in bad.stderr
