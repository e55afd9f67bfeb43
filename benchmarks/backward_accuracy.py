"""Accuracy of the backward analysis (``analyze --backward``, issue 15): the predicted variance
of dL/dx for every float activation x against the variance the project's autodiff measures
(onnxruntime, a zero probe added to each tensor, seeded batches, cross-entropy on the first
output with uniformly drawn labels).

    python benchmarks/backward_accuracy.py                          # every model below
    python benchmarks/backward_accuracy.py --models resnet18,vgg11 --size 64 --batch-size 16

Models: the committed samples (``sample_models/``), torchvision ResNet-18/50 with and without
normalization (``norm_layer=Identity``), VGG-11, a 4-layer BERT built from a config (hidden 128,
4 heads, sequence 32; the loss on its last hidden state), and a 50-layer tanh MLP of width 64
(PyTorch's default init), torchvision Swin-T and Swin V2-T at 64x64 (their own size: shifted
windows, padding to whole windows), exported in training mode as the README says
(``tests/real/exports.py``). Columns: tensors compared (those the loss depends on, measured
non-zero), the share whose prediction is within 20% of the measured variance and within 2x,
the median and the extremes of predicted/measured, the share of the parameters used once whose
predicted gradient variance is within 2x of the measured, and the CPU seconds of the backward
prediction against those of the forward analysis (loading included).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.real_exports import mlp  # noqa: E402
from tests.real import exports  # noqa: E402
from tests.real.sequence import last_hidden_state  # noqa: E402


def small_bert(seq: int):
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=512, vocab_size=1000)
    return last_hidden_state(BertModel(config)), (seq,)


SAMPLES = ["small_cnn", "resnet20_bn", "resnet20_nobn", "tanh_mlp50", "transformer_postln"]
# name: (builder, vocabulary for token inputs or 0); SIZES: models measured at their own size
EXPORTS = {
    "resnet18": (exports.BUILDERS["resnet18"], 0),
    "resnet18_nonorm": (exports._no_norm("resnet18"), 0),
    "resnet50": (exports._torchvision("resnet50"), 0),
    "resnet50_nonorm": (exports.BUILDERS["resnet50_nonorm"], 0),
    "vgg11": (exports.BUILDERS["vgg11"], 0),
    "bert_small": (small_bert, 1000),
    "tanh_mlp50_torch": (mlp("tanh"), 0),
    "swin_t": (exports.BUILDERS["swin_t"], 0),
    "swin_v2_t": (exports.BUILDERS["swin_v2_t"], 0),
}
SIZES = {"swin_t": 64, "swin_v2_t": 64}  # 32x32 leaves Swin's last stage one token


def model_path(name: str, directory: Path, size: int) -> Path:
    if name in SAMPLES:
        return ROOT / "sample_models" / f"{name}.onnx"
    import torch

    builder, vocab = EXPORTS[name]
    size = SIZES.get(name, size)
    torch.manual_seed(0)
    module, shape = builder(32 if vocab else size)
    path = directory / f"{name}_{size}.onnx"
    if path.exists():  # --exports DIR keeps them between runs
        return path
    exports.export_module(module, shape, path, input_name="input_ids" if vocab else "x",
                          integer_input=vocab)
    return path


def row(name: str, path: Path, batch_size: int, batches: int) -> str:
    from onnxinit import analyze
    from onnxinit.backward import predict_backward

    start = time.process_time()
    forward = analyze(path, batch_size=batch_size)
    forward_seconds = time.process_time() - start
    start = time.process_time()
    predict_backward(forward.propagation)
    backward_seconds = time.process_time() - start
    measured = analyze(path, batch_size=batch_size, backward=True, measure=True,
                       gradient_batches=batches)
    ratios = np.array([g.var / g.measured_var for g in measured.backward.tensors.values()
                       if g.measured_var])
    within = np.abs(ratios - 1) <= 0.2
    twice = (ratios <= 2) & (ratios >= 0.5)
    params = parameter_ratios(measured.backward.parameters)
    param_cell = (f"{100 * ((params <= 2) & (params >= 0.5)).mean():.0f}% of {params.size}"
                  if params.size else "-")
    return (f"| {name} | {ratios.size} | {100 * within.mean():.0f}% | {100 * twice.mean():.0f}% "
            f"| {np.median(ratios):.3f} | {ratios.min():.3f} .. {ratios.max():.3f} "
            f"| {param_cell} | {backward_seconds:.1f} / {forward_seconds:.1f} |")


def parameter_ratios(parameters) -> np.ndarray:
    """Predicted/measured variance of dL/dW for the parameters used once (the autodiff
    measures a parameter's gradient summed over its uses; exporters tie equal initializers)."""
    uses: dict[str, int] = {}
    for p in parameters:
        uses[p.name] = uses.get(p.name, 0) + 1
    return np.array([p.grad_var / p.measured_grad_var for p in parameters
                     if uses[p.name] == 1 and p.measured_grad_var])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(SAMPLES + list(EXPORTS)))
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="measured batches")
    parser.add_argument("--exports", help="folder to keep the exports in (default: temporary)")
    args = parser.parse_args()
    print(f"batch {args.batch_size}, {args.batches} measured batches, images "
          f"{args.size}x{args.size}\n")
    print("| model | tensors | within 20% | within 2x | median pred/meas | range "
          "| parameters within 2x | backward / forward CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.exports or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            path = model_path(name, directory, args.size)
            print(row(name, path, args.batch_size, args.batches), flush=True)


if __name__ == "__main__":
    main()
