"""A position table added to the tokens starts the token field of its per-position deviations
(rules/position_table_field.py): ``Sigma = v I + G``, ``G`` the centred Gram of the table's rows.

The arithmetic rule keeps one mean per feature for ``Gather(E, ids) + Gather(P, positions)``
and pools the rows' deviations from it into the variance, as independent tokens. They are the
same in every sample and sum to zero over the positions, so a causal attention's prefix
averages cancel part of them (the mean passed whole is only their average): ``P V``
over-predicted 1.04-1.08x without the field (GPT-2's layer 0 at torch seed 1: 1.107x).
Against onnxruntime on uniform token ids, the positions from the ids' Shape and Range (folded)
or the table an initializer ``[1, S, D]``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.propagate import propagate
from tests.models import causal_attention
from tests.oracle import measured_over_token_ids

B, S, D, V = 4, 128, 576, 4096  # S D over the grid cap: the table folded per feature


def _table(kind: str, rng) -> np.ndarray:
    """Rows of about unit variance: independent rows, or a random walk over the positions."""
    if kind == "independent":
        return rng.standard_normal((S, D))
    walk = np.cumsum(rng.standard_normal((S, D)), axis=0)
    return walk / walk.std()


def _model(kind: str, computed: bool, logit_scale: float) -> onnx.ModelProto:
    """x = E[ids] + P[positions] -> one causal attention head (``o = softmax(q k^T + mask) x
    Wv``; logits scaled by ``logit_scale``)."""
    rng = np.random.default_rng(0)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    table = _table(kind, rng)
    inits = [
        f32("emb", rng.standard_normal((V, D))),
        f32("wq0", rng.standard_normal((D, D)) * logit_scale / D),  # logits of std logit_scale
        f32("wk0", rng.standard_normal((D, D)) / np.sqrt(D)),
        f32("wv", np.linalg.qr(rng.standard_normal((D, D)))[0]),
        f32("mask", np.where(np.tril(np.ones((S, S), dtype=bool)), 0.0, -np.inf)),
    ]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["tok"])]
    if computed:  # GPT-2's export: positions = Range(0, Shape(ids)[1]) unsqueezed
        inits += [f32("wpe", table), i64("one", 1), i64("zero", 0), i64("axes0", [0])]
        nodes += [
            helper.make_node("Shape", ["ids"], ["shape"]),
            helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
            helper.make_node("Range", ["zero", "length", "one"], ["range"]),
            helper.make_node("Unsqueeze", ["range", "axes0"], ["positions"]),
            helper.make_node("Gather", ["wpe", "positions"], ["pos"]),
        ]
    else:  # ViT's parameter [1, S, D]
        inits.append(f32("pos", table[None]))
    inits += [f32("gamma", np.ones(D)), f32("beta", np.zeros(D))]
    nodes += [helper.make_node("Add", ["tok", "pos"], ["e"]),
              helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["x"], axis=-1)]
    nodes += causal_attention()
    graph = helper.make_graph(
        nodes, "position_table",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [B, S])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("e", "x", "v", "o")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize("computed,logit_scale", [(True, 0.3), (False, 0.3), (True, 1.0)])
def test_attention_over_a_position_table(computed, logit_scale):
    """Rows drawn independently (a table at init): ``P V`` 1.08x (logits of std 0.3) and 1.04x
    (std 1) before, the table's deviations averaged as independent tokens beside the mean
    passed whole."""
    model = _model("independent", computed, logit_scale)
    result = propagate(load(model))
    names = ["e", "x", "v", "o"]
    measured = measured_over_token_ids(model, names, V, (B, S), batches=8)
    ratios = {n: result.moments[n].total()[1] / measured[n] for n in names}
    assert all(abs(r - 1) < 0.03 for r in ratios.values()), ratios
    assert result.moments["e"].tokens is not None


def test_a_smooth_table_starts_no_field():
    """A random walk over the positions: the field about one mean per feature would not carry
    the mean the prefix averages move (module docstring), so none is attached."""
    result = propagate(load(_model("walk", True, 0.3)))
    assert result.moments["e"].tokens is None
