"""Residual-block detection on hand-built graphs and on PyTorch exports (ResNet-50, BERT)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.graph import load
from onnxinit.residual import residual_blocks

from .models import make_model, mlp


def _init(name, *shape, seed=0):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)


def _basic_blocks_model():
    """x -> fc0 -> Relu = h;  h + fc2(Relu(fc1(h)))  -> Relu = r;  Add(r, bias);  proj(r) + fc4(fc3(r))."""
    d = 8
    inits = [_init(f"w{i}", d, d, seed=i) for i in range(6)] + [_init("bias", d, seed=9)]
    nodes = [
        helper.make_node("Gemm", ["x", "w0"], ["h0"], transB=1, name="fc0"),
        helper.make_node("Relu", ["h0"], ["h"], name="relu0"),
        helper.make_node("Gemm", ["h", "w1"], ["b1"], transB=1, name="fc1"),
        helper.make_node("Relu", ["b1"], ["b1r"], name="relu1"),
        helper.make_node("Gemm", ["b1r", "w2"], ["b2"], transB=1, name="fc2"),
        helper.make_node("Add", ["h", "b2"], ["s1"], name="add1"),
        helper.make_node("Relu", ["s1"], ["r"], name="relu2"),
        helper.make_node("Add", ["r", "bias"], ["rb"], name="bias_add"),  # a bias, not residual
        helper.make_node("Gemm", ["rb", "w3"], ["c1"], transB=1, name="fc3"),
        helper.make_node("Dropout", ["c1"], ["c1d"], name="drop"),
        helper.make_node("Gemm", ["c1d", "w4"], ["c2"], transB=1, name="fc4"),
        helper.make_node("Gemm", ["rb", "w5"], ["p"], transB=1, name="proj"),
        helper.make_node("Add", ["c2", "p"], ["y"], name="add2"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", d])],
        inits,
    )


def test_identity_and_projection_blocks():
    blocks = residual_blocks(load(_basic_blocks_model()))
    assert [b.to_dict() for b in blocks] == [
        {"add": "add1", "branch": ["fc1", "fc2"], "branch_end": "fc2", "skip": [], "depth": 2},
        {"add": "add2", "branch": ["fc3", "fc4"], "branch_end": "fc4", "skip": ["proj"],
         "depth": 2},
    ]
    first, second = blocks
    assert first.input == "h" and first.output == "s1" and first.identity_skip
    assert first.skip.input_index == 0 and first.branches[0].tensor == "b2"
    assert second.input == "rb" and second.skip.tensor == "p" and not second.identity_skip
    assert second.branches[0].nodes == ("fc3", "drop", "fc4")


def test_no_blocks_without_residual_adds():
    assert residual_blocks(load(mlp([6, 6, 6]))) == []  # Gemm biases are not residual adds


def test_adds_of_two_graph_inputs_or_broadcasts_are_not_blocks():
    """Add(x, fc(y)) joins two inputs (no common ancestor); Add(scores, mask) broadcasts."""
    d = 4
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"], transB=1, name="fc"),
        helper.make_node("Add", ["h", "y"], ["s"], name="join_inputs"),
        helper.make_node("ReduceMean", ["s"], ["m"], keepdims=1, axes=[1], name="mean"),
        helper.make_node("Gemm", ["s", "w2"], ["t"], transB=1, name="fc2"),
        helper.make_node("Add", ["t", "m"], ["z"], name="broadcast_add"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, d]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, d])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, d])],
        [_init("w", d, d), _init("w2", d, d, seed=1)],
        opset=17,
    )
    assert residual_blocks(load(model)) == []


def test_block_starting_at_a_graph_input_and_sum_with_two_branches():
    d = 4
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["a"], name="mm0"),
        helper.make_node("MatMul", ["x", "w1"], ["b0"], name="mm1"),
        helper.make_node("Tanh", ["b0"], ["b1"], name="tanh"),
        helper.make_node("MatMul", ["b1", "w2"], ["b"], name="mm2"),
        helper.make_node("Sum", ["x", "a", "b"], ["y"], name="sum"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, d])],
        [_init(f"w{i}", d, d, seed=i) for i in range(3)],
    )
    (block,) = residual_blocks(load(model))
    assert block.input == "x" and block.identity_skip
    assert block.branch == ["mm0", "mm1", "mm2"]
    assert block.branch_ends == ["mm0", "mm2"] and block.branch_end == "mm2"
    assert block.depth == 2


# --- PyTorch exports ------------------------------------------------------------------------


def _export(module, args, training=False, **kwargs) -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    module.train(training)
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(module, args, buffer, dynamo=False, opset_version=17, training=mode,
                      do_constant_folding=not training, **kwargs)
    return onnx.load_from_string(buffer.getvalue())


def _resnet50_like(width=4, layers=(3, 4, 6, 3)):
    """torchvision's ResNet-50 block structure (Bottleneck, expansion 4, projection on the
    first block of each stage, stride on the 3x3 conv), with narrow widths."""
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            out = planes * 4
            self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or cin != out:
                self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                                nn.BatchNorm2d(out))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            h = self.relu(self.bn1(self.conv1(x)))
            h = self.relu(self.bn2(self.conv2(h)))
            return self.relu(self.bn3(self.conv3(h)) + identity)

    stem = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1)]
    blocks, cin = [], width
    for stage, n in enumerate(layers):
        planes = width * 2**stage
        for i in range(n):
            blocks.append(Bottleneck(cin, planes, 2 if (i == 0 and stage > 0) else 1))
            cin = planes * 4
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*stem, *blocks, *head)


@pytest.mark.parametrize("training", [False, True], ids=["eval-export", "training-export"])
def test_resnet50_blocks(training):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = _export(_resnet50_like(), (torch.randn(2, 3, 64, 64),), training=training,
                    input_names=["x"])
    graph = load(model)
    blocks = residual_blocks(graph)
    assert len(blocks) == 16  # 3 + 4 + 6 + 3 bottlenecks
    assert [len(b.skip.parametric) for b in blocks] == [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                                                        1, 0, 0]
    assert all(b.depth == 3 and len(b.branch) == 3 for b in blocks)
    convs = [n for n in graph.parametric_nodes if graph.node(n).op_type == "Conv"]
    on_skip = {n for b in blocks for n in b.skip.parametric}
    assert len(on_skip) == 4 and all(n in convs for n in on_skip)
    for b in blocks:  # the branch end is the last conv before the Add, never the projection
        assert b.branch_end == b.branch[-1] and b.branch_end not in on_skip
        # each block starts where the previous one ended (through the ReLU after its Add)
        assert graph.node(graph.producer[b.input]).op_type in ("Relu", "MaxPool")


def _bert_like(layers=12, hidden=32, heads=4, vocab=50, max_len=16):
    """A BERT encoder in plain torch: embeddings (word + position + token type, LayerNorm),
    post-LN layers with multi-head self-attention (Q, K, V, additive mask) and a GELU FFN."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
            self.o = nn.Linear(hidden, hidden)
            self.ln1 = nn.LayerNorm(hidden)
            self.ff1, self.ff2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
            self.ln2 = nn.LayerNorm(hidden)
            self.drop = nn.Dropout(0.1)

        def split(self, t):
            b, s, _ = t.shape
            return t.view(b, s, heads, hidden // heads).transpose(1, 2)

        def forward(self, x, mask):
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            scores = q @ k.transpose(-1, -2) / (hidden // heads) ** 0.5 + mask
            ctx = self.drop(scores.softmax(-1)) @ v
            ctx = ctx.transpose(1, 2).reshape(x.shape)
            x = self.ln1(x + self.drop(self.o(ctx)))
            return self.ln2(x + self.drop(self.ff2(nn.functional.gelu(self.ff1(x)))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(vocab, hidden)
            self.pos = nn.Embedding(max_len, hidden)
            self.token_type = nn.Embedding(2, hidden)
            self.ln = nn.LayerNorm(hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, ids, token_type, attention_mask):
            pos = torch.arange(ids.shape[1]).unsqueeze(0)
            x = self.ln(self.word(ids) + self.pos(pos) + self.token_type(token_type))
            mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
            for layer in self.layers:
                x = layer(x, mask)
            return x

    return Bert()


def test_bert_blocks():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 16))
    model = _export(_bert_like(), (ids, torch.zeros_like(ids), torch.ones_like(ids)),
                    input_names=["input_ids", "token_type_ids", "attention_mask"])
    graph = load(model)
    blocks = residual_blocks(graph)
    assert len(blocks) == 24  # attention and feed-forward blocks of 12 layers
    assert all(b.identity_skip and b.depth == 2 for b in blocks)
    attention, ffn = blocks[0::2], blocks[1::2]
    assert all(len(b.branch) == 4 for b in attention)  # Q, K, V, output projection
    assert all(len(b.branch) == 2 for b in ffn)
    assert all(b.branch_end == b.branch[-1] for b in blocks)
    for b in attention:  # Q, K, V fork off the block input; the output projection ends it
        firsts = [n for n in b.branch if b.input in graph.inputs_of(n)]
        assert len(firsts) == 3
    adds = [n for n in graph.order if graph.node(n).op_type == "Add"]
    assert len(adds) > 24  # biases, embedding sums and mask adds are there but are not blocks


# --- real torchvision / transformers exports (skipped when those packages are absent) ---------


def test_torchvision_resnet50_blocks():
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = _export(models.resnet50(), (torch.randn(1, 3, 64, 64),), training=True,
                    input_names=["x"])
    graph = load(model)
    blocks = residual_blocks(graph)
    print(f"torchvision resnet50: {len(blocks)} residual blocks")
    assert len(blocks) == 16
    assert sum(not b.identity_skip for b in blocks) == 4
    assert all(b.depth == 3 and b.branch_end == b.branch[-1] for b in blocks)


def test_transformers_bert_blocks():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32)
    torch.manual_seed(0)
    bert = transformers.BertModel(config, add_pooling_layer=False)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(0, 100, (2, 16))
    model = _export(Encoder(), (ids, torch.ones_like(ids)), training=True,
                    input_names=["input_ids", "attention_mask"])
    blocks = residual_blocks(load(model))
    print(f"transformers BertModel (4 layers): {len(blocks)} residual blocks")
    assert len(blocks) == 8  # attention and feed-forward of each layer
    assert all(b.identity_skip and b.depth == 2 for b in blocks)
    assert [len(b.branch) for b in blocks] == [4, 2] * 4
