"""``keep_declared`` (entries compared once, only winners copied) against the merge as
specified, written out plainly: for each declared entry in order, skip graph inputs/outputs,
append it where the graph has no entry of its name, replace the entry where it says more
(type < rank < static shape)."""

from __future__ import annotations

import random

import onnx
from onnx import TensorProto, helper

from onnxinit.passes import keep_declared


def _level(vi: onnx.ValueInfoProto) -> int:
    if not vi.type.HasField("tensor_type"):
        return 0
    if not vi.type.tensor_type.HasField("shape"):
        return 1
    dims = vi.type.tensor_type.shape.dim
    return 3 if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims) else 2


def _reference(graph, declared, replace=None):
    declared = [onnx.ValueInfoProto.FromString(vi.SerializeToString()) for vi in declared]
    entries = [onnx.ValueInfoProto.FromString(vi.SerializeToString())
               for vi in (graph.value_info if replace is None else replace)]
    skip = {o.name for o in graph.output} | {i.name for i in graph.input}
    changed = False
    for vi in declared:
        if vi.name in skip:
            continue
        same = [e for e in entries if e.name == vi.name]
        if not same:
            entries.append(vi)
            changed = True
        elif _level(vi) > _level(same[-1]):  # of repeated names, the last entry
            same[-1].CopyFrom(vi)
            changed = True
    return [e.SerializeToString() for e in entries], changed


def _random_info(rng: random.Random, name: str) -> onnx.ValueInfoProto:
    kind = rng.randrange(4)
    if kind == 0:
        return onnx.ValueInfoProto(name=name)
    if kind == 1:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    dims = [rng.choice([1, 3, "N", None]) if kind == 2 else rng.choice([1, 2, 7])
            for _ in range(rng.randrange(1, 4))]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def test_matches_the_plain_merge():
    rng = random.Random(0)
    for case in range(300):
        names = [f"t{i}" for i in range(6)]
        graph = helper.make_graph(
            [], "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("t1", TensorProto.FLOAT, [1])])
        graph.value_info.extend(_random_info(rng, rng.choice(names))
                                for _ in range(rng.randrange(5)))
        declared = [_random_info(rng, rng.choice(names)) for _ in range(rng.randrange(8))]
        replace = ([_random_info(rng, rng.choice(names)) for _ in range(rng.randrange(5))]
                   if case % 2 else None)
        if case % 3 == 0:  # declared entries that are the graph's own (as _refine_shapes does)
            declared = list(graph.value_info) + declared
        expected, changed = _reference(graph, declared, replace)
        got_changed = keep_declared(graph, declared, replace=replace)
        assert [vi.SerializeToString() for vi in graph.value_info] == expected, case
        assert got_changed == changed, case


def test_declared_merge_matches_keep_declared_round_after_round():
    """DeclaredMerge (what ModelGraph._refine_shapes uses) against keep_declared run on the
    graph each round, as the rounds did before: the same value_info, byte for byte, and
    entries that describe it."""
    from onnxinit.passes import DeclaredMerge, described

    rng = random.Random(1)
    for case in range(200):
        names = [f"t{i}" for i in range(6)]

        def graph_with_entries():
            g = helper.make_graph(
                [], "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
                [helper.make_tensor_value_info("t1", TensorProto.FLOAT, [1])])
            g.value_info.extend(_random_info(random.Random(case), rng_names)
                                for rng_names in names[: case % 6])
            return g

        plain, merged = graph_with_entries(), graph_with_entries()
        merge = DeclaredMerge(merged)
        for _ in range(rng.randrange(1, 5)):
            infos = [_random_info(rng, rng.choice(names)) for _ in range(rng.randrange(6))]
            keep_declared(plain, list(plain.value_info), replace=infos)
            merge.replace(infos)
            assert merge.entries == [described(vi) for vi in plain.value_info], case
        merge.write(merged)
        assert ([vi.SerializeToString() for vi in merged.value_info]
                == [vi.SerializeToString() for vi in plain.value_info]), case
