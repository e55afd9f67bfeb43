"""Every command on architectures the README's tables do not list: torchvision classifiers,
segmentation and detection backbones, video networks, and Hugging Face models built from config
objects (random initialization, nothing downloaded; eager attention), exported by the
TorchScript exporter in training mode (``--mode eval``: eval mode with constant folding, which
folds BatchNorm into the convolutions). For each: ``analyze`` (CPU seconds, non-finite
predictions), the variance of every float activation against onnxruntime at batch 8
(``tests/real/compare``), ``check`` and ``rescale --method autoinit`` through the real entry
point (exit status, any traceback), and the rescaled model analysed again.

    python benchmarks/unseen_exports.py                          # every model, training mode
    python benchmarks/unseen_exports.py --models gemma,mamba --mode eval

Each model runs in a subprocess with a time limit, so an export the exporter refuses is a row
with its error. Exports go to ``ONNXINIT_EXPORT_CACHE`` when set (a temporary folder
otherwise). One JSON line per model on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # tests.real; an onnxinit on PYTHONPATH comes first

_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             vocab_size=512)
_SEQ2SEQ = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                vocab_size=512, max_position_embeddings=64, pad_token_id=1,
                decoder_start_token_id=2)
_AUDIO = dict(_TEXT, mask_time_prob=0.0, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2),
              conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
              num_conv_pos_embedding_groups=4)
_STAGES = dict(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1])

# name: ("torchvision", builder name, input shape, keywords, wrapper)
#     | ("hf", config class, model class, input kind, input shape, vocabulary, config keywords)
TORCHVISION = {
    "regnet_x_400mf": ("models", (3, 64, 64), {}), "regnet_y_800mf": ("models", (3, 64, 64), {}),
    "efficientnet_v2_m": ("models", (3, 64, 64), {}), "vgg16_bn": ("vgg", (3, 64, 64), {}),
    "shufflenet_v2_x2_0": ("models", (3, 64, 64), {}), "convnext_base": ("models", (3, 64, 64), {}),
    "swin_s": ("models", (3, 64, 64), {}), "vit_b_32": ("models", (3, 64, 64), {"image_size": 64}),
    "mobilenet_v2": ("models", (3, 64, 64), {}), "mobilenet_v3_large": ("models", (3, 64, 64), {}),
    "wide_resnet50_2": ("models", (3, 64, 64), {}), "densenet201": ("models", (3, 64, 64), {}),
    "inception_v3": ("models", (3, 96, 96), {"aux_logits": False, "init_weights": True}),
    "fcn_resnet50": ("segmentation", (3, 64, 64), {}),
    "deeplabv3_mobilenet_v3_large": ("segmentation", (3, 64, 64), {}),
    "lraspp_mobilenet_v3_large": ("segmentation", (3, 64, 64), {}),
    "retinanet_resnet50_fpn": ("detection", (3, 64, 64), {}),
    "fcos_resnet50_fpn": ("detection", (3, 64, 64), {}),
    "resnext101_64x4d": ("models", (3, 64, 64), {}),
    "r3d_18": ("video", (3, 8, 64, 64), {}), "r2plus1d_18": ("video", (3, 8, 64, 64), {}),
    "squeezenet1_1": ("models", (3, 64, 64), {}), "googlenet": ("models", (3, 64, 64),
                                                                  {"aux_logits": False, "init_weights": True}),
    "shufflenet_v2_x0_5": ("models", (3, 64, 64), {}), "mnasnet0_5": ("models", (3, 64, 64), {}),
    "regnet_y_1_6gf": ("models", (3, 64, 64), {}), "efficientnet_b3": ("models", (3, 64, 64), {}),
    "resnet101": ("models", (3, 64, 64), {}), "convnext_small": ("models", (3, 64, 64), {}),
    "swin_v2_t": ("models", (3, 64, 64), {}),
}
HF = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model", "audio", (1600,), 0, _AUDIO),
    "hubert": ("HubertConfig", "HubertModel", "audio", (1600,), 0, _AUDIO),
    "hf_convnext": ("ConvNextConfig", "ConvNextModel", "pixels", (3, 64, 64), 0, _STAGES),
    "hf_resnet": ("ResNetConfig", "ResNetModel", "pixels", (3, 64, 64), 0,
                  dict(_STAGES, embedding_size=32)),
    "mobilevit": ("MobileViTConfig", "MobileViTModel", "pixels", (3, 64, 64), 0,
                  dict(image_size=64)),
    "levit": ("LevitConfig", "LevitModel", "pixels", (3, 64, 64), 0, dict(image_size=64)),
    "poolformer": ("PoolFormerConfig", "PoolFormerModel", "pixels", (3, 64, 64), 0, _STAGES),
    "segformer": ("SegformerConfig", "SegformerModel", "pixels", (3, 64, 64), 0,
                  dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])),
    "deberta_v3": ("DebertaV2Config", "DebertaV2Model", "ids", (32,), 512,
                   dict(_TEXT, max_position_embeddings=64)),
    "longformer": ("LongformerConfig", "LongformerModel", "ids", (32,), 512,
                   dict(_TEXT, attention_window=8, max_position_embeddings=80)),
    "bigbird": ("BigBirdConfig", "BigBirdModel", "ids", (32,), 512,
                dict(_TEXT, attention_type="original_full", max_position_embeddings=64)),
    "funnel": ("FunnelConfig", "FunnelModel", "ids", (32,), 512,
               dict(d_model=64, n_head=4, d_head=16, d_inner=128, block_sizes=[1, 1],
                    num_decoder_layers=1, vocab_size=512)),
    "xlnet": ("XLNetConfig", "XLNetModel", "ids", (32,), 512,
              dict(d_model=64, n_layer=2, n_head=4, d_inner=128, vocab_size=512)),
    "pegasus": ("PegasusConfig", "PegasusModel", "seq2seq", (32,), 512, _SEQ2SEQ),
    "marian": ("MarianConfig", "MarianModel", "seq2seq", (32,), 512, _SEQ2SEQ),
    "mbart": ("MBartConfig", "MBartModel", "seq2seq", (32,), 512, _SEQ2SEQ),
    "blenderbot_small": ("BlenderbotSmallConfig", "BlenderbotSmallModel", "seq2seq", (32,), 512,
                         _SEQ2SEQ),
    "t5": ("T5Config", "T5Model", "seq2seq", (32,), 512,
           dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=512,
                decoder_start_token_id=0)),
    "electra": ("ElectraConfig", "ElectraModel", "ids", (32,), 512,
                dict(_TEXT, embedding_size=32, max_position_embeddings=64)),
    "albert": ("AlbertConfig", "AlbertModel", "ids", (32,), 512,
               dict(_TEXT, embedding_size=32, max_position_embeddings=64)),
    "opt": ("OPTConfig", "OPTModel", "ids", (32,), 512,
            dict(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                 vocab_size=512, word_embed_proj_dim=64, max_position_embeddings=64)),
    "falcon": ("FalconConfig", "FalconModel", "ids", (32,), 512,
               dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=512)),
    "distilbert": ("DistilBertConfig", "DistilBertModel", "ids", (32,), 512,
                   dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=512,
                        max_position_embeddings=64)),
    "deit": ("DeiTConfig", "DeiTModel", "pixels", (3, 32, 32), 0,
             dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, image_size=32, patch_size=4)),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeModel", "ids", (32,), 512,
                    dict(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=64)),
    "gemma": ("GemmaConfig", "GemmaModel", "ids", (32,), 512,
              dict(_TEXT, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)),
    "mamba": ("MambaConfig", "MambaModel", "ids", (32,), 512,
              dict(hidden_size=64, state_size=8, num_hidden_layers=2, vocab_size=512)),
    "mixtral": ("MixtralConfig", "MixtralModel", "ids", (32,), 512,
                dict(_TEXT, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                     max_position_embeddings=64)),
    "reformer": ("ReformerConfig", "ReformerModel", "ids", (32,), 320,
                 dict(hidden_size=64, num_attention_heads=2, attention_head_size=32,
                      feed_forward_size=128, attn_layers=["local", "local"],
                      axial_pos_shape=[4, 8], axial_pos_embds_dim=[32, 32],
                      max_position_embeddings=32, local_attn_chunk_length=8, vocab_size=320)),
}
_OUTPUT = {"seq2seq": lambda m, x: m(input_ids=x, decoder_input_ids=x).last_hidden_state,
           "ids": lambda m, x: m(input_ids=x).last_hidden_state,
           "pixels": lambda m, x: m(pixel_values=x).last_hidden_state,
           "audio": lambda m, x: m(x).last_hidden_state}


def build(name: str):
    """(module, input shape without the batch axis, vocabulary: 0 for float inputs)."""
    import torch

    class Output(torch.nn.Module):  # a plain tensor out of a ModelOutput or a dict
        def __init__(self, model, fn):
            super().__init__()
            self.model, self.fn = model, fn

        def forward(self, x):
            return self.fn(self.model, x)

    if name in HF:
        import transformers

        config_class, model_class, kind, shape, vocab, keywords = HF[name]
        config = getattr(transformers, config_class)(**keywords)
        config._attn_implementation = "eager"
        return Output(getattr(transformers, model_class)(config), _OUTPUT[kind]), shape, vocab
    import torchvision

    family, shape, keywords = TORCHVISION[name]
    if family == "vgg":  # below 224 the 7x7 adaptive pool upsamples, which the exporter refuses
        model = getattr(torchvision.models, name)(weights=None)
        model.avgpool = torch.nn.Identity()
        model.classifier[0] = torch.nn.Linear(512 * (shape[1] // 32) ** 2, 4096)
        return model, shape, 0
    module = torchvision.models if family == "models" else getattr(torchvision.models, family)
    if family == "segmentation":
        model = getattr(module, name)(weights=None, weights_backbone=None, **keywords)
        return Output(model, lambda m, x: m(x)["out"]), shape, 0
    if family == "detection":  # the backbone and FPN (the heads take targets in training)
        model = getattr(module, name)(weights=None, weights_backbone=None, **keywords)
        return Output(model.backbone, lambda m, x: m(x)["0"]), shape, 0
    return getattr(module, name)(weights=None, **keywords), shape, 0


def export(name: str, mode: str, path: Path) -> None:
    import onnx
    import torch

    torch.manual_seed(0)
    module, shape, vocab = build(name)
    module.train(mode == "train")
    example = torch.randint(0, vocab, (2, *shape)) if vocab else torch.randn(2, *shape)
    input_name = "input_ids" if vocab else "x"
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(tmp), input_names=[input_name],
                          training=(torch.onnx.TrainingMode.TRAINING if mode == "train"
                                    else torch.onnx.TrainingMode.EVAL),
                          do_constant_folding=mode == "eval", dynamo=False, opset_version=17,
                          dynamic_axes={input_name: {0: "batch"}})
    proto = onnx.load(str(tmp))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))
    tmp.unlink()


def _cli(args) -> tuple[object, str]:
    """(exit status or "traceback", the last lines of its output)."""
    from onnxinit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - what the probe looks for
            return "traceback", traceback.format_exc()[-600:]
    return code, " | ".join((out.getvalue() + err.getvalue()).strip().splitlines()[-2:])[:400]


def probe(name: str, mode: str, folder: Path) -> dict:
    import numpy as np

    import onnxinit
    from tests.real.compare import compare

    row: dict = {"model": name, "mode": mode}
    path = folder / f"{name}_{mode}.onnx"
    if not path.exists():
        try:
            export(name, mode, path)
        except Exception as exc:  # noqa: BLE001 - the exporter's own errors
            row["export_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            return row
    try:
        start = time.process_time()
        analysis = onnxinit.analyze(path, batch_size=8)
        row["analyze_cpu_s"] = round(time.process_time() - start, 1)
        row["tensors"] = len(analysis.tensors)
        row["non_finite"] = [t.name for t in analysis.tensors
                             if not (np.isfinite(t.mean) and np.isfinite(t.var))][:5]
        found = compare(path, batch_size=8, runs=2,
                        predicted={t.name: t.var for t in analysis.tensors})
        row.update(within_10=round(100 * found.within_10, 1),
                   within_2x=round(100 * found.within_2x, 1), worst=found.worst(3))
    except Exception as exc:  # noqa: BLE001 - a row, not the end of the probe
        row["analyze_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    start = time.process_time()
    row["check"] = _cli(["check", path, "--batch-size", "8"])
    row["check_cpu_s"] = round(time.process_time() - start, 1)
    rescaled = folder / f"{name}_{mode}.autoinit.onnx"
    row["rescale"] = _cli(["rescale", path, "--method", "autoinit", "-o", rescaled,
                           "--batch-size", "8"])
    if rescaled.exists():
        after = onnxinit.analyze(rescaled, batch_size=8)
        row["rescaled_output_var"] = float(after.tensors[-1].var)
        rescaled.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join([*TORCHVISION, *HF]))
    parser.add_argument("--mode", choices=["train", "eval"], default="train")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from tests.real.exports import export_directory

    folder = export_directory("onnxinit-unseen-")
    if args.one:
        print(json.dumps(probe(args.one, args.mode, folder)), flush=True)
        return
    env = {**os.environ, "ONNXINIT_EXPORT_CACHE": str(folder)}
    for name in args.models.split(","):
        try:
            done = subprocess.run([sys.executable, __file__, "--one", name, "--mode", args.mode],
                                  capture_output=True, text=True, timeout=args.timeout, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            print(lines[-1] if lines else json.dumps(
                {"model": name, "error": done.stderr.strip().splitlines()[-1:]}), flush=True)
        except subprocess.TimeoutExpired:
            print(json.dumps({"model": name, "error": f"over {args.timeout} s"}), flush=True)


if __name__ == "__main__":
    main()
