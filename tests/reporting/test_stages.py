"""Stages: consecutive tensors cut after block or layer ends, merged to a readable count."""

from __future__ import annotations

from onnxinit.reporting.stages import merged, pieces, shared_prefix, stages


def test_pieces_cut_after_each_end_and_cover_everything():
    assert pieces(10, [2, 5, 9, 42]) == [(0, 2), (3, 5), (6, 9)]
    assert pieces(4, []) == [(0, 3)]


def test_merged_keeps_at_most_max_rows_consecutive_rows():
    parts = pieces(1000, range(1, 1000, 2))  # 500 pieces of two tensors
    rows = merged(parts, 64)
    assert len(rows) <= 64 and rows[0][0] == 0 and rows[-1][1] == 999
    assert all(b + 1 == c for (_, b), (c, _) in zip(rows, rows[1:]))
    assert merged(parts[:3], 64) == parts[:3]


def test_shared_prefix_is_made_of_whole_name_components():
    assert shared_prefix(["/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/Add"]) == \
        "/layer1/layer1.0"
    # "." separates components too: blocks 10 and 11 of layer1 share "/layer1/layer1"
    assert shared_prefix(["/layer1/layer1.10/Add", "/layer1/layer1.11/Add"]) == "/layer1/layer1"
    assert shared_prefix(["/conv1/Conv", "/Relu"]) == ""
    assert shared_prefix(["fc1", "fc12"]) == ""
    assert shared_prefix(["", "/a/b"]) == "/a/b"


def test_a_single_block_is_labelled_by_the_scope_it_ends_in():
    nodes = ["", "/embed/Gather", "/layers.0/attn/MatMul", "/layers.0/Add",
             "/layers.0/norm/LayerNormalization", "/layers.1/attn/MatMul", "/layers.1/Add"]
    rows = stages(nodes, [3, 6])
    assert [(s.first, s.last, s.label) for s in rows] == [(0, 3, "/layers.0"),
                                                          (4, 6, "/layers.1")]
    merged_rows = stages(nodes, [1, 2, 3, 4, 5, 6], max_rows=3)
    assert [s.label for s in merged_rows] == ["", "/layers.0", "/layers.1"]
