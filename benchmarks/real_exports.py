"""Prediction accuracy of `analyze` on real exports (issue 10's table): torchvision CNNs, Hugging
Face transformers, torch recurrent and MLP models, random initialization, nothing downloaded.

Each model is built and exported in training mode exactly as the README says
(``tests/real/exports.py``: TrainingMode.TRAINING, no constant folding, the TorchScript
exporter, IR version <= 10), then ``onnxinit.analyze`` predicts and onnxruntime measures
(``tests/real/compare.py``: batch 8 by default; models with random ops such as stochastic depth
are measured over several batches in one session and their mask tensors left out).

    pip install torch==2.14.1 torchvision==0.29.1 transformers
    python benchmarks/real_exports.py                      # every model, 224x224, batch 8
    python benchmarks/real_exports.py --models vgg11,resnet50_nonorm --batch-size 8

Columns per model: float activation tensors compared, the share within 10% of the measured variance and
within 2x, the median predicted/measured, coverage (tensors predicted) and the seconds analyze
took (load and propagation). ``--before CHECKOUT`` predicts the same exports a second time with
another onnxinit checkout (say ``/work/main``; run in a subprocess with that checkout first on
the path) and prints its row above this checkout's, measured against the same onnxruntime runs.

The measurement is onnxruntime running the training-mode export, which computes what PyTorch
computes in ``train()`` mode (batch statistics) with Dropout as the identity (the analysis's
semantics). ``--torch-check`` verifies that per model: the built module runs in ``train()`` mode
(Dropout modules in ``eval()``) on the first measured batch, every leaf module's output variance
is taken in a forward hook, and each is matched to the onnxruntime tensor of the same shape with
the nearest variance; the column prints the largest relative difference over the matched
outputs (float32 rounding: ~1e-6; models with random ops such as stochastic depth draw other
masks in PyTorch, so theirs is larger).

    python benchmarks/real_exports.py --models resnet50_nonorm --size 112 --before /work/main

``--seed N`` builds the models with torch's seed N instead of 0 (another draw of the weights;
docs/accuracy.md, "Other weight draws"). ``ONNXINIT_EXPORT_CACHE=DIR`` keeps the exports in DIR
(named by model, size and a seed other than 0) and reuses them.

    python benchmarks/real_exports.py --models resnet18,gpt2 --seed 1

``--onnx FILE,...`` compares exports made elsewhere instead (say Keras applications exported by
tf2onnx, ``benchmarks/keras_applications.py``), measured over ``--runs`` batches (default 1).

    python benchmarks/real_exports.py --onnx kapps/mobilenetv3small.onnx --runs 16 \
        --before /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.real import exports  # noqa: E402
from tests.real.compare import compare  # noqa: E402
from tests.real.sequence import last_hidden_state  # noqa: E402


def hf_bert(seq: int):
    from transformers import BertConfig, BertModel

    return last_hidden_state(BertModel(BertConfig())), (seq,)


def hf_gpt2(seq: int):
    from transformers import GPT2Config, GPT2Model

    # eager attention: the SDPA path does not export with the TorchScript exporter
    return last_hidden_state(GPT2Model(GPT2Config(attn_implementation="eager"))), (seq,)


def hf_bloom(seq: int):
    from transformers import BloomConfig, BloomModel

    # the default configuration: 2 layers, hidden 64, 8 heads with ALiBi
    return last_hidden_state(BloomModel(BloomConfig(attn_implementation="eager"))), (seq,)


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
    "mobilenet_v3_small": (exports.BUILDERS["mobilenet_v3_small"], 224, 8, 0),
    "mobilenet_v3_large": (exports.BUILDERS["mobilenet_v3_large"], 224, 8, 0),
    "resnet18": (exports.BUILDERS["resnet18"], 224, 1, 0),
    "vgg11_bn": (exports.BUILDERS["vgg11_bn"], 224, 1, 0),
    "densenet121": (exports.BUILDERS["densenet121"], 224, 1, 0),
    "convnext_tiny": (exports.BUILDERS["convnext_tiny"], 224, 8, 0),
    "regnet_y_400mf": (exports.BUILDERS["regnet_y_400mf"], 224, 1, 0),
    "vit_b_16": (exports.BUILDERS["vit_b_16"], 224, 1, 0),
    "swin_t": (exports.BUILDERS["swin_t"], 224, 1, 0),
    "bert_base": (hf_bert, 128, 1, 30522),
    "gpt2": (hf_gpt2, 128, 1, 50257),
    "googlenet": (exports.BUILDERS["googlenet"], 224, 1, 0),
    "mobilenet_v2": (exports.BUILDERS["mobilenet_v2"], 224, 1, 0),
    "mnasnet1_0": (exports.BUILDERS["mnasnet1_0"], 224, 1, 0),
    "shufflenet_v2_x1_0": (exports.BUILDERS["shufflenet_v2_x1_0"], 224, 1, 0),
    "squeezenet1_1": (exports.BUILDERS["squeezenet1_1"], 224, 1, 0),
    "resnext50_32x4d": (exports.BUILDERS["resnext50_32x4d"], 224, 1, 0),
    "efficientnet_v2_s": (exports.BUILDERS["efficientnet_v2_s"], 224, 8, 0),
    "swin_v2_t": (exports.BUILDERS["swin_v2_t"], 224, 8, 0),
    "maxvit_t": (exports.BUILDERS["maxvit_t"], 224, 8, 0),
    "bloom": (hf_bloom, 128, 1, 250880),
    # stop 40's sweep at 224 (299 for Inception V3); 8 batches where stochastic depth draws
    **{name: (exports.BUILDERS[name], 224, 1, 0) for name in (
        "squeezenet1_0", "shufflenet_v2_x0_5", "shufflenet_v2_x2_0", "mnasnet0_5", "mnasnet1_3",
        "alexnet", "regnet_x_400mf", "regnet_y_800mf", "regnet_x_1_6gf", "resnet34", "resnet101",
        "wide_resnet50_2", "densenet169", "vit_b_32", "vgg16_bn")},
    **{name: (exports.BUILDERS[name], 224, 8, 0) for name in (
        "efficientnet_b1", "efficientnet_b2", "convnext_small", "efficientnet_v2_m")},
    "swin_s": (exports.BUILDERS["swin_s"], 224, 4, 0),
    "inception_v3": (exports.BUILDERS["inception_v3"], 299, 1, 0),
    # decoders: ConvTranspose and upsampling of correlated maps (tests/real/decoders.py)
    **{name: (exports.BUILDERS[name], size, 8, 0) for name, size in (
        ("dcgan", 1), ("dcgan_nonorm", 1), ("autoencoder", 32), ("unet_transpose", 32),
        ("unet_nearest", 32), ("unet_bilinear", 32), ("fcn8s", 64))},
    # stop 41: video classifiers on 8 frames of 64x64 (S3D's final pool global below 16x224x224,
    # MViT built for that input: tests/real/exports._video) and segmentation heads at 128x128,
    # 8 measured batches; Swin3D-T held 4.4 GB at batch 8 (docs/accuracy.md: batch 4 there)
    **{name: (exports.BUILDERS[name], 64, 8, 0) for name in (
        "r3d_18", "mc3_18", "r2plus1d_18", "s3d", "swin3d_t", "mvit_v2_s")},
    **{name: (exports.BUILDERS[name], 128, 8, 0) for name in (
        "fcn_resnet50", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50")},
    # GroupNorm: ResNet-18 with GroupNorm(8), diffusion-style blocks (nn.GroupNorm, hand-written)
    "resnet18_gn": (exports.BUILDERS["resnet18_gn"], 64, 8, 0),
    "gn_blocks": (exports.BUILDERS["gn_blocks"], 32, 8, 0),
    "gn_blocks_handwritten": (exports.BUILDERS["gn_blocks_handwritten"], 32, 8, 0),
    # one batch of 8 x 64 values gives each variance a sampling error of about 6%
    "tanh_mlp50": (mlp("tanh"), 0, 16, 0),
    "selu_mlp50": (mlp("selu"), 0, 16, 0),
}


def export(name: str, directory: Path, size: int | None = None, seed: int = 0):
    """(path of the training-mode export, the module it came from); ``size`` overrides the
    input size of image models, ``seed`` is torch's seed for the weights. The file is
    ``{name}_{size}.onnx`` (``_seed{seed}`` added for a seed other than 0), reused when
    ``directory`` already holds it (``ONNXINIT_EXPORT_CACHE``)."""
    import torch

    builder, default, _, vocab = MODELS[name]
    size = size if size and name in exports.BUILDERS else default
    torch.manual_seed(seed)
    module, shape = builder(size)
    path = directory / f"{name}_{size}{f'_seed{seed}' if seed else ''}.onnx"
    if not path.exists():
        input_name = "input_ids" if vocab else "x"
        exports.export_module(module, shape, path, input_name=input_name, integer_input=vocab)
    return path, module

_PREDICT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import onnxinit
start = time.perf_counter()
analysis = onnxinit.analyze(sys.argv[2], batch_size=int(sys.argv[3]))
seconds = time.perf_counter() - start
json.dump({"seconds": seconds, "var": {t.name: t.var for t in analysis.tensors}},
          open(sys.argv[4], "w"))
"""


def predict_with(checkout: str, path: Path, batch_size: int) -> tuple[dict[str, float], float]:
    """Predicted variances of ``path`` by the onnxinit in ``checkout`` (a subprocess), and the
    seconds its analyze took."""
    with tempfile.TemporaryDirectory() as scratch:  # path's folder may be read-only
        out = Path(scratch) / f"{path.stem}.before.json"
        subprocess.run([sys.executable, "-c", _PREDICT, checkout, str(path), str(batch_size),
                        str(out)], check=True, env={**os.environ, "PYTHONPATH": checkout})
        data = json.loads(out.read_text())
    return {k: (float("nan") if v is None else v) for k, v in data["var"].items()}, data["seconds"]


def torch_check(module, graph_path: Path, first: dict, batch_size: int) -> float:
    """Largest relative difference between PyTorch's train()-mode variance at each leaf
    module's output and the onnxruntime tensor of the same shape nearest to it, on the same
    batch (the first measured one)."""
    import torch

    from onnxinit.feeds import synthetic_feeds
    from onnxinit.graph import load

    graph = load(graph_path, batch_size=batch_size)
    (feed,) = synthetic_feeds(graph, rng=np.random.default_rng(0)).values()
    seen: list[tuple[tuple[int, ...], float]] = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            seen.append((tuple(output.shape), float(output.double().var(unbiased=False))))

    module.train()
    handles = []
    for sub in module.modules():
        if isinstance(sub, torch.nn.Dropout):
            sub.eval()
        if not list(sub.children()):
            handles.append(sub.register_forward_hook(hook))
    with torch.no_grad():
        module(torch.from_numpy(feed))
    for handle in handles:
        handle.remove()
    by_shape: dict[tuple[int, ...], list[float]] = {}
    for shape, var in first.values():
        by_shape.setdefault(tuple(shape), []).append(var)
    worst = 0.0
    for shape, var in seen:
        candidates = by_shape.get(shape)
        if not candidates or var <= 0:
            continue
        worst = max(worst, min(abs(c - var) for c in candidates) / var)
    return worst


def _row(label: str, r, extra: str = "") -> str:
    worst = max(r.rows, key=lambda row: row.ratio)
    return (f"{label:28} {len(r.rows):7} {100 * r.within_10:9.1f}% {100 * r.within_2x:8.1f}% "
            f"{r.median_ratio:9.3f} {100 * r.coverage:7.1f}% {r.analyze_s:9.2f} {extra:>9}  "
            f"{worst.ratio:.3g}x {worst.op}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=None,
                        help="input size of the image models (default 224)")
    parser.add_argument("--before", default=None, metavar="CHECKOUT",
                        help="another onnxinit checkout to predict with too (e.g. /work/main)")
    parser.add_argument("--torch-check", action="store_true",
                        help="check the onnxruntime measurements against PyTorch train()")
    parser.add_argument("--onnx", default=None, metavar="FILE,...",
                        help="compare these ONNX files instead of building models")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch's seed for the built models' weights (default 0)")
    parser.add_argument("--runs", type=int, default=None,
                        help="batches measured per model (default: the model's own count; "
                             "1 per --onnx file)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"{'model':28} {'tensors':>7} {'within 10%':>10} {'within 2x':>9} {'pred/meas':>9} "
          f"{'coverage':>8} {'analyze s':>9} {'torch':>9}  worst", flush=True)
    if args.onnx:
        for file in args.onnx.split(","):
            path, name = Path(file), Path(file).stem
            runs = args.runs or 1
            r = compare(path, batch_size=args.batch_size, runs=runs)
            if args.before:
                predicted, seconds = predict_with(args.before, path, args.batch_size)
                b = compare(path, batch_size=args.batch_size, runs=runs,
                            predicted=predicted, analyze_s=seconds)
                print(_row(f"{name} (before)", b), flush=True)
            print(_row(name, r), flush=True)
        return
    for name in args.models.split(","):
        try:
            path, module = export(name, exports.export_directory(), args.size, args.seed)
        except Exception as exc:  # noqa: BLE001 - a model the installed exporter refuses
            print(f"{name:28} export failed: {type(exc).__name__}: {str(exc)[:100]}")
            continue
        runs = args.runs or MODELS[name][2]
        first: dict = {}
        r = compare(path, batch_size=args.batch_size, runs=runs, first=first)
        check = (f"{torch_check(module, path, first, args.batch_size):.1e}"
                 if args.torch_check else "")
        if args.before:
            predicted, seconds = predict_with(args.before, path, args.batch_size)
            b = compare(path, batch_size=args.batch_size, runs=runs, predicted=predicted,
                        analyze_s=seconds)
            print(_row(f"{name} (before)", b), flush=True)
        print(_row(name, r, check), flush=True)


if __name__ == "__main__":
    main()
