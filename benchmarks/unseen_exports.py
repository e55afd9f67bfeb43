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
    python benchmarks/unseen_exports.py --models gru_bi,einsum --exporter dynamo --opset 18
    python benchmarks/unseen_exports.py --models conv_decoder --opset 13 --batch1
    python benchmarks/unseen_exports.py --models einsum,mha_padding_weights --runs 8

``--exporter dynamo`` needs onnxscript; ``--batch1`` exports batch 1 with static shapes. The
torch modules (``gru_bi``, ``einsum``, ...) are in ``benchmarks/unseen_modules.py``.

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
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # tests.real; an onnxinit on PYTHONPATH comes first
sys.path.append(str(ROOT / "benchmarks"))
from unseen_modules import MODULES  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """How a model is exported: the exporter ("torchscript" or "dynamo"), the opset, and
    ``batch1``: batch 1 with static shapes instead of a dynamic batch axis."""
    exporter: str = "torchscript"
    opset: int = 17
    batch1: bool = False

    @property
    def tag(self) -> str:
        return f"{self.exporter}{self.opset}{'_b1' if self.batch1 else ''}"

_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             vocab_size=512)
_SEQ2SEQ = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                vocab_size=512, max_position_embeddings=64, pad_token_id=1,
                decoder_start_token_id=2)
_AUDIO = dict(_TEXT, mask_time_prob=0.0, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2),
              conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
              num_conv_pos_embedding_groups=4)
_VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               image_size=32, patch_size=4)
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
    # stop 32 (probe): more families and export variants
    "maxvit_t": ("models", (3, 224, 224), {}), "alexnet": ("models", (3, 224, 224), {}),
    "swin3d_t": ("video", (3, 4, 64, 64), {}),
    "mobilenet_v3_small": ("models", (3, 64, 64), {"width_mult": 0.75}),
    "mnasnet1_3": ("models", (3, 64, 64), {}),
    "ssdlite320_mobilenet_v3_large": ("detection", (3, 128, 128), {}),
    "raft_small": ("optical_flow", (6, 128, 128), {"num_flow_updates": 2}),
    "vit_h_14_narrow": ("vit", (3, 56, 56), dict(image_size=56, patch_size=14, num_layers=2,
                                                 num_heads=16, hidden_dim=1280, mlp_dim=5120)),
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
    # stop 32 (probe)
    "vitmae": ("ViTMAEConfig", "ViTMAEModel", "pixels", (3, 32, 32), 0,
               dict(_VISION, mask_ratio=0.75)),
    "yolos": ("YolosConfig", "YolosModel", "pixels", (3, 32, 32), 0,
              dict(_VISION, image_size=[32, 32], num_detection_tokens=10)),
    "data2vec_audio": ("Data2VecAudioConfig", "Data2VecAudioModel", "audio", (1600,), 0,
                       dict(_AUDIO, num_conv_pos_embeddings=5, num_conv_pos_embedding_groups=4)),
    "wavlm": ("WavLMConfig", "WavLMModel", "audio", (1600,), 0, dict(_AUDIO, num_buckets=32,
                                                                     max_bucket_distance=64)),
    "sew": ("SEWConfig", "SEWModel", "audio", (1600,), 0, dict(_AUDIO, squeeze_factor=2)),
    "perceiver": ("PerceiverConfig", "PerceiverModel", "perceiver", (32, 64), 0,
                  dict(num_latents=16, d_latents=64, d_model=64, num_blocks=1,
                       num_self_attends_per_block=2, num_self_attention_heads=4,
                       num_cross_attention_heads=4)),
    "clip": ("CLIPConfig", "CLIPModel", "clip", (32,), 512, dict(
        text_config=dict(_TEXT, max_position_embeddings=64),
        vision_config=dict(_VISION, image_size=32, patch_size=8), projection_dim=32)),
    "mobilebert": ("MobileBertConfig", "MobileBertModel", "ids", (32,), 512,
                   dict(_TEXT, embedding_size=32, intra_bottleneck_size=32,
                        true_hidden_size=32, num_feedforward_networks=2,
                        max_position_embeddings=64)),
    "canine": ("CanineConfig", "CanineModel", "ids", (32,), 512,
               dict(_TEXT, num_hash_buckets=64, local_transformer_stride=8,
                    downsampling_rate=4, max_position_embeddings=64)),
    "fnet": ("FNetConfig", "FNetModel", "ids", (32,), 512, dict(_TEXT, max_position_embeddings=64)),
    "granite_moe": ("GraniteMoeConfig", "GraniteMoeModel", "ids", (32,), 512,
                    dict(_TEXT, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                         max_position_embeddings=64)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeModel", "ids", (32,), 512,
                  dict(_TEXT, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=64, shared_expert_intermediate_size=64,
                       max_position_embeddings=64)),
    "persimmon": ("PersimmonConfig", "PersimmonModel", "ids", (32,), 512,
                  dict(_TEXT, max_position_embeddings=64)),
    "nemotron": ("NemotronConfig", "NemotronModel", "ids", (32,), 512,
                 dict(_TEXT, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)),
    "recurrent_gemma": ("RecurrentGemmaConfig", "RecurrentGemmaModel", "ids", (32,), 512,
                        dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=1, intermediate_size=128, vocab_size=512,
                             lru_width=64, attention_window_size=16, head_dim=16)),
    "rwkv": ("RwkvConfig", "RwkvModel", "ids", (32,), 512,
             dict(hidden_size=64, num_hidden_layers=2, attention_hidden_size=64,
                  intermediate_size=128, vocab_size=512, context_length=64)),
    "mamba2": ("Mamba2Config", "Mamba2Model", "ids", (32,), 512,
               dict(hidden_size=64, state_size=16, num_hidden_layers=2, vocab_size=512,
                    num_heads=8, head_dim=16, n_groups=1, chunk_size=16, expand=2)),
    "hiera": ("HieraConfig", "HieraModel", "pixels", (3, 64, 64), 0,
              dict(embed_dim=32, image_size=[64, 64], patch_size=[7, 7], patch_stride=[4, 4],
                   patch_padding=[3, 3], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                   query_stride=[2, 2], masked_unit_size=[8, 8])),
    "swiftformer": ("SwiftFormerConfig", "SwiftFormerModel", "pixels", (3, 64, 64), 0,
                    dict(depths=[1, 1, 1, 1], embed_dims=[16, 32, 64, 128])),
    "mobilevitv2": ("MobileViTV2Config", "MobileViTV2Model", "pixels", (3, 64, 64), 0,
                    dict(image_size=64, width_multiplier=0.5)),
    "textnet": ("TextNetConfig", "TextNetModel", "pixels", (3, 64, 64), 0, {}),
    "hgnet_v2": ("HGNetV2Config", "HGNetV2Backbone", "maps", (3, 64, 64), 0, {}),
    "long_t5": ("LongT5Config", "LongT5Model", "seq2seq", (32,), 512,
                dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=512,
                     decoder_start_token_id=0, local_radius=4,
                     encoder_attention_type="transient-global")),
    # local attention alone (no global tokens); BigBird's block-sparse attention (blocks of 2
    # tokens, 2 random blocks: 32 tokens are enough) and LED (Longformer's encoder-decoder)
    "long_t5_local": ("LongT5Config", "LongT5Model", "seq2seq", (32,), 512,
                      dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                           vocab_size=512, decoder_start_token_id=0, local_radius=4,
                           encoder_attention_type="local")),
    "bigbird_sparse": ("BigBirdConfig", "BigBirdModel", "ids", (32,), 512,
                       dict(_TEXT, attention_type="block_sparse", block_size=2,
                            num_random_blocks=2, max_position_embeddings=64)),
    "bigbird_pegasus": ("BigBirdPegasusConfig", "BigBirdPegasusModel", "seq2seq", (32,), 512,
                        dict(_SEQ2SEQ, attention_type="block_sparse", block_size=2,
                             num_random_blocks=2)),
    "led": ("LEDConfig", "LEDModel", "seq2seq", (32,), 512,
            dict(_SEQ2SEQ, attention_window=8, max_encoder_position_embeddings=64,
                 max_decoder_position_embeddings=64)),
    "switch_transformers": ("SwitchTransformersConfig", "SwitchTransformersModel", "seq2seq",
                            (32,), 512, dict(d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                             num_heads=4, vocab_size=512, num_experts=4,
                                             decoder_start_token_id=0, expert_capacity=64)),
    "prophetnet": ("ProphetNetConfig", "ProphetNetModel", "seq2seq", (32,), 512,
                   dict(hidden_size=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
                        num_encoder_layers=2, num_decoder_layers=2, num_encoder_attention_heads=4,
                        num_decoder_attention_heads=4, vocab_size=512, ngram=2,
                        max_position_embeddings=64, decoder_start_token_id=0)),
}
_OUTPUT = {"seq2seq": lambda m, x: m(input_ids=x, decoder_input_ids=x).last_hidden_state,
           "ids": lambda m, x: m(input_ids=x).last_hidden_state,
           "pixels": lambda m, x: m(pixel_values=x).last_hidden_state,
           "audio": lambda m, x: m(x).last_hidden_state,
           "maps": lambda m, x: m(x).feature_maps[-1],
           "perceiver": lambda m, x: m(inputs=x).last_hidden_state,
           "clip": lambda m, x, pixels: m(input_ids=x, pixel_values=pixels).logits_per_text}
_SECOND = {"clip": ("pixel_values", (3, 32, 32))}  # a second, float input


def build(name: str):
    """(module, input shape without the batch axis, vocabulary: 0 for float inputs)."""
    import torch

    class Output(torch.nn.Module):  # a plain tensor out of a ModelOutput or a dict
        def __init__(self, model, fn):
            super().__init__()
            self.model, self.fn = model, fn

        def forward(self, *x):
            return self.fn(self.model, *x)

    if name in MODULES:
        return MODULES[name]()
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
    if family == "vit":  # ViT-H/14's widths, two layers, a small image
        from torchvision.models.vision_transformer import VisionTransformer
        return VisionTransformer(**keywords), shape, 0
    module = torchvision.models if family == "models" else getattr(torchvision.models, family)
    if family == "optical_flow":  # two images stacked on the channel axis; the last flow
        return Output(getattr(module, name)(weights=None),
                      lambda m, x: m(x[:, :3], x[:, 3:], **keywords)[-1]), shape, 0
    if family == "segmentation":
        model = getattr(module, name)(weights=None, weights_backbone=None, **keywords)
        return Output(model, lambda m, x: m(x)["out"]), shape, 0
    if family == "detection":  # the backbone and FPN (the heads take targets in training)
        model = getattr(module, name)(weights=None, weights_backbone=None, **keywords)
        return Output(model.backbone, lambda m, x: m(x)["0"]), shape, 0
    return getattr(module, name)(weights=None, **keywords), shape, 0


def export(name: str, mode: str, path: Path, variant: Variant) -> None:
    import onnx
    import torch

    torch.manual_seed(0)
    module, shape, vocab = build(name)
    module.train(mode == "train")
    batch = 1 if variant.batch1 else 2
    inputs = {"input_ids" if vocab else "x":
              torch.randint(0, vocab, (batch, *shape)) if vocab else torch.randn(batch, *shape)}
    if name in HF and HF[name][2] in _SECOND:
        second, second_shape = _SECOND[HF[name][2]]
        inputs[second] = torch.randn(batch, *second_shape)
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant.exporter == "dynamo":
            dims = None if variant.batch1 else {k: {0: torch.export.Dim("batch")} for k in inputs}
            torch.onnx.export(module, tuple(inputs.values()), str(tmp), input_names=[*inputs],
                              dynamo=True, opset_version=variant.opset, dynamic_shapes=dims,
                              external_data=False)
        else:
            torch.onnx.export(module, tuple(inputs.values()), str(tmp), input_names=[*inputs],
                              training=(torch.onnx.TrainingMode.TRAINING if mode == "train"
                                        else torch.onnx.TrainingMode.EVAL),
                              do_constant_folding=mode == "eval", dynamo=False,
                              opset_version=variant.opset,
                              dynamic_axes=None if variant.batch1 else {k: {0: "batch"}
                                                                        for k in inputs})
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


def probe(name: str, mode: str, folder: Path, variant: Variant = Variant(), runs: int = 2) -> dict:
    import numpy as np

    import onnxinit
    from tests.real.compare import compare

    row: dict = {"model": name, "mode": mode}
    if variant != Variant():
        row.update(asdict(variant))
    path = folder / f"{name}_{mode}_{variant.tag}.onnx"
    if not path.exists():
        try:
            export(name, mode, path, variant)
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
        found = compare(path, batch_size=8, runs=runs,
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
    parser.add_argument("--models", default=",".join([*TORCHVISION, *HF, *MODULES]))
    parser.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--batch1", action="store_true", help="batch 1, static shapes")
    parser.add_argument("--mode", choices=["train", "eval"], default="train")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--runs", type=int, default=2,
                        help="batches of 8 measured (a tensor of few elements per sample "
                             "has several %% of sampling noise at 2: use 8 or more there)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from tests.real.exports import export_directory

    folder = export_directory("onnxinit-unseen-")
    variant = Variant(args.exporter, args.opset, args.batch1)
    if args.one:
        print(json.dumps(probe(args.one, args.mode, folder, variant, args.runs)), flush=True)
        return
    env = {**os.environ, "ONNXINIT_EXPORT_CACHE": str(folder)}
    for name in args.models.split(","):
        try:
            done = subprocess.run([sys.executable, __file__, "--one", name, "--mode", args.mode,
                                   "--exporter", args.exporter, "--opset", str(args.opset),
                                   "--runs", str(args.runs),
                                   *(["--batch1"] if args.batch1 else [])],
                                  capture_output=True, text=True, timeout=args.timeout, env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            print(lines[-1] if lines else json.dumps(
                {"model": name, "error": done.stderr.strip().splitlines()[-1:]}), flush=True)
        except subprocess.TimeoutExpired:
            print(json.dumps({"model": name, "error": f"over {args.timeout} s"}), flush=True)


if __name__ == "__main__":
    main()
