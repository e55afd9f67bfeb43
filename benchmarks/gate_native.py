"""``check`` with its defaults on the standard networks as their users export them: torchvision
models (1000 classes, default init), Hugging Face models built from config objects, and
``nn.LSTM``/``nn.GRU`` classifiers, in training mode; the ResNets without normalization at the
same size. No training: these complement ``gate_calibration.py`` (whose networks are digits
classifiers small enough to train on a CPU) at the size the gate meets in practice.

    python benchmarks/gate_native.py                       # every network, 224x224, batch 1
    python benchmarks/gate_native.py --models resnet50_nonorm,swin_t
    python benchmarks/gate_native.py --batch-size 8        # exported at batch 8 instead of 1
    python benchmarks/gate_native.py --size 64             # images at 64x64 instead of 224x224
    python benchmarks/gate_native.py --table --variants b1,b8,b1@s64,b8@s64   # all four, cached

Results are cached in ``benchmarks/results/gate_native.json`` per network, variant and onnxinit
source hash (keys ``name``, ``name@b8``, ``name@s64``, ``name@b8@s64``); the table is printed at
the end. Token and recurrent models have no image size: their ``@s64`` variants are not run.
An export PyTorch refuses (BatchNorm in training mode over one value per channel; a network
whose geometry needs a larger input) is recorded as such, not as a verdict.
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
# torchvision name -> keyword arguments (a callable of the image size where the size is one)
TORCHVISION = {
    "resnet18": {}, "vgg11_bn": {}, "densenet121": {}, "regnet_y_400mf": {}, "squeezenet1_0": {},
    "vgg11": {}, "convnext_tiny": {}, "efficientnet_b0": {}, "mobilenet_v3_small": {},
    "swin_t": {}, "vit_b_16": lambda size: {"image_size": size},
    "resnet34": {}, "resnext50_32x4d": {}, "wide_resnet50_2": {}, "mobilenet_v2": {},
    "mobilenet_v3_large": {}, "shufflenet_v2_x1_0": {}, "mnasnet0_5": {}, "efficientnet_b1": {},
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "maxvit_t": lambda size: {"input_size": (size, size)},
    "alexnet": {}, "vgg16": {}, "resnet50": {}, "efficientnet_v2_s": {}, "regnet_x_400mf": {},
    "squeezenet1_1": {},
}
BROKEN = {"resnet50_nonorm": "resnet50", "resnet152_nonorm": "resnet152"}
# Hugging Face: name -> (config class, model class, config keywords); 128 tokens
HUGGING_FACE = {
    "bert_base": ("BertConfig", "BertModel", {}),
    "gpt2": ("GPT2Config", "GPT2Model", {}),
    "distilbert": ("DistilBertConfig", "DistilBertModel", {}),
    "roberta": ("RobertaConfig", "RobertaModel", {}),
    "llama_4x512": ("LlamaConfig", "LlamaModel", {
        "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 256}),
    "t5_small_encoder": ("T5Config", "T5EncoderModel", {
        "d_model": 512, "d_ff": 2048, "num_layers": 6, "num_heads": 8, "d_kv": 64}),
}
# Hugging Face models with another input: ViT (pixels, the image size) and Whisper's encoder
# (log-mel features: 80 bins over 2 x max_source_positions frames)
HF_OTHER = ("vit_hf", "whisper_tiny_encoder")
# nn.LSTM / nn.GRU classifiers: 2 layers of 128 over 32 steps of 64 features
RECURRENT = {"lstm": "LSTM", "gru": "GRU"}
NAMES = [*TORCHVISION, *HUGGING_FACE, *HF_OTHER, *RECURRENT, *BROKEN]
SIZED = {*TORCHVISION, *BROKEN, "vit_hf"}


def _hugging_face(name: str, batch: int, size: int):
    import torch
    import transformers

    if name == "vit_hf":
        config = transformers.ViTConfig(image_size=size, attn_implementation="eager")
        model = transformers.ViTModel(config, add_pooling_layer=False)
        return (_keyword(model, "pixel_values"), _image(batch, size), "x")
    if name == "whisper_tiny_encoder":
        config = transformers.WhisperConfig(
            d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
            num_mel_bins=80, max_source_positions=250, attn_implementation="eager")
        model = transformers.models.whisper.modeling_whisper.WhisperEncoder(config)
        features = torch.randn(batch, 80, 500, generator=torch.Generator().manual_seed(0))
        return _keyword(model, "input_features"), features, "x"
    config_class, model_class, kwargs = HUGGING_FACE[name]
    config = getattr(transformers, config_class)(attn_implementation="eager", **kwargs)
    backbone = getattr(transformers, model_class)(config)
    ids = torch.randint(0, config.vocab_size, (batch, 128),
                        generator=torch.Generator().manual_seed(0))
    return last_hidden_state(backbone), ids, "input_ids"


def _keyword(model, keyword: str):
    """A module that passes its one positional input as ``keyword`` and returns the hidden
    states (transformers' forward takes keywords and returns a ModelOutput)."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(**{keyword: x}).last_hidden_state

    return LastHiddenState()


def _image(batch: int, size: int):
    import torch

    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _recurrent(kind: str, batch: int):
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, kind)(64, 128, 2, batch_first=True)
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    return Classifier(), torch.randn(batch, 32, 64,
                                     generator=torch.Generator().manual_seed(0)), "x"


def build(name: str, batch: int = 1, size: int = 224):
    """(module, example input of ``batch`` samples, input name) with seed 0."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name in HUGGING_FACE or name in HF_OTHER:
        return _hugging_face(name, batch, size)
    if name in RECURRENT:
        return _recurrent(RECURRENT[name], batch)
    import torchvision

    if name in BROKEN:
        module = getattr(torchvision.models, BROKEN[name])(
            weights=None, norm_layer=lambda channels: nn.Identity())
    else:
        kwargs = TORCHVISION[name]
        module = getattr(torchvision.models, name)(
            weights=None, **(kwargs(size) if callable(kwargs) else kwargs))
    return module, _image(batch, size), "x"


def cache_key(name: str, batch: int, size: int = 224) -> str:
    return name + (f"@b{batch}" if batch != 1 else "") + (f"@s{size}" if size != 224 else "")


def _parse(key: str) -> tuple[str, int, int]:
    name, *parts = key.split("@")
    batch = next((int(p[1:]) for p in parts if p.startswith("b")), 1)
    size = next((int(p[1:]) for p in parts if p.startswith("s")), 224)
    return name, batch, size


def check_native(key: str) -> dict:
    start = time.perf_counter()
    name, batch, size = _parse(key)
    try:
        module, example, input_name = build(name, batch, size)
        model = gate_models.export_training(module, example, input_name, output_name="out")
    except Exception as exc:  # noqa: BLE001 - PyTorch refuses some shapes: say so
        return {"export_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                "passed": None, "rules": [], "export_seconds": 0.0, "check_seconds": 0.0}
    return {**gate_calibration.check_export(model),
            "export_seconds": round(time.perf_counter() - start, 1)}


def _cell(r: dict | None, version: str) -> str:
    """The verdict, ``*`` when checked with other onnxinit sources than these."""
    if r is None:
        return ""
    if r.get("export_error"):
        return "no export"
    fired = sorted({x.split(":")[0][-3:] for x in r["rules"] if not x.endswith(":note")})
    notes = sum(x.endswith(":note") for x in r["rules"])
    verdict = "pass" if r["passed"] else "**FAIL** " + ",".join(fired)
    return verdict + (f" (+{notes} notes)" if notes else "") + (
        "" if r.get("sources") == version else "*")


def table(chosen: list[str], variants: list[str], cache: dict) -> str:
    head = ["network", "expected", *variants, "max growth (range)", "min signal (range)"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    version = gate_calibration.sources_hash()
    for name in chosen:
        cells, done = [], []
        for variant in variants:
            key = cache_key(name, *_variant(variant))
            if "@s" in key and name not in SIZED:
                cells.append("n/a")
                continue
            r = cache.get(key)
            cells.append(_cell(r, version))
            if r is not None and not r.get("export_error"):
                done.append(r)
        if not done:
            continue
        growth = [r["max_growth"] for r in done]
        signal = [r["min_signal"] for r in done]
        rows.append(f"| {name} | {'fail' if name in BROKEN else 'pass'} | " + " | ".join(cells)
                    + f" | {min(growth):.3g} - {max(growth):.3g} | "
                    f"{min(signal):.3g} - {max(signal):.3g} |")
    rows.append("\n(*: checked with earlier onnxinit sources)")
    return "\n".join(rows)


def _variant(text: str) -> tuple[int, int]:
    """``b8@s64`` -> (8, 64)."""
    _, batch, size = _parse("x@" + text)
    return batch, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(NAMES))
    parser.add_argument("--batch-size", type=int, default=1, help="the export's batch size")
    parser.add_argument("--size", type=int, default=224, help="image networks' input size")
    parser.add_argument("--variants", help="table columns, e.g. b1,b8,b1@s64 (default: the "
                        "one of --batch-size and --size)")
    parser.add_argument("--table", action="store_true", help="print the cached table only")
    args = parser.parse_args()
    chosen = [n for n in args.models.split(",") if n]
    unknown = [n for n in chosen if n not in NAMES]
    if unknown:
        parser.error(f"unknown networks: {', '.join(unknown)}")
    gate_calibration.torch_threads()
    keys = [cache_key(name, args.batch_size, args.size) for name in chosen
            if args.size == 224 or name in SIZED]
    cache = gate_calibration.check_missing([] if args.table else keys, check_native,
                                           NATIVE_FILE)
    variants = (args.variants or f"b{args.batch_size}@s{args.size}").split(",")
    print(table(chosen, variants, cache))


if __name__ == "__main__":
    main()
