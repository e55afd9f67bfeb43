"""``check`` with its defaults on the standard networks as their users export them: torchvision
models at 224x224 (batch 1, 1000 classes, default init) and Hugging Face bert-base and GPT-2
(12 layers, 768 wide, 128 tokens, batch 1), in training mode; the ResNets without normalization
at the same size. No training: these complement ``gate_calibration.py`` (whose networks are
digits classifiers small enough to train on a CPU) at the size the gate meets in practice.

    python benchmarks/gate_native.py                       # every network
    python benchmarks/gate_native.py --models resnet50_nonorm,swin_t

Results are cached in ``benchmarks/results/gate_native.json`` per network and onnxinit source
hash; the table is printed at the end.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gate_calibration  # noqa: E402

NATIVE_FILE = gate_calibration.RESULTS / "gate_native.json"
TORCHVISION = ("resnet18", "vgg11_bn", "densenet121", "regnet_y_400mf", "squeezenet1_0", "vgg11",
               "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small", "swin_t", "vit_b_16")
BROKEN = {"resnet50_nonorm": "resnet50", "resnet152_nonorm": "resnet152"}
HUGGING_FACE = ("bert_base", "gpt2")


def build(name: str):
    """(module, example input, input name) with seed 0."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name in HUGGING_FACE:
        import transformers

        if name == "bert_base":
            config = transformers.BertConfig(attn_implementation="eager")
            backbone = transformers.BertModel(config)
        else:
            config = transformers.GPT2Config(attn_implementation="eager")
            backbone = transformers.GPT2Model(config)

        class Hidden(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = backbone

            def forward(self, input_ids):
                return self.backbone(input_ids=input_ids).last_hidden_state

        ids = torch.randint(0, config.vocab_size, (1, 128),
                            generator=torch.Generator().manual_seed(0))
        return Hidden(), ids, "input_ids"
    import torchvision

    if name in BROKEN:
        module = getattr(torchvision.models, BROKEN[name])(
            weights=None, norm_layer=lambda channels: nn.Identity())
    else:
        module = getattr(torchvision.models, name)(weights=None)
    return module, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)), "x"


def export(module, example, input_name: str):
    import onnx
    import torch

    buffer = io.BytesIO()
    module.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                          input_names=[input_name], output_names=["out"])
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = min(model.ir_version, 10)
    return model


def check_native(name: str) -> dict:
    start = time.perf_counter()
    model = export(*build(name))
    return {**gate_calibration.check_export(model),
            "export_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    names = [*TORCHVISION, *HUGGING_FACE, *BROKEN]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(names))
    parser.add_argument("--table", action="store_true", help="print the cached table only")
    args = parser.parse_args()
    chosen = [n for n in args.models.split(",") if n]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        parser.error(f"unknown networks: {', '.join(unknown)}")
    gate_calibration.torch_threads()
    cache = gate_calibration._load(NATIVE_FILE)
    version = gate_calibration.sources_hash()
    for name in [] if args.table else chosen:
        if cache.get(name, {}).get("sources") == version:
            continue
        try:
            cache[name] = {**check_native(name), "sources": version}
        except Exception as exc:  # noqa: BLE001 - record it, go on with the others
            print(f"{name}: check failed to run: {type(exc).__name__}: {exc}", flush=True)
            continue
        r = cache[name]
        print(f"{name}: {'passed' if r['passed'] else 'FAILED'} {' '.join(r['rules'])} "
              f"({r['export_seconds'] + r['check_seconds']:.0f} s)", flush=True)
        gate_calibration._save(NATIVE_FILE, cache)
    rows = ["| network (native size) | expected | check | findings (errors, warnings) | "
            "max growth | min signal |", "| --- | --- | --- | --- | --- | --- |"]
    for name in chosen:
        if name not in cache:
            continue
        r = cache[name]
        fired = sorted({x.split(":")[0] for x in r["rules"] if not x.endswith(":note")})
        notes = sum(x.endswith(":note") for x in r["rules"])
        rows.append(f"| {name} | {'fail' if name in BROKEN else 'pass'} | "
                    f"{'pass' if r['passed'] else '**FAIL**'} | {', '.join(fired) or '-'}"
                    f"{f' (+{notes} notes)' if notes else ''} | {r['max_growth']:.3g} | "
                    f"{r['min_signal']:.3g} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
