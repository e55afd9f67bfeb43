"""Export torchvision and Hugging Face models with torch.onnx's default (dynamo) exporter, as many
users do: random initialization (``torch.manual_seed(SEED)``), nothing downloaded. The
exporter's optimizer folds every BatchNormalization into the Conv before it (in training mode
too), so the graphs are convnets without normalization: the case ``benchmarks/real_exports.py
--onnx`` then measures.

    pip install torch==2.14.1 torchvision onnxscript
    python benchmarks/dynamo_exports.py OUT_DIR mobilenet_v3_small mnasnet1_0 vit_b_16@1
    python benchmarks/dynamo_exports.py OUT_DIR resnet50:train hf_bert:train:noopt hf_t5
    python benchmarks/real_exports.py --onnx OUT_DIR/mobilenet_v3_small_s0.onnx,... --runs 2 \
        --before CHECKOUT

``NAME[@SEED][:train][:noopt]``: ``@SEED`` picks the seed (default 0); ``:train`` exports with
``training=TrainingMode.TRAINING`` from ``train()`` mode (eval mode otherwise); ``:noopt``
passes ``optimize=False`` (the BatchNormalization nodes stay). Images are 64x64 (224x224 for
ViT and MaxViT, whose patch grids need it); ``hf_bert``, ``hf_gpt2``, ``hf_llama``, ``hf_vit``,
``hf_t5`` are ``benchmarks/hf_sizes.py``'s small configurations with transformers' default
(SDPA) attention, fed ``hf_sizes``' token ids or images (T5: the same ids as the decoder's). The
batch axis is dynamic; weights go to external data next to the file. Files are named
``NAME_sSEED[_train][_noopt].onnx`` and kept when they exist.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_sizes import DECODER, IMAGE, TEXT, TOKENS, VISION  # noqa: E402  (this script's folder)

_T5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=512)
# name: (config class, model class, config keywords, (input shape, input name, vocabulary))
HF = {
    "hf_bert": ("BertConfig", "BertModel", TEXT, TOKENS),
    "hf_gpt2": ("GPT2Config", "GPT2Model",
                dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=512), TOKENS),
    "hf_llama": ("LlamaConfig", "LlamaModel", DECODER, TOKENS),
    "hf_vit": ("ViTConfig", "ViTModel", VISION, IMAGE),
    "hf_t5": ("T5Config", "T5Model", _T5, TOKENS),
}


def _hf(name: str):
    """(module taking the one input positionally and returning the last hidden state, example
    input, input name)."""
    import torch
    import transformers

    config_class, model_class, kwargs, (shape, input_name, vocab) = HF[name]
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs))

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            extra = {"decoder_input_ids": x} if name == "hf_t5" else {}
            return self.model(**{input_name: x}, **extra)[0]

    example = torch.randint(0, vocab, (2, *shape)) if vocab else torch.randn(2, *shape)
    return LastHiddenState(), example, input_name


def _torchvision(name: str):
    import torch
    import torchvision

    size = 224 if name in ("vit_b_16", "maxvit_t") else 64
    return (getattr(torchvision.models, name)(weights=None), torch.randn(2, 3, size, size), "x")


def export(spec: str, out: Path) -> Path:
    import torch

    name, *flags = spec.split(":")
    name, _, seed = name.partition("@")
    train, optimize = "train" in flags, "noopt" not in flags
    path = out / f"{name}_s{int(seed or 0)}{'_train' * train}{'_noopt' * (not optimize)}.onnx"
    if path.exists():
        return path
    torch.manual_seed(int(seed or 0))
    model, example, input_name = (_hf if name in HF else _torchvision)(name)
    model.train(train)
    mode = torch.onnx.TrainingMode.TRAINING if train else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(model, (example,), str(path), dynamo=True, training=mode,
                      optimize=optimize, input_names=[input_name],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    warnings.simplefilter("ignore")
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for arg in argv[1:]:
        try:
            print(export(arg, out), flush=True)
        except Exception as exc:  # noqa: BLE001 - a model the exporter refuses
            print(f"{arg}: export failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
