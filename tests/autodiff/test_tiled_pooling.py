"""MaxPool whose windows tile the input (kernel = stride, no pads): the backward rule's
one-hot mask of each window's first maximum (SpaceToDepth, ArgMax, Mul, DepthToSpace)
against torch autograd (float64, first and second order, ties included) and central
differences, and the layout ops it is built from, SpaceToDepth and DepthToSpace (DCR and CRD),
against torch autograd."""

import numpy as np
import pytest

from onnxinit.autodiff import GradientProgram, gradients
from onnxinit.autodiff.higher_order import HessianVectorProgram

from .gradcheck import check_gradients, make_model, node, randn
from .torch_export import assert_gradients_close, export_training, torch_gradients

torch = pytest.importorskip("torch")
nn = torch.nn


class PoolNet(nn.Module):
    """Conv, ReLU (whole windows of zeros: ties), a tiling max pool, a linear head."""

    def __init__(self, block=2, size=8):
        super().__init__()
        self.block = block
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * (size // block) ** 2, 5)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.conv(x)), self.block)
        return self.head(torch.flatten(h, 1))


def _pool_model(block, size, seed=0):
    torch.manual_seed(seed)
    module = PoolNet(block, size).double()
    with torch.no_grad():
        module.conv.bias -= 0.5  # many negative pre-activations: windows of zeros
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    return module, x, export_training(module, (x,), ["x"], opset=17)


@pytest.mark.parametrize("block,size", [(2, 8), (3, 9), (4, 8)])
def test_tiled_max_pool_matches_torch(block, size):
    module, x, model = _pool_model(block, size)
    labels = np.array([1, 4, 0])
    loss, ours = gradients(model, {"x": x.numpy()}, labels=labels, device="cpu",
                           dtype="float64")
    expected_loss, expected = torch_gradients(module, (x,), labels)
    assert loss == pytest.approx(expected_loss, rel=1e-10)
    assert_gradients_close(ours, expected, rtol=1e-10)


def test_tiled_max_pool_routes_ties_to_the_first_maximum():
    """A window of equal values sends its gradient to its first element in raster order, as
    torch (and onnxruntime's Indices) do."""
    x = np.zeros((1, 2, 4, 4))
    x[0, 1, :2, :2] = [[1.0, 3.0], [3.0, 2.0]]  # tie between (0, 1) and (1, 0)
    nodes = [node("MaxPool", ["x"], "p", kernel_shape=[2, 2], strides=[2, 2]),
             node("Mul", ["p", "w"])]
    model = make_model(nodes, {"x": x, "w": randn(1, 2, 2, 2, seed=3).astype(np.float64)}, "y")
    program = GradientProgram(model, {}, loss="mse", dtype="float64", device="cpu")
    targets = np.random.default_rng(0).standard_normal((1, 2, 2, 2))
    _, ours = program.gradients({}, targets)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(program.parameters["w"])
    loss = ((nn.functional.max_pool2d(xt, 2) * wt - torch.tensor(targets)) ** 2).mean()
    loss.backward()
    np.testing.assert_allclose(ours["x"], xt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_tiled_max_pool_hessian_vector_products_match_torch():
    """GradInit and NIO differentiate the gradient again: the mask's path (ArgMax) has zero
    derivative, dY's path goes back through Mul and DepthToSpace."""
    module, x, model = _pool_model(2, 8, seed=1)
    labels = np.array([2, 0, 3])
    program = GradientProgram(model, {"x": x.shape}, dtype="float64", device="cpu")
    rng = np.random.default_rng(1)
    v = {name: rng.standard_normal(value.shape) for name, value in program.parameters.items()}
    ours = program.hvp(None, v, {"x": x.numpy()}, labels)
    params = dict(module.named_parameters())
    loss = nn.functional.cross_entropy(module(x), torch.as_tensor(labels))
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    dot = sum((g * torch.tensor(v[name])).sum() for g, name in zip(grads, params))
    expected = dict(zip(params, torch.autograd.grad(dot, list(params.values()))))
    for name in params:
        reference = expected[name].detach().numpy()
        assert np.linalg.norm(ours[name] - reference) <= 1e-9 * np.linalg.norm(reference), name


def test_tiled_max_pool_uses_no_scatter():
    """The tiling case takes the mask path, not Indices + ScatterElements; an overlapping pool
    still takes the Indices."""
    _, _, model = _pool_model(2, 8)
    program = GradientProgram(model, {"x": (3, 3, 8, 8)}, dtype="float64", device="cpu")
    ops = [n.op_type for n in HessianVectorProgram(program).graph.model.graph.node]
    assert "ScatterElements" not in ops and "DepthToSpace" in ops
    overlapping = [node("MaxPool", ["x"], "y", kernel_shape=[3, 3], strides=[2, 2])]
    grads = check_gradients(overlapping, {"x": randn(1, 2, 7, 7)})
    assert grads["x"].shape == (1, 2, 7, 7)


@pytest.mark.parametrize("attrs,shape", [
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, (2, 3, 4, 6)),
    ({"kernel_shape": [3, 3], "strides": [3, 3], "ceil_mode": 1}, (1, 2, 6, 9)),
    ({"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "VALID"}, (1, 2, 4, 4)),
])
def test_tiled_max_pool_central_differences(attrs, shape):
    check_gradients([node("MaxPool", ["x"], **attrs)], {"x": randn(*shape)})


def _depth_to_space(x, b, mode):
    """torch reference of ONNX DepthToSpace (the formula of the ONNX specification)."""
    n, c, h, w = x.shape
    if mode == "DCR":
        t = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(x, b):
    n, c, h, w = x.shape
    t = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return t.reshape(n, c * b * b, h // b, w // b)


@pytest.mark.parametrize("op,mode", [("SpaceToDepth", None), ("DepthToSpace", "DCR"),
                                     ("DepthToSpace", "CRD")])
def test_space_depth_gradients_match_torch(op, mode):
    """y = tanh(op(x) * w): the gradients of x and w against torch autograd, float64."""
    b = 2
    x_shape = (2, 3, 4, 6) if op == "SpaceToDepth" else (2, 12, 2, 3)
    x = randn(*x_shape, seed=1).astype(np.float64)
    y_shape = ((2, 12, 2, 3) if op == "SpaceToDepth" else (2, 3, 4, 6))
    w = randn(*y_shape[1:], seed=2).astype(np.float64)
    attrs = {"blocksize": b} if mode is None else {"blocksize": b, "mode": mode}
    nodes = [node(op, ["x"], "s", **attrs), node("Mul", ["s", "w"], "m"), node("Tanh", ["m"])]
    model = make_model(nodes, {"x": x, "w": w}, "y")
    program = GradientProgram(model, {}, loss="mse", dtype="float64", device="cpu")
    targets = np.random.default_rng(0).standard_normal(y_shape)
    _, ours = program.gradients({}, targets)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    moved = _space_to_depth(xt, b) if op == "SpaceToDepth" else _depth_to_space(xt, b, mode)
    loss = ((torch.tanh(moved * wt) - torch.tensor(targets)) ** 2).mean()
    loss.backward()
    np.testing.assert_allclose(ours["x"], xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ours["w"], wt.grad.numpy(), rtol=1e-12, atol=1e-15)
    check_gradients(nodes, {"x": x.astype(np.float32), "w": w.astype(np.float32)})
