"""Prediction accuracy of `analyze` on real exports (issue 10's table): torchvision CNNs, Hugging
Face transformers, torch recurrent and MLP models, random initialization, nothing downloaded.

Each model is built and exported in training mode exactly as the README says
(``tests/real/exports.py``: TrainingMode.TRAINING, no constant folding, the TorchScript
exporter, IR version <= 10), then ``onnxinit.analyze`` predicts and onnxruntime measures
(``tests/real/compare.py``: batch 8 by default; models with random ops such as stochastic depth
are measured over several batches in one session and their mask tensors left out). Prints per
model: float activation tensors compared, the share within 10% of the measured variance, within
2x, coverage (tensors predicted), and the seconds ``analyze`` took (load and propagation, in
this process).

    pip install torch==2.14.1 torchvision==0.29.1 transformers
    python benchmarks/real_exports.py                      # every model, 224x224, batch 8
    python benchmarks/real_exports.py --models vgg11,resnet50_nonorm --batch-size 8

The analysis it measures is whatever ``onnxinit`` the interpreter imports: run it once with
another checkout first on ``PYTHONPATH`` to compare analyze times before and after a change.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.real import exports  # noqa: E402
from tests.real.compare import compare  # noqa: E402


def _last_hidden_state(model):
    """transformers' forward takes keywords and returns a ModelOutput: export a wrapper that
    takes the token ids positionally and returns the hidden states."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).last_hidden_state

    return LastHiddenState()


def hf_bert(seq: int):
    from transformers import BertConfig, BertModel

    return _last_hidden_state(BertModel(BertConfig())), (seq,)


def hf_gpt2(seq: int):
    from transformers import GPT2Config, GPT2Model

    # eager attention: the SDPA path does not export with the TorchScript exporter
    return _last_hidden_state(GPT2Model(GPT2Config(attn_implementation="eager"))), (seq,)


def mlp(activation: str, depth: int = 50, width: int = 64):
    def build(size: int):
        from torch import nn

        act = {"tanh": nn.Tanh, "selu": nn.SELU}[activation]
        layers = []
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), act()]
        return nn.Sequential(*layers, nn.Linear(width, width)), (width,)

    return build


# name: (builder, input size, measured batches, token vocabulary or 0 for float inputs)
MODELS = {
    "resnet152_nonorm": (exports.BUILDERS["resnet152_nonorm"], 224, 1, 0),
    "resnet50_nonorm": (exports.BUILDERS["resnet50_nonorm"], 224, 1, 0),
    "vgg11": (exports.BUILDERS["vgg11"], 224, 1, 0),
    "efficientnet_b0": (exports.BUILDERS["efficientnet_b0"], 224, 8, 0),
    "mobilenet_v3_small": (exports.BUILDERS["mobilenet_v3_small"], 224, 1, 0),
    "resnet18": (exports.BUILDERS["resnet18"], 224, 1, 0),
    "vgg11_bn": (exports.BUILDERS["vgg11_bn"], 224, 1, 0),
    "densenet121": (exports.BUILDERS["densenet121"], 224, 1, 0),
    "convnext_tiny": (exports.BUILDERS["convnext_tiny"], 224, 8, 0),
    "regnet_y_400mf": (exports.BUILDERS["regnet_y_400mf"], 224, 1, 0),
    "vit_b_16": (exports.BUILDERS["vit_b_16"], 224, 1, 0),
    "swin_t": (exports.BUILDERS["swin_t"], 224, 1, 0),
    "bert_base": (hf_bert, 128, 1, 30522),
    "gpt2": (hf_gpt2, 128, 1, 50257),
    "tanh_mlp50": (mlp("tanh"), 0, 1, 0),
    "selu_mlp50": (mlp("selu"), 0, 1, 0),
}


def export(name: str, directory: Path) -> Path:
    import torch

    builder, size, _, vocab = MODELS[name]
    torch.manual_seed(0)
    module, shape = builder(size)
    path = directory / f"{name}.onnx"
    input_name = "input_ids" if vocab else "x"
    return exports.export_module(module, shape, path, input_name=input_name,
                                 integer_input=vocab)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"{'model':20} {'tensors':>7} {'within 10%':>10} {'within 2x':>9} {'coverage':>8} "
          f"{'analyze s':>9}  worst", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            try:
                path = export(name, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - a model the installed exporter refuses
                print(f"{name:20} export failed: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            r = compare(path, batch_size=args.batch_size, runs=MODELS[name][2])
            worst = max(r.rows, key=lambda row: row.ratio)
            print(f"{name:20} {len(r.rows):7} {100 * r.within_10:9.1f}% {100 * r.within_2x:8.1f}% "
                  f"{100 * r.coverage:7.1f}% {r.analyze_s:9.2f}  {worst.ratio:.3g}x {worst.op}",
                  flush=True)


if __name__ == "__main__":
    main()
