"""Cost of one autodiff gradient pass on ResNet-50- and BERT-base-sized models, relative to one
onnxruntime forward pass of the same lowered graph and to one torch autograd forward+backward on
the same model and batch (train mode). Prints ratios, measured in this one run.

    python benchmarks/gradients.py [--batch 2] [--image 224] [--seq 128] [--repeat 5]

The models are plain torch modules with the real shapes (torchvision and transformers are not
needed): ResNet-50 (bottleneck blocks 3-4-6-3, widths 64..2048, 1000 classes) and BERT-base
with a tied masked-LM head (12 layers, hidden 768, 12 heads, FFN 3072, vocab 30522).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxinit.autodiff import GradientProgram


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        out = planes * 4
        self.body = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out))
        self.skip = None
        if stride != 1 or inplanes != out:
            self.skip = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

    def forward(self, x):
        return torch.relu(self.body(x) + (x if self.skip is None else self.skip(x)))


class ResNet50(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                  nn.MaxPool2d(3, 2, 1)]
        inplanes = 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * 4
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class BertLayer(nn.Module):
    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_out = nn.Linear(hidden, hidden)
        self.norm1, self.norm2 = nn.LayerNorm(hidden, eps=1e-12), nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate, self.output = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x, mask_bias):
        batch, length, hidden = x.shape

        def heads(t):
            return t.reshape(batch, length, self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-2, -1) / (hidden // self.heads) ** 0.5 + mask_bias
        context = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(batch, length, hidden)
        x = self.norm1(x + self.attention_out(context))
        return self.norm2(x + self.output(nn.functional.gelu(self.intermediate(x))))


class BertForMaskedLM(nn.Module):
    def __init__(self, vocab=30522, hidden=768, layers=12, heads=12, ffn=3072, positions=512):
        super().__init__()
        self.words = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(positions, hidden)
        self.token_types = nn.Embedding(2, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, ffn) for _ in range(layers))
        self.transform = nn.Linear(hidden, hidden)
        self.transform_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.decoder_bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, tokens, token_types, attention_mask):
        length = tokens.shape[1]
        positions = torch.arange(length).unsqueeze(0)
        x = self.words(tokens) + self.positions(positions) + self.token_types(token_types)
        x = self.embedding_norm(x)
        mask_bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        x = self.transform_norm(nn.functional.gelu(self.transform(x)))
        return x @ self.words.weight.T + self.decoder_bias


def export(module, args, names):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=18,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                          input_names=names)
    return onnx.load_from_string(buffer.getvalue())


def timed(functions, repeat):
    """Fastest of ``repeat`` runs of each function, the functions taking turns, so a slow phase of
    a shared machine hits all of them rather than one (medians of separate blocks moved by
    +-0.4x between runs on 2 busy cores)."""
    for function in functions:
        function()  # warm-up
    best = [float("inf")] * len(functions)
    for _ in range(repeat):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            function()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure(name, module, args, names, labels, class_axis, repeat):
    torch.manual_seed(0)
    model = export(module, args, names)
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    start = time.perf_counter()
    program = GradientProgram(model, {n: v.shape for n, v in feeds.items()}, device="auto")
    build = time.perf_counter() - start
    program.loss(feeds, labels)  # builds the forward-only session

    def torch_step():
        module.zero_grad(set_to_none=True)
        logits = module(*args)
        loss = nn.functional.cross_entropy(logits.movedim(class_axis, 1), torch.as_tensor(labels))
        loss.backward()

    module.train()
    forward, gradient, reference = timed(
        [lambda: program.loss(feeds, labels), lambda: program.gradients(feeds, labels),
         torch_step], repeat)
    print(f"{name}: gradient/forward (onnxruntime) = {gradient / forward:.2f}x, "
          f"gradient/torch fwd+bwd = {gradient / reference:.2f}x   "
          f"[{program._runner.providers[0]}, graph built in {build:.1f} s]")
    return gradient / forward, gradient / reference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", default="resnet50,bert-base")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    wanted = args.models.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}")
    if "resnet50" in wanted:
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, args.image, args.image)
        labels = rng.integers(0, 1000, args.batch)
        measure(f"ResNet-50 {args.image}x{args.image}", ResNet50(), (x,), ["x"], labels, 1,
                args.repeat)
    if "bert-base" in wanted:
        torch.manual_seed(0)
        tokens = torch.randint(0, 30522, (args.batch, args.seq))
        types = torch.zeros_like(tokens)
        mask = torch.ones_like(tokens)
        labels = rng.integers(0, 30522, (args.batch, args.seq))
        measure(f"BERT-base seq {args.seq}", BertForMaskedLM(), (tokens, types, mask),
                ["tokens", "token_types", "attention_mask"], labels, 2, args.repeat)


if __name__ == "__main__":
    main()
