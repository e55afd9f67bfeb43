"""The networks of the gate calibration (``benchmarks/gate_calibration.py``) and their exports.

Every network is a complete 10-class digits classifier, so the ONNX graph ``check`` reads is the
function that is trained. Inputs (``KINDS``): ``image`` 3x32x32 (digits upsampled, grey copied to
three channels), ``flat`` 64 features, ``rows`` 8 tokens of 8 features (the digit's rows) and
``tokens`` 64 token ids (pixel intensities 0..16, one per token). Each builder seeds torch with
``seed`` and returns ``(module, kind)``.

Families:

- healthy standard networks: torchvision models with ``weights=None`` and their default init;
  Hugging Face BERT and GPT-2 from small configs (their own init, std 0.02) with a linear head;
- residual networks without normalization: torchvision ResNet-50/152 with
  ``norm_layer=Identity``; Keras-style pre-activation ResNets (ResNet v2 basic blocks, no
  BatchNormalization, Keras' default glorot_uniform kernels and zero biases);
- VGG-style plain stacks without BatchNormalization initialised with a fixed Gaussian (the
  Caffe-era ``std 0.01`` of the VGG paper, and ``std 0.05``);
- deep MLPs of width 256: PyTorch's default Linear init with tanh, sigmoid, SELU, ReLU, and
  controls with Kaiming (ReLU) and LeCun (SELU) init;
- transformer encoders over the rows (pre-LN, PyTorch ``nn.TransformerEncoderLayer`` defaults),
  with LayerNorm and with every LayerNorm replaced by Identity;
- stacked ``nn.LSTM``/``nn.GRU`` over the rows with PyTorch's default init (2, 4 and 8 layers).
"""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np

KINDS = {"image": (3, 32, 32), "flat": (64,), "rows": (8, 8), "tokens": (64,)}
EXPORT_BATCH = 8
VOCAB = 17  # digits pixel intensities 0..16


def _torch():
    import torch
    from torch import nn

    return torch, nn


# torchvision ------------------------------------------------------------------------------------


def _replicate_7x7():
    """VGG's ``AdaptiveAvgPool2d((7, 7))`` on the 1x1 map a 32x32 input leaves: each output cell
    averages the one input cell, i.e. copies it (the exporter refuses the adaptive pool there)."""
    _, nn = _torch()

    class Replicate(nn.Module):
        def forward(self, x):
            return x.expand(-1, -1, 7, 7)

    return Replicate()


def torchvision_net(name: str, **kwargs):
    def build(seed: int):
        import torchvision

        _torch()[0].manual_seed(seed)
        net = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)
        if name.startswith("vgg"):
            net.avgpool = _replicate_7x7()
        return net, "image"
    return build


def resnet_without_norm(name: str):
    _, nn = _torch()
    return torchvision_net(name, norm_layer=lambda channels: nn.Identity())


# Keras-style pre-activation ResNet, VGG-style stacks -------------------------------------------


def _keras_init(module) -> None:
    """Keras' defaults: glorot_uniform kernels, zero biases."""
    _, nn = _torch()
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def preact_resnet(blocks_per_stage: int):
    """ResNet v2 (He et al. 2016, identity mappings) for 32x32 inputs without BatchNormalization:
    conv stem, three stages of basic blocks ``x + conv(relu(conv(relu(x))))`` at 16/32/64
    channels (a strided 1x1 projection where the shape changes), ReLU, global pool, dense."""
    torch, nn = _torch()

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
            self.proj = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            out = self.conv2(torch.relu(self.conv1(torch.relu(x))))
            return out + (x if self.proj is None else self.proj(x))

    def build(seed: int):
        torch.manual_seed(seed)
        layers, cin = [nn.Conv2d(3, 16, 3, 1, 1)], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                layers.append(Block(cin, cout, 2 if stage and i == 0 else 1))
                cin = cout
        layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
        net = nn.Sequential(*layers)
        _keras_init(net)
        return net, "image"
    return build


def vgg_stack(std: float, config=(64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512,
                                  "M", 512, 512, 512, "M")):
    """VGG-16's convolutions (ReLU, max-pools, no normalization) and a 512-512-10 classifier,
    every weight N(0, std^2), biases zero (Caffe's ``gaussian`` filler)."""
    _, nn = _torch()

    def build(seed: int):
        _torch()[0].manual_seed(seed)
        layers, cin = [], 3
        for c in config:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU()]
                cin = c
        layers += [nn.Flatten(), nn.Linear(cin, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                   nn.Linear(512, 10)]
        net = nn.Sequential(*layers)
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.zeros_(m.bias)
        return net, "image"
    return build


# MLPs -------------------------------------------------------------------------------------------


def mlp(depth: int, activation: str, init: str = "default", width: int = 256):
    """``depth`` Linear layers 64 -> width -> ... -> 10 with ``activation`` between; ``init``
    default (PyTorch's: U(+-1/sqrt(fan_in)) weights and biases), kaiming (normal, fan_in, ReLU
    gain, zero biases) or lecun (normal, variance 1/fan_in, zero biases)."""
    _, nn = _torch()
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "selu": nn.SELU}[activation]

    def build(seed: int):
        _torch()[0].manual_seed(seed)
        widths = [64] + [width] * (depth - 1) + [10]
        layers = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < depth - 1:
                layers.append(act())
        net = nn.Sequential(*layers)
        for m in net.modules():
            if isinstance(m, nn.Linear) and init != "default":
                if init == "kaiming":
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, 0.0, m.in_features ** -0.5)
                nn.init.zeros_(m.bias)
        return net, "flat"
    return build


# transformers -----------------------------------------------------------------------------------


def row_transformer(depth: int, layer_norm: bool, d_model: int = 64):
    """Pre-LN transformer encoder over the 8 rows: Linear embedding plus a learned position
    embedding, ``depth`` ``nn.TransformerEncoderLayer`` (4 heads, feed-forward 4 d_model, GELU,
    norm_first), mean over tokens, Linear head. ``layer_norm=False`` replaces every LayerNorm
    (the layers' and the final one) by Identity."""
    torch, nn = _torch()

    class RowTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, d_model)
            self.position = nn.Parameter(torch.randn(8, d_model) * 0.02)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
                for _ in range(depth))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, 10)
            if not layer_norm:
                self.norm = nn.Identity()
                for layer in self.layers:
                    layer.norm1, layer.norm2 = nn.Identity(), nn.Identity()

        def forward(self, x):
            h = self.embed(x) + self.position
            for layer in self.layers:
                h = layer(h)
            return self.head(self.norm(h).mean(dim=1))

    def build(seed: int):
        torch.manual_seed(seed)
        return RowTransformer(), "rows"
    return build


def _token_classifier(backbone, pool: str):
    torch, nn = _torch()

    class TokenClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(backbone.config.hidden_size, 10)

        def forward(self, input_ids):
            hidden = self.backbone(input_ids=input_ids).last_hidden_state
            return self.head(hidden[:, -1] if pool == "last" else hidden.mean(dim=1))

    return TokenClassifier()


def hf_bert(layers: int = 4, hidden: int = 128):
    def build(seed: int):
        from transformers import BertConfig, BertModel

        _torch()[0].manual_seed(seed)
        config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=4 * hidden, vocab_size=VOCAB,
                            max_position_embeddings=64, attn_implementation="eager")
        return _token_classifier(BertModel(config), "mean"), "tokens"
    return build


def hf_gpt2(layers: int = 4, hidden: int = 128):
    def build(seed: int):
        from transformers import GPT2Config, GPT2Model

        _torch()[0].manual_seed(seed)
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, vocab_size=VOCAB,
                            n_positions=64, attn_implementation="eager")
        return _token_classifier(GPT2Model(config), "last"), "tokens"
    return build


# recurrent --------------------------------------------------------------------------------------


def recurrent(kind: str, layers: int, hidden: int = 128):
    """``nn.LSTM``/``nn.GRU`` (batch first, PyTorch's default init U(+-1/sqrt(hidden))) of
    ``layers`` stacked layers over the 8 rows, a Linear classifier on the last step."""
    _, nn = _torch()

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, kind)(8, hidden, layers, batch_first=True)
            self.head = nn.Linear(hidden, 10)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    def build(seed: int):
        _torch()[0].manual_seed(seed)
        return Classifier(), "rows"
    return build


# the set ----------------------------------------------------------------------------------------

HEALTHY_TORCHVISION = ("resnet18", "vgg11_bn", "densenet121", "regnet_y_400mf", "squeezenet1_0",
                       "vgg11", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small", "swin_t")

NETWORKS = {
    **{name: torchvision_net(name) for name in HEALTHY_TORCHVISION},
    "vit_b_16": torchvision_net("vit_b_16", image_size=32),
    "bert_4x128": hf_bert(),
    "gpt2_4x128": hf_gpt2(),
    "resnet50_nonorm": resnet_without_norm("resnet50"),
    "resnet152_nonorm": resnet_without_norm("resnet152"),
    "preact_resnet56_nonorm_keras": preact_resnet(9),
    "preact_resnet110_nonorm_keras": preact_resnet(18),
    "vgg16_nobn_std0.01": vgg_stack(0.01),
    "vgg16_nobn_std0.05": vgg_stack(0.05),
    "mlp50_tanh_default": mlp(50, "tanh"),
    "mlp50_sigmoid_default": mlp(50, "sigmoid"),
    "mlp50_selu_default": mlp(50, "selu"),
    "mlp24_relu_default": mlp(24, "relu"),
    "mlp24_relu_kaiming": mlp(24, "relu", "kaiming"),
    "mlp50_selu_lecun": mlp(50, "selu", "lecun"),
    "mlp8_tanh_default": mlp(8, "tanh"),
    "transformer12_ln": row_transformer(12, True),
    "transformer12_noln": row_transformer(12, False),
    "transformer48_noln": row_transformer(48, False),
    "lstm2_default": recurrent("LSTM", 2),
    "lstm4_default": recurrent("LSTM", 4),
    "lstm8_default": recurrent("LSTM", 8),
    "gru4_default": recurrent("GRU", 4),
    "gru8_default": recurrent("GRU", 8),
}


# What each network is expected to do before training it here: the standard networks train out
# of the box (their reference recipes, random init, the premise), as do the controls with
# Kaiming or LeCun init and shallow MLPs; the others are the broken set (deep networks
# without normalization, deep MLPs with PyTorch's default init, which it trained to 10% accuracy).
# The calibration labels a network by training it; this label stands in where no training result
# is cached, and the table says which is which.
UNTRAINABLE_EXPECTED = {
    "resnet50_nonorm", "resnet152_nonorm", "preact_resnet56_nonorm_keras",
    "preact_resnet110_nonorm_keras", "vgg16_nobn_std0.01", "vgg16_nobn_std0.05",
    "mlp50_tanh_default", "mlp50_sigmoid_default", "mlp50_selu_default", "mlp24_relu_default",
    "transformer48_noln",
}


def expected_trainable(name: str) -> bool:
    return name not in UNTRAINABLE_EXPECTED


def example_input(kind: str, batch: int = EXPORT_BATCH, seed: int = 0):
    torch, _ = _torch()
    generator = torch.Generator().manual_seed(seed)
    if kind == "tokens":
        return torch.randint(0, VOCAB, (batch, *KINDS[kind]), generator=generator)
    return torch.randn((batch, *KINDS[kind]), generator=generator)


def export_onnx(module, kind: str, batch: int = EXPORT_BATCH):
    """The module exported in training mode (:func:`export_training`), input ``x``
    (``input_ids`` for token models) with a fixed batch of ``batch``."""
    name = "input_ids" if kind == "tokens" else "x"
    return export_training(module, example_input(kind, batch), name)


def export_training(module, example, input_name: str, output_name: str = "logits"):
    """``module`` exported in training mode (legacy exporter, opset 17, no constant folding,
    shapes fixed by ``example``), IR version at most 10 (onnxruntime's limit)."""
    torch, _ = _torch()
    import onnx

    buffer = io.BytesIO()
    module.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                          input_names=[input_name], output_names=[output_name])
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = min(model.ir_version, 10)
    return model


def digits(seed: int = 0):
    """(x_train, y_train, x_test, y_test) as float32 features (standardised with the training
    split's statistics) and int64 labels; raw intensities for token models come from
    :func:`as_kind`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float64), data.target.astype(np.int64), test_size=0.2,
        random_state=seed, stratify=data.target)
    return x_train, y_train, x_test, y_test


def as_kind(raw: np.ndarray, kind: str, reference: np.ndarray):
    """Digits pixels (N x 64, intensities 0..16) as the input of a ``kind`` network: token ids,
    or standardised by the training split's overall mean and standard deviation (one scalar each,
    so the input has unit variance as ``check`` assumes) and shaped/upsampled."""
    torch, _ = _torch()
    if kind == "tokens":
        return torch.as_tensor(raw.astype(np.int64))
    x = torch.as_tensor(((raw - reference.mean()) / reference.std()).astype(np.float32))
    if kind == "flat":
        return x
    if kind == "rows":
        return x.reshape(-1, 8, 8)
    images = torch.nn.functional.interpolate(x.reshape(-1, 1, 8, 8), size=KINDS[kind][1:],
                                             mode="bilinear", align_corners=False)
    return images.expand(-1, 3, -1, -1).contiguous()
