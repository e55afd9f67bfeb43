"""Prediction accuracy of `analyze` on real exports from torchvision and Hugging Face transformers.

Exports each model with PyTorch (training mode, so BatchNormalization stays a node; random
initialization, nothing downloaded: Hugging Face models are built from config objects), runs
`onnxinit.analyze(..., measure=True)` and prints, per model: node count, op types without a rule
(handled by the empirical fallback or passed through), the share of float tensors whose predicted
variance is within 10% of the measured one, within 2x, the median error, and the time of
analyze relative to one onnxruntime forward pass measured in the same run.

    pip install torch==2.14.1 torchvision==0.29.1 transformers
    python benchmarks/real_exports.py [--models resnet50,vit_b_16,...] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import onnxinit
from onnxinit.data import synthetic_feeds


def torchvision_model(name: str):
    import torchvision

    return getattr(torchvision.models, name)(weights=None), ("x", (2, 3, 224, 224))


def _last_hidden_state(model):
    """The exporter traces positional arguments; transformers' forward takes keywords and
    returns a ModelOutput: export a wrapper that returns the hidden states."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).last_hidden_state

    return LastHiddenState()


def hf_bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, vocab_size=30522)
    return _last_hidden_state(BertModel(config)), ("input_ids", (2, 64))


def hf_gpt2():
    from transformers import GPT2Config, GPT2Model

    # eager attention: the SDPA path does not export with the TorchScript exporter
    config = GPT2Config(n_embd=256, n_layer=4, n_head=4, vocab_size=50257,
                        attn_implementation="eager")
    return _last_hidden_state(GPT2Model(config)), ("input_ids", (2, 64))


MODELS = {
    "resnet50": lambda: torchvision_model("resnet50"),
    "vgg11": lambda: torchvision_model("vgg11"),
    "densenet121": lambda: torchvision_model("densenet121"),
    "mobilenet_v3_small": lambda: torchvision_model("mobilenet_v3_small"),
    "efficientnet_b0": lambda: torchvision_model("efficientnet_b0"),
    "convnext_tiny": lambda: torchvision_model("convnext_tiny"),
    "swin_t": lambda: torchvision_model("swin_t"),
    "vit_b_16": lambda: torchvision_model("vit_b_16"),
    "bert": hf_bert,
    "gpt2": hf_gpt2,
}


def export(name: str, path: Path) -> None:
    import torch

    torch.manual_seed(0)
    model, (input_name, shape) = MODELS[name]()
    if input_name == "input_ids":
        example = torch.randint(0, 1000, shape)
        model.eval()
        training = torch.onnx.TrainingMode.EVAL
    else:
        example = torch.randn(shape)
        model.train()
        training = torch.onnx.TrainingMode.TRAINING
    torch.onnx.export(
        model, (example,), str(path), input_names=[input_name], training=training,
        do_constant_folding=False, opset_version=17, dynamo=False,
        dynamic_axes={input_name: {0: "batch"}},
    )
    import onnx

    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))


def evaluate(path: Path, batch_size: int) -> dict:
    start = time.perf_counter()
    analysis = onnxinit.analyze(path, batch_size=batch_size)
    analyze_s = time.perf_counter() - start
    measured = onnxinit.analyze(path, batch_size=batch_size, measure=True)
    graph = measured.graph
    from onnxinit.runtime import make_session

    session = make_session(str(path), device="cpu")
    feeds = synthetic_feeds(graph)
    start = time.perf_counter()
    session.run(None, feeds)
    forward_s = time.perf_counter() - start
    errors = np.array([t.relative_error for t in measured.tensors if t.relative_error is not None])
    ratios = np.array([max(t.var, t.measured_var) / max(min(t.var, t.measured_var), 1e-30)
                       for t in measured.tensors if t.measured_var is not None])
    fallback_ops = sorted({f"{f.op}({f.kind})" for f in measured.propagation.fallbacks})
    return {
        "nodes": len(graph.order),
        "tensors": len(errors),
        "within_10pct": float(np.mean(errors < 0.10)),
        "within_2x": float(np.mean(ratios <= 2.0)),
        "worst_ratio": float(ratios.max()),
        "median_error": float(np.median(errors)),
        "fallbacks": fallback_ops,
        "analyze_vs_forward": analyze_s / max(forward_s, 1e-9),
        "output_var": analysis.tensors[-1].var,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / f"{name}.onnx"
            try:
                export(name, path)
            except Exception as exc:  # noqa: BLE001 - a model the installed exporter cannot handle
                print(f"{name:20} export failed: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            r = evaluate(path, args.batch_size)
            print(
                f"{name:20} nodes {r['nodes']:5}  tensors {r['tensors']:5}  "
                f"within 10% {100 * r['within_10pct']:5.1f}%  within 2x {100 * r['within_2x']:5.1f}%  "
                f"median err {100 * r['median_error']:5.1f}%  worst ratio {r['worst_ratio']:6.3g}  "
                f"analyze/forward {r['analyze_vs_forward']:6.1f}x  "
                f"fallbacks: {', '.join(r['fallbacks']) or 'none'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
