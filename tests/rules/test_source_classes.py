"""A constant input offset before a zero-padded strided conv gives the position classes a fixed
pattern (Keras' ``Rescaling(1/127.5, offset=-1)`` before MobileNetV3's stem): the chain rules
that integrate over the energy a sample shares must not read that pattern as energy
(rules/source_classes.py), against onnxruntime at batch 8."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.propagate import propagate, rule_context
from onnxinit.rules import sample_energy
from onnxinit.rules.source_classes import WIDTH, merged
from onnxinit.runtime import make_session
from tests.rules.test_energy_loading import _energies, _shared
from tests.rules.test_sample_masks import _floats

BATCH, SIDE = 8, 96


def _hard_swish(x: str, out: str) -> list:
    """``x * Clip(x + 3, 0, 6) / 6`` as tf2onnx writes it."""
    return [helper.make_node("Add", [x, "three"], [f"{out}_a"]),
            helper.make_node("Clip", [f"{out}_a", "zero", "six"], [f"{out}_c"]),
            helper.make_node("Mul", [f"{out}_c", "sixth"], [f"{out}_g"]),
            helper.make_node("Mul", [x, f"{out}_g"], [out])]


def _model(seed: int = 0):
    """Keras' MobileNetV3 stem as tf2onnx exports it (inference BatchNorms folded): x / 127.5
    - 1 -> Conv 3x3 stride 2 (pads 0, 0, 1, 1: "same") -> HardSwish, then two blocks of
    [1x1 Conv -> Relu] (the second block) -> Pad (0, 0, 1, 1) -> depthwise 3x3 stride 2 ->
    Mul by a constant per channel (the folded BatchNorm) -> Relu -> 1x1 Conv;
    glorot-normal weights."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Mul", ["x", "scale"], ["xs"]),
             helper.make_node("Add", ["xs", "offset"], ["xo"])]
    inits = [_floats("scale", 1 / 127.5), _floats("offset", -1.0), _floats("three", 3.0),
             _floats("zero", 0.0), _floats("six", 6.0), _floats("sixth", 1 / 6),
             numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads")]

    def conv(name, x, cin, cout, k, stride=1, pads=(0, 0, 0, 0), group=1):
        std = np.sqrt(2.0 / ((cin // group + cout // group) * k * k))
        inits.append(_floats(f"{name}_w", rng.standard_normal((cout, cin // group, k, k)) * std))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w"], [name], strides=[stride] * 2,
                                      pads=list(pads), group=group))
        return name

    nodes += _hard_swish(conv("stem", "xo", 3, 16, 3, 2, (0, 0, 1, 1)), "a_stem")
    x, c, outputs = "a_stem", 16, ["a_stem"]
    for b, (act, width) in enumerate((("Relu", 16), ("Relu", 64))):
        h = x
        if b:
            nodes.append(helper.make_node("Relu", [conv(f"e{b}", x, c, width, 1)], [f"a_e{b}"]))
            h = f"a_e{b}"
            outputs.append(h)
        nodes.append(helper.make_node("Pad", [h, "pads"], [f"p{b}"]))
        d = conv(f"d{b}", f"p{b}", width, width, 3, 2, group=width)
        inits.append(_floats(f"s{b}", rng.uniform(0.5, 1.5, (width, 1, 1))))
        nodes.append(helper.make_node("Mul", [d, f"s{b}"], [f"m{b}"]))
        if act == "Relu":
            nodes.append(helper.make_node("Relu", [f"m{b}"], [f"a_d{b}"]))
        else:
            nodes += _hard_swish(f"m{b}", f"a_d{b}")
        outputs += [f"p{b}", d, f"a_d{b}"]
        x, c = conv(f"o{b}", f"a_d{b}", width, 24, 1), 24
    outputs.append(x)
    graph = helper.make_graph(
        nodes, "offset_stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8), outputs


def test_a_constant_offset_pattern_is_not_energy():
    # the stem's last row and column sit 20-70 within-class standard deviations from the
    # interior; pooling the classes into one Gaussian per channel read that pattern as the
    # samples' shared energy: eta 0.079 at the second block's expanding Relu and its Pad,
    # 0.037 at its depthwise conv, where onnxruntime measures under 0.0002 over 64 samples
    # (per class: 0.008, 0.008, 0.007; the rest is the convs' seeding)
    model, outputs = _model()
    graph = load(model)
    result = propagate(graph)
    ctx = rule_context(graph, graph.order[-1], result)
    session = make_session(model, device="cpu", optimize=False)
    rng = np.random.default_rng(1)
    runs = [session.run(outputs, {"x": rng.standard_normal((BATCH, 3, SIDE, SIDE))
                                  .astype(np.float32)}) for _ in range(8)]
    for i, name in enumerate(outputs):
        values = np.concatenate([r[i] for r in runs]).astype(np.float64)
        live = values.var(axis=(0, 2, 3)) > 0  # a Relu's dead channels have no energy
        measured = _shared(_energies(values[:, live]))
        predicted = sample_energy.shared_energy(ctx, name)[0]
        assert predicted < 3 * max(measured, 0.0) + 0.02, (name, predicted, measured)
        ratio = result.moments[name].total()[1] / values.var()
        assert abs(ratio - 1) < 0.1, (name, ratio)


def test_classes_bin_by_their_means_per_channel():
    # channel 0: a class 0.2 bin widths from the interior shares its bin, one 3 widths away has
    # its own; channel 1: all three apart. Each bin is the law of total variance of its classes.
    mean = np.array([[0.0, 0.0], [0.2, 1.0], [3.0, -1.0]]) * WIDTH
    var = np.ones((3, 2))
    weights = np.array([0.8, 0.15, 0.05])
    m, v, w, index = merged(mean, var, weights)
    assert w.shape == (3, 2) and np.allclose(w.sum(axis=0), 1.0)
    assert index[0, 0] == index[1, 0] != index[2, 0]
    assert len(set(index[:, 1])) == 3
    row = index[0, 0]
    pooled = 0.15 * 0.2 * WIDTH / 0.95
    assert np.isclose(m[row, 0], pooled)
    spread = (0.8 * pooled**2 + 0.15 * (0.2 * WIDTH - pooled) ** 2) / 0.95
    assert np.isclose(v[row, 0], 1 + spread)
    for k in range(3):  # every class's mean back from its bins
        assert np.isclose(m[index[k, 1], 1], mean[k, 1])
