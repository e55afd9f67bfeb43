"""The PyTorch adapter on small modules (torch only: runs wherever torch is installed)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

from onnxinit.rescale import rescale
from onnxinit.weights import MappingError, export_weights

from .torch_roundtrip import export, ort_outputs, round_trip

torch = pytest.importorskip("torch")
from onnxinit.adapters.torch import load_into


class Mlp(torch.nn.Module):
    """Linear layers on a 3-D input: the exporter writes their weights transposed
    (``onnx::MatMul_N``)."""

    def __init__(self, hidden=16):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, hidden)
        self.fc2 = torch.nn.Linear(hidden, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _conv_bn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3), torch.nn.Flatten(),
    )


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same_state(module, state):
    return all(torch.equal(v, state[k]) for k, v in module.state_dict().items())


def test_mlp_round_trip_maps_transposed_matmul_weights(tmp_path):
    torch.manual_seed(0)
    report = round_trip(Mlp(), (torch.randn(2, 5, 8),), ["x"], tmp_path)
    assert report.missing == []
    assert report.mapped["fc1.bias"] == "fc1.bias"
    transposed = {report.mapped[n] for n in report.transposed}
    assert transposed == {"fc1.weight", "fc2.weight"}
    assert all(n.startswith("onnx::MatMul") for n in report.transposed)


def test_load_from_a_weights_file_without_the_original(tmp_path):
    torch.manual_seed(1)
    module, x = Mlp(), torch.randn(2, 3, 8)
    original = export(module, (x,), tmp_path / "m.onnx", ["x"])
    rescaled = rescale(original, "autoinit", output=tmp_path / "r.onnx").output
    weights = export_weights(rescaled)
    assert weights.name == "r.safetensors"
    copy_ = copy.deepcopy(module)
    report = load_into(copy_, weights)  # scales come from the file's metadata
    assert report.unmapped == [] and report.missing == []
    assert {report.how[n] for n in report.transposed} == {"scaled value (transposed)"}
    reference = copy.deepcopy(module)
    load_into(reference, rescaled, original)
    for (name, a), (_, b) in zip(copy_.named_parameters(), reference.named_parameters()):
        assert torch.equal(a, b), name


def test_a_different_architecture_is_refused_and_left_unchanged(tmp_path):
    torch.manual_seed(2)
    module, x = Mlp(hidden=16), torch.randn(2, 3, 8)
    original = export(module, (x,), tmp_path / "m.onnx", ["x"])
    rescaled = rescale(original, "autoinit", output=tmp_path / "r.onnx").output
    other = Mlp(hidden=12)
    state = _state(other)
    with pytest.raises(MappingError, match="nothing was loaded") as info:
        load_into(other, rescaled, original)
    assert info.value.report.mismatched  # fc1.bias has 16 values, the module's 12
    assert _same_state(other, state)

    unrelated = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    state = _state(unrelated)
    with pytest.raises(MappingError) as info:  # same shapes, other values, other names
        load_into(unrelated, rescaled, original)
    assert set(info.value.report.missing) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert _same_state(unrelated, state)


def test_eval_export_of_conv_bn_is_unfolded_and_training_export_loads(tmp_path):
    torch.manual_seed(3)
    module, x = _conv_bn(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        bn = module[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    folded = export(module, (x,), tmp_path / "eval.onnx", ["x"], training=False)
    inits = [t.name for t in onnx.load(str(folded)).graph.initializer]
    assert "0.weight" not in inits and "1.running_var" not in inits  # BN folded into the Conv
    rescaled = rescale(folded, "autoinit", output=tmp_path / "eval.r.onnx").output
    report = load_into(module, rescaled, folded)
    assert len(report.folded) == 2  # the folded weight and the folded bias
    weight = next(n for n in report.folded if report.folded_into[n][0] == "0.weight")
    assert report.folded_into[weight] == ["0.weight", "1.weight", "1.bias", "1.running_mean",
                                          "1.running_var"]
    assert report.mapped == {"3.weight": "3.weight", "3.bias": "3.bias"}
    assert report.missing == [] and report.unmapped == []
    # the un-folded module computes what onnxruntime computes on the rescaled model
    module.eval()
    with torch.no_grad():
        ours = module(x).numpy()
    np.testing.assert_allclose(ours, ort_outputs(rescaled, {"x": x.numpy()}), rtol=1e-5,
                               atol=1e-5 * np.abs(ours).max())

    for bn_module in module.modules():  # batch statistics must not move the running ones
        if isinstance(bn_module, torch.nn.BatchNorm2d):
            bn_module.momentum = 0.0
    report = round_trip(module, (x,), ["x"], tmp_path, training=True)
    assert report.folded == [] and report.missing == []
    assert report.mapped["1.running_var"] == "1.running_var"  # buffers that are initializers


def test_strict_refuses_missing_parameters(tmp_path):
    torch.manual_seed(4)

    class WithUnused(Mlp):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Linear(3, 3)

    module, x = WithUnused(), torch.randn(2, 3, 8)
    original = export(module, (x,), tmp_path / "m.onnx", ["x"])
    rescaled = rescale(original, "autoinit", output=tmp_path / "r.onnx").output
    state = _state(module)
    with pytest.raises(MappingError, match="strict"):
        load_into(module, rescaled, original, strict=True)
    assert _same_state(module, state)
    report = load_into(module, rescaled, original)
    assert report.missing == ["unused.weight", "unused.bias"]
    assert not _same_state(module, state)


def test_float16_module_round_trip_keeps_dtype_and_exact_values(tmp_path):
    torch.manual_seed(5)
    module, x = Mlp().half(), torch.randn(2, 3, 8).half()
    original = export(module, (x,), tmp_path / "m.onnx", ["x"])
    rescaled = rescale(original, "autoinit", output=tmp_path / "r.onnx").output
    expected = {t.name: onnx.numpy_helper.to_array(t)
                for t in onnx.load(str(rescaled)).graph.initializer}
    assert {v.dtype for v in expected.values()} == {np.dtype(np.float16)}
    report = load_into(module, rescaled, original)
    for name, param in report.mapped.items():
        value = dict(module.named_parameters())[param]
        assert value.dtype == torch.float16
        want = expected[name].T if name in report.transposed else expected[name]
        np.testing.assert_array_equal(value.detach().numpy(), want)


class Recurrent(torch.nn.Module):
    """A 2-layer bidirectional LSTM or GRU (batch-first) and a Linear on the last step."""

    def __init__(self, kind):
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(8, 16, num_layers=2, bidirectional=True,
                                           batch_first=True)
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_recurrent_layers_are_found_in_their_gate_order(tmp_path, kind):
    """The ONNX LSTM/GRU writes each layer's weights as W, R, B with both directions stacked
    and the gates in ONNX's order (LSTM i, o, f, c; GRU z, r, h) where torch keeps i, f, g, o
    and r, z, n per direction: the load was refused ("only 1 of 9 parameters found"). Every
    recurrent parameter is found now (left as initialised: nothing to load)."""
    torch.manual_seed(0)
    report = round_trip(Recurrent(kind), (torch.randn(2, 5, 8),), ["x"], tmp_path)
    assert report.missing == [], report.summary()
    assert sorted(p for ps in report.recurrent.values() for p in ps) == sorted(
        f"rnn.{n}" for n, _ in Recurrent(kind).rnn.named_parameters())
