"""Many analyses in one process (an architecture search's loop): each gives the same numbers
as the first, and a dropped result frees its model at once, without the cyclic collector."""

from __future__ import annotations

import gc
import weakref

import pytest

from onnxinit.analysis import analyze
from onnxinit.graph import load

from .samples import sample


@pytest.mark.parametrize("name", ["resnet20_nobn", "transformer_postln"])
def test_repeated_analyses_give_identical_outputs(name):
    first = analyze(sample(name)).to_dict()
    for _ in range(2):
        assert analyze(sample(name)).to_dict() == first


@pytest.mark.parametrize("name", ["resnet20_nobn", "transformer_postln"])
def test_a_dropped_analysis_frees_its_graph_without_the_cycle_collector(name):
    gc.collect()
    gc.disable()
    try:
        result = analyze(sample(name))
        graph = weakref.ref(result.graph)
        assert result.graph.layers  # the parameter table is built and kept by the graph
        del result
        assert graph() is None, "the model is held by a reference cycle"
    finally:
        gc.enable()


def test_the_parameter_table_reads_its_graph_while_the_graph_lives():
    graph = load(sample("resnet20_nobn"))
    table = graph.table
    assert table.graph is graph
    layer = table.layers[0]
    assert table.fan_in_out(layer.node) == graph.fan_in_out(layer.node)
