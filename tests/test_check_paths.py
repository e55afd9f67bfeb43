"""``check`` judges the signal path: designs that keep a side path small pass with notes, networks
that do not train fail. PyTorch modules exported in training mode (skipped without torch)."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest

from onnxinit import check
from onnxinit.analysis import analyze
from onnxinit.findings import gradient
from onnxinit.findings.scale import signal_reference
from onnxinit.side_paths import ATTENTION, BRANCH, GATE
from onnxinit.signal_path import signal_variance

from .samples import sample

torch = pytest.importorskip("torch")
nn = torch.nn


def export(module, *shape) -> onnx.ModelProto:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    module.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(*shape),), buffer, dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                          input_names=["x"], output_names=["y"])
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = min(model.ir_version, 10)
    return model


def findings_of(model):
    analysis = analyze(model)
    paths = check.paths_of(analysis)
    return analysis, paths, check.find(analysis, paths=paths)


def levels(findings) -> list[tuple[str, str]]:
    return [(f.rule_id, f.level) for f in findings]


class LayerScaleBlock(nn.Module):
    """ConvNeXt's residual block shape: x + gamma * mlp(x), gamma = 1e-6 per channel."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.gamma = nn.Parameter(torch.full((width,), 1e-6))

    def forward(self, x):
        return x + self.gamma * self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


def test_layerscale_residual_blocks_pass_with_a_branch_note():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), *(LayerScaleBlock(32) for _ in range(6)),
                        nn.Linear(32, 10))
    analysis, paths, findings = findings_of(export(net, 16, 32))
    assert not check.failed(findings), [f.message for f in findings]
    (note,) = findings
    assert note.rule_id == "ONNXINIT007" and paths.side[note.tensor].kind == BRANCH
    # the note gives the first block's branch-to-skip variance ratio; PyTorch measures it
    assert paths.side[note.tensor].join == paths.blocks[0].add
    block = net[1]
    with torch.no_grad():
        x = net[0](torch.randn(8192, 32))
        branch = block.gamma * block.fc2(torch.nn.functional.gelu(block.fc1(block.norm(x))))
    measured = float(branch.var(0).mean() / x.var(0).mean())
    ratio = float(note.message.split("the branch ends at ")[1].split("x")[0])
    assert ratio == pytest.approx(measured, rel=0.1) and ratio < 1e-11
    # the main path is the skip chain: every block's output is on it
    assert len(paths.blocks) == 6 and all(paths.is_main(b.output) for b in paths.blocks)


def test_layerscale_branch_gradients_are_small_by_design_not_vanishing():
    """A branch x + gamma * f(x; W) scales dL/dW by gamma: its layers' update ratios are gamma
    small by design. PyTorch measures the first body layer's ratio at about 1/gamma times a branch
    layer's, which a strict --max-gradient-ratio would call exploding; the judged layers are the
    main path's, where the ratio is ordinary."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), *(LayerScaleBlock(32) for _ in range(3)),
                        nn.Linear(32, 32), *(LayerScaleBlock(32) for _ in range(3)),
                        nn.Linear(32, 10))
    analysis = analyze(export(net, 16, 32), backward=True)
    paths = check.paths_of(analysis)
    layers = gradient.layer_gradients(analysis, paths)
    graph = analysis.graph
    assert len(layers) == 2 and all(paths.is_main(graph.node(g.node).output[0]) for g in layers)

    x, y = torch.randn(256, 32), torch.randint(0, 10, (256,))
    torch.nn.functional.cross_entropy(net(x), y).backward()

    def update_ratio(layer):
        weight = layer.weight.detach()
        return float(layer.weight.grad.pow(2).mean().sqrt() / weight.pow(2).mean().sqrt())

    assert update_ratio(net[0]) / update_ratio(net[-2].fc2) > 1e4
    findings = check.find(analysis, paths=paths, max_gradient_ratio=1e3)
    assert not check.failed(findings), [f.message for f in findings]


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        scale = torch.sigmoid(self.expand(torch.relu(self.reduce(h.mean((2, 3), keepdim=True)))))
        return h * scale


def test_squeeze_excite_gate_is_a_side_path():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *(SqueezeExcite(16) for _ in range(3)),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    analysis, paths, findings = findings_of(export(net, 4, 3, 16, 16))
    assert all(f.level == "note" for f in findings), [f.message for f in findings]
    gates = {p.join for p in paths.side.values() if p.kind == GATE}
    assert len(gates) == 3 and all(analysis.graph.node(j).op_type == "Mul" for j in gates)


class Attention(nn.Module):
    def __init__(self, width: int, masked: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.masked = masked

    def forward(self, x):
        h = self.norm(x)
        mask = torch.triu(torch.full((x.shape[1], x.shape[1]), self.masked), diagonal=1)
        return x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]


@pytest.mark.parametrize("masked", [-100.0, float(torch.finfo(torch.float32).min)],
                         ids=["mask-100", "mask-finfo-min"])
def test_attention_blocks_with_a_causal_mask_pass(masked):
    """Softmax probabilities of about 1/tokens and a causal mask (Swin's -100, Hugging Face's
    finfo.min) are the attention side path."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), *(Attention(32, masked) for _ in range(4)),
                        nn.Linear(32, 10))
    analysis, paths, findings = findings_of(export(net, 2, 64, 16))
    assert all(f.level == "note" for f in findings), [f.message for f in findings]
    softmax = [n for n in analysis.graph.order if analysis.graph.node(n).op_type == "Softmax"]
    assert len(softmax) == 4
    for node in softmax:
        out = analysis.graph.node(node).output[0]
        assert paths.side[out].kind == ATTENTION and not paths.is_main(out)


def test_small_std_output_head_is_a_note():
    """A classifier initialised with std 1e-5 (logits at 6e-9 of the input) trains fine."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                        nn.Linear(128, 10))
    for m in net[:-1]:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    nn.init.normal_(net[-1].weight, 0.0, 1e-5)
    nn.init.zeros_(net[-1].bias)
    _, _, findings = findings_of(export(net, 32, 64))
    assert levels(findings) == [("ONNXINIT007", "note")]
    assert "the output head makes the signal small" in findings[0].message


def test_deep_default_init_tanh_mlp_fails_on_its_signal():
    """PyTorch's default Linear init (variance 1/(3 fan_in)) with tanh: the signal shrinks ~3x a
    layer while the biases keep the total variance near 1e-3 (above --min-var)."""
    torch.manual_seed(0)
    layers = [nn.Linear(64, 256), nn.Tanh()]
    for _ in range(48):
        layers += [nn.Linear(256, 256), nn.Tanh()]
    net = nn.Sequential(*layers, nn.Linear(256, 10))
    analysis, _, findings = findings_of(export(net, 32, 64))
    assert levels(findings)[:2] == [("ONNXINIT002", "error"), ("ONNXINIT003", "warning")]
    assert analysis.tensors[-1].growth > analysis.min_var  # the old total-variance test passed it
    assert check.failed(findings)


@pytest.mark.slow
def test_resnet50_without_normalization_fails():
    """torchvision's ResNet-50 with every BatchNorm replaced by Identity, at 224x224 (at 32x32
    the 1x1 and 2x2 maps of the last stages let the 3x3 convolutions see mostly padding, and the
    growth stays below 100)."""
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    net = models.resnet50(weights=None, num_classes=10, norm_layer=lambda c: nn.Identity())
    _, paths, findings = findings_of(export(net, 1, 3, 224, 224))
    assert levels(findings)[:2] == [("ONNXINIT001", "error"), ("ONNXINIT003", "warning")]
    assert "on the main path" in findings[0].message and len(paths.blocks) == 16
    assert "Add" in findings[0].op


def test_global_pooling_of_white_noise_is_not_a_vanishing_signal():
    """small_cnn averages 8x8 positions: the white-noise prediction divides the variance by 64,
    real inputs' correlated positions do not; the vanishing test multiplies the 64 back in."""
    analysis = analyze(sample("small_cnn"), min_var=1e-4)  # a threshold between raw and x64
    paths = check.paths_of(analysis)
    (pool,) = [n for n in analysis.graph.order
               if analysis.graph.node(n).op_type == "GlobalAveragePool"]
    pooled = analysis.graph.node(pool).output[0]
    assert paths.pooling[pooled] == 64 and paths.pooling[analysis.graph.output_names[0]] == 64
    raw = signal_variance(analysis.propagation.moments[pooled]) / analysis.propagation.input_var
    assert raw < analysis.min_var < 64 * raw  # judged raw, this healthy CNN would fail
    assert check.find(analysis, paths=paths) == []


def test_token_model_signal_is_relative_to_its_embeddings():
    """GPT-2's embeddings have std 0.02 (variance 4e-4 of the token-id reference 1): the signal
    of a token model is measured against its largest embedding lookup."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=50,
                                     n_positions=16, attn_implementation="eager")
    gpt2 = transformers.GPT2Model(config)

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt2 = gpt2

        def forward(self, input_ids):
            return self.gpt2(input_ids=input_ids).last_hidden_state

    net = Hidden()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randint(0, 50, (2, 16)),), buffer, dynamo=False,
                          opset_version=17, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=["input_ids"])
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = min(model.ir_version, 10)
    analysis = analyze(model)
    table = gpt2.wte.weight.detach().double()
    assert signal_reference(analysis) == pytest.approx(float(table.var(0).mean()), rel=0.1)
    assert not check.failed(check.find(analysis))


class BatchNormBlock(nn.Module):
    """ResNet's basic block: relu(x + bn(conv(relu(bn(conv(x))))))."""

    def __init__(self, width: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.c2, self.b2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


def _reaching_outputs(model: onnx.ModelProto) -> set[str]:
    """Tensors some graph output depends on, walked back over the nodes."""
    reach = {o.name for o in model.graph.output}
    for node in reversed(model.graph.node):
        if any(o in reach for o in node.output):
            reach.update(i for i in node.input if i)
    return reach


def test_training_mode_batchnorm_statistics_are_not_judged():
    # a training-mode BatchNormalization also outputs its running mean and variance, which reach
    # no graph output; inside a residual branch they were judged as branch tensors (ONNXINIT007,
    # "signal variance below --min-var", on every torchvision ResNet, RegNet and MnasNet)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *(BatchNormBlock(16) for _ in range(3)),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    model = export(net, 8, 3, 16, 16)
    reach = _reaching_outputs(model)
    statistics = [o for n in model.graph.node if n.op_type == "BatchNormalization"
                  for o in n.output[1:] if o]
    assert statistics and not any(s in reach for s in statistics)
    _, _, findings = findings_of(model)
    assert not check.failed(findings), [f.message for f in findings]
    assert all(f.tensor in reach for f in findings), [f.message for f in findings]
