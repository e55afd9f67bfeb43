"""``check`` with its defaults on the standard networks as their users export them: torchvision
models at 224x224 (batch 1, 1000 classes, default init) and Hugging Face bert-base and GPT-2
(12 layers, 768 wide, 128 tokens, batch 1), in training mode; the ResNets without normalization
at the same size. No training: these complement ``gate_calibration.py`` (whose networks are
digits classifiers small enough to train on a CPU) at the size the gate meets in practice.

    python benchmarks/gate_native.py                       # every network
    python benchmarks/gate_native.py --models resnet50_nonorm,swin_t
    python benchmarks/gate_native.py --batch-size 8        # exported at batch 8 instead of 1

Results are cached in ``benchmarks/results/gate_native.json`` per network and onnxinit source
hash (a batch other than 1 under ``name@bN``); the table is printed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gate_calibration  # noqa: E402
import gate_models  # noqa: E402

from tests.real.sequence import last_hidden_state  # noqa: E402

NATIVE_FILE = gate_calibration.RESULTS / "gate_native.json"
TORCHVISION = ("resnet18", "vgg11_bn", "densenet121", "regnet_y_400mf", "squeezenet1_0", "vgg11",
               "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small", "swin_t", "vit_b_16")
BROKEN = {"resnet50_nonorm": "resnet50", "resnet152_nonorm": "resnet152"}
HUGGING_FACE = ("bert_base", "gpt2")


def build(name: str, batch: int = 1):
    """(module, example input of ``batch`` samples, input name) with seed 0."""
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

        ids = torch.randint(0, config.vocab_size, (batch, 128),
                            generator=torch.Generator().manual_seed(0))
        return last_hidden_state(backbone), ids, "input_ids"
    import torchvision

    if name in BROKEN:
        module = getattr(torchvision.models, BROKEN[name])(
            weights=None, norm_layer=lambda channels: nn.Identity())
    else:
        module = getattr(torchvision.models, name)(weights=None)
    return module, torch.randn(batch, 3, 224, 224,
                               generator=torch.Generator().manual_seed(0)), "x"


def cache_key(name: str, batch: int) -> str:
    return name if batch == 1 else f"{name}@b{batch}"


def check_native(key: str) -> dict:
    start = time.perf_counter()
    name, _, batch = key.partition("@b")
    module, example, input_name = build(name, int(batch or 1))
    model = gate_models.export_training(module, example, input_name, output_name="out")
    return {**gate_calibration.check_export(model),
            "export_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    names = [*TORCHVISION, *HUGGING_FACE, *BROKEN]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(names))
    parser.add_argument("--batch-size", type=int, default=1, help="the export's batch size")
    parser.add_argument("--table", action="store_true", help="print the cached table only")
    args = parser.parse_args()
    chosen = [n for n in args.models.split(",") if n]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        parser.error(f"unknown networks: {', '.join(unknown)}")
    gate_calibration.torch_threads()
    keys = {name: cache_key(name, args.batch_size) for name in chosen}
    cache = gate_calibration.check_missing([] if args.table else list(keys.values()),
                                           check_native, NATIVE_FILE)
    rows = [f"| network (native size, batch {args.batch_size}) | expected | check | "
            "findings (errors, warnings) | max growth | min signal |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name in chosen:
        if keys[name] not in cache:
            continue
        r = cache[keys[name]]
        fired = sorted({x.split(":")[0] for x in r["rules"] if not x.endswith(":note")})
        notes = sum(x.endswith(":note") for x in r["rules"])
        rows.append(f"| {name} | {'fail' if name in BROKEN else 'pass'} | "
                    f"{'pass' if r['passed'] else '**FAIL**'} | {', '.join(fired) or '-'}"
                    f"{f' (+{notes} notes)' if notes else ''} | {r['max_growth']:.3g} | "
                    f"{r['min_signal']:.3g} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
