"""GradInit's held-out checks (item 5 of the methods issue: no one ends with a worse network
without being told), checked in PyTorch: the objective of every checked point is recomputed
from the ONNX weights times its scales with the torch code of tests/references/objectives.py
(no onnxinit method code), on the held-out batch pairs the report names. The kept scales must
be the best of the checked points by that recomputation, never worse than the model's own
scales nor than the last iteration's (what the paper would return), and a warning must say so
whenever they are not the last iteration's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import numpy_helper

from onnxinit.graph import load
from onnxinit.methods import METHODS, make_options
from onnxinit.methods._data import batches
from onnxinit.methods.gradinit import batch_pair
from onnxinit.rescale import rescale

pytest.importorskip("torch")

from tests.references.fresh import deep_tanh_mlp  # noqa: E402
from tests.references.objectives import gradinit_objective  # noqa: E402
from tests.references.twins import tanh_mlp  # noqa: E402

ITERATIONS = 60


def scaled_twin(twin, names, alpha):
    """The twin whose initializers ``names`` are multiplied by ``alpha`` (numpy, in place of
    onnxinit's plan and write-back)."""
    model = type(twin.model)()
    model.CopyFrom(twin.model)
    factor = dict(zip(names, alpha))
    for init in model.graph.initializer:
        if init.name in factor:
            array = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(
                (array.astype(np.float64) * factor[init.name]).astype(array.dtype), init.name))
    return dataclasses.replace(twin, model=model)


def rank(measured: dict, gamma: float) -> tuple:
    """GradInit's order: within the bound before outside it, then by objective (inside) or by
    the norm (outside)."""
    inside = measured["grad_norm"] <= gamma
    return (0, measured["objective"]) if inside else (1, measured["grad_norm"])


def held_out_pairs(graph, values, iterations):
    source = batches(graph, values)
    return [batch_pair(source, iterations + k) for k in range(values.held_out_batches)]


def test_kept_scales_are_the_best_checked_point_by_an_independent_recomputation(caplog):
    """tanh MLP, random labels, defaults but 60 iterations, float64: the report's held-out
    values equal torch's; torch ranks the kept iteration (40, measured) first among all seven
    checked points, ahead of the last (60) and of the input (0)."""
    twin = tanh_mlp()
    graph = load(twin.model, batch_size=twin.batch_size)
    values = make_options("gradinit", {"seed": 0, "gradinit_iterations": ITERATIONS,
                                       "precision": "float64"})
    history = {}
    with caplog.at_level("WARNING", logger="onnxinit"):
        plan = METHODS["gradinit"][0](graph, values,
                                      observe=lambda t, a: history.__setitem__(t + 1, np.array(a)))
    report = plan.report
    names = list(report["scales"])
    history[0] = np.ones(len(names))
    pairs = held_out_pairs(graph, values, ITERATIONS)
    assert report["held_out_batches"] == [2 * (ITERATIONS + k) + i
                                          for k in range(len(pairs)) for i in (0, 1)]
    kw = dict(eta=values.gradinit_eta, gamma=values.gradinit_gamma, alg=values.gradinit_alg)
    torch_at = {c["iteration"]: gradinit_objective(scaled_twin(twin, names,
                                                               history[c["iteration"]]),
                                                   pairs, **kw)
                for c in report["held_out_checks"]}
    for check in report["held_out_checks"]:
        ours = torch_at[check["iteration"]]
        assert check["objective"] == pytest.approx(ours["objective"], rel=1e-9)
        assert check["grad_norm"] == pytest.approx(ours["grad_norm"], rel=1e-6)
    gamma = values.gradinit_gamma
    best = min(torch_at, key=lambda i: rank(torch_at[i], gamma))
    kept = report["kept_iteration"]
    assert kept == best
    assert kept != ITERATIONS and rank(torch_at[kept], gamma) < rank(torch_at[ITERATIONS], gamma)
    written = gradinit_objective(scaled_twin(
        twin, names, [plan.changes[n].scale if n in plan.changes else 1.0 for n in names]),
        pairs, **kw)
    assert written["objective"] == pytest.approx(torch_at[kept]["objective"], rel=1e-9)
    assert f"kept the scales of iteration {kept}" in caplog.text


@pytest.mark.slow
def test_kaiming_gradinit_is_not_worse_than_its_last_iteration_nor_kaiming(caplog):
    """``kaiming,gradinit`` on a 30-layer tanh MLP, 60 GradInit iterations: on the held-out
    pairs, recomputed in torch, the written network is no worse than Kaiming's alone and
    better than the network the paper's loop returns (its last iteration: the same run with
    ``held_out_batches=0``), and a warning names the kept iteration."""
    twin = deep_tanh_mlp()
    common = dict(write=False, batch_size=twin.batch_size, seed=0)
    kaiming = rescale(twin.model, "kaiming", **common).model
    with caplog.at_level("WARNING", logger="onnxinit"):
        checked = rescale(twin.model, "kaiming,gradinit", gradinit_iterations=ITERATIONS,
                          **common).model
    last = rescale(twin.model, "kaiming,gradinit", gradinit_iterations=ITERATIONS,
                   held_out_batches=0, **common).model
    values = make_options("gradinit", {"seed": 0, "gradinit_iterations": ITERATIONS})
    pairs = held_out_pairs(load(kaiming, batch_size=twin.batch_size), values, ITERATIONS)
    measured = {name: rank(gradinit_objective(dataclasses.replace(twin, model=m), pairs),
                           values.gradinit_gamma)
                for name, m in (("kaiming", kaiming), ("checked", checked), ("last", last))}
    assert measured["checked"] <= measured["kaiming"]
    assert measured["checked"] < measured["last"], measured
    assert "gradinit: the objective measured on held-out batches was better at iteration" \
        in caplog.text
