"""A sweep of Hugging Face architectures at small configurations (issue 10): each model built
from a config object (random initialization, nothing downloaded; eager attention), exported in
training mode as the README says (``tests/real/exports.export_module``), predicted with
``onnxinit.analyze`` and measured with onnxruntime at batch 8 over ``--runs`` batches
(``tests/real/sequence.compare``: every float activation tensor, Dropout as the identity;
BatchNormalization's running statistics and other auxiliary outputs left out).

Sizes: 2 layers, hidden 64, 4 heads, 32 tokens (vocabulary 512); images 32x32 (MobileViT 64x64);
Whisper's encoder 16 mel bins x 32 frames. Each model runs in a subprocess with a time limit, so a
model the exporter refuses or that hangs is a row with its error, not the end of the sweep.

    python benchmarks/hf_sweep.py                              # every model, 4 batches
    python benchmarks/hf_sweep.py --models mpnet,t5 --runs 16  # some, over 16 batches
    python benchmarks/hf_sweep.py --worst 8                    # and each model's 8 worst tensors

Columns: float activation tensors compared, the share within 10% of the measured variance,
within 2x, coverage (tensors predicted), whether a prediction is NaN/inf (or analyze refused the
model), the seconds analyze took, and the worst tensor (predicted/measured, op). Exports are kept
in ``ONNXINIT_EXPORT_CACHE`` when set (a temporary folder otherwise). The onnxinit measured is
the one the interpreter imports first: put another checkout on PYTHONPATH for a before/after.

``--seed N`` builds the models with torch's seed N instead of 0 (another draw of the weights, as
``real_exports.py --seed``; docs/accuracy.md, "Other weight draws"); its exports are
``sweep_{name}_seed{N}.onnx`` in the cache (``sweep_{name}.onnx`` for seed 0).

    python benchmarks/hf_sweep.py --models gpt2,bert --seed 1

``--opset N`` exports at opset N instead of 17 (``sweep_{name}_opset{N}.onnx``; below 17
LayerNorm is written out, below 13 Softmax is the coerced 2-D form; docs/robustness.md,
"Older opsets"):

    python benchmarks/hf_sweep.py --models gpt2,bert,deberta_v2 --opset 11
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # tests.real; an onnxinit on PYTHONPATH comes first

from hf_sweep_fifth import ENCODERS, FIFTH, SEQ2SEQ  # noqa: E402  (this script's folder)
from hf_sweep_sixth import SEQ2SEQ as SEQ2SEQ_6, SIXTH, SUBMODULES  # noqa: E402
from hf_sizes import DECODER, IMAGE, TEXT, TOKENS, VISION  # noqa: E402

_TEXT, _DECODER, _VISION = TEXT, DECODER, VISION
_TOKENS, _IMAGE = TOKENS, IMAGE
_AUDIO = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              mask_time_prob=0.0, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2),
              conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
              num_conv_pos_embedding_groups=4)
_WAVE, _VIDEO = ((1600,), "input_values", 0), ((4, 3, 32, 32), "pixel_values", 0)
_ENCODERS = ("whisper_encoder", "speech2text_encoder", *ENCODERS)  # a seq2seq model's encoder

# name: (config class, model class, config keywords, (input shape, input name, vocabulary))
MODELS = {
    "bert": ("BertConfig", "BertModel", _TEXT, _TOKENS),
    "roberta": ("RobertaConfig", "RobertaModel", _TEXT, _TOKENS),
    "xlm_roberta": ("XLMRobertaConfig", "XLMRobertaModel", _TEXT, _TOKENS),
    "distilbert": ("DistilBertConfig", "DistilBertModel",
                   dict(dim=64, n_layers=2, n_heads=4, hidden_dim=256, vocab_size=512,
                        max_position_embeddings=64), _TOKENS),
    "albert": ("AlbertConfig", "AlbertModel", dict(_TEXT, embedding_size=32), _TOKENS),
    "electra": ("ElectraConfig", "ElectraModel", dict(_TEXT, embedding_size=32), _TOKENS),
    "mpnet": ("MPNetConfig", "MPNetModel", _TEXT, _TOKENS),
    "deberta_v2": ("DebertaV2Config", "DebertaV2Model", _TEXT, _TOKENS),
    "gpt2": ("GPT2Config", "GPT2Model",
             dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=512), _TOKENS),
    "opt": ("OPTConfig", "OPTModel",
            dict(hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
                 vocab_size=512, max_position_embeddings=64, word_embed_proj_dim=64), _TOKENS),
    "t5_encoder": ("T5Config", "T5EncoderModel",
                   dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                        vocab_size=512), _TOKENS),
    "t5": ("T5Config", "T5Model",
           dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=512),
           _TOKENS),
    "bart": ("BartConfig", "BartModel",
             dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                  vocab_size=512, max_position_embeddings=64), _TOKENS),
    "llama": ("LlamaConfig", "LlamaModel", _DECODER, _TOKENS),
    "mistral": ("MistralConfig", "MistralModel", _DECODER, _TOKENS),
    "qwen2": ("Qwen2Config", "Qwen2Model", _DECODER, _TOKENS),
    "gemma": ("GemmaConfig", "GemmaModel", dict(_DECODER, head_dim=16), _TOKENS),
    "phi": ("PhiConfig", "PhiModel", dict(_DECODER, intermediate_size=256), _TOKENS),
    "phi3": ("Phi3Config", "Phi3Model", dict(_DECODER, pad_token_id=0), _TOKENS),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoModel",
                dict(hidden_size=64, num_layers=2, num_heads=4, vocab_size=512,
                     max_position_embeddings=64, attention_types=[[["global", "local"], 1]],
                     window_size=16), _TOKENS),
    "gptj": ("GPTJConfig", "GPTJModel",
             dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64,
                  vocab_size=512), _TOKENS),
    "bloom": ("BloomConfig", "BloomModel",
              dict(hidden_size=64, n_layer=2, n_head=4, vocab_size=512), _TOKENS),
    "falcon": ("FalconConfig", "FalconModel",
               dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    vocab_size=512), _TOKENS),
    "clip_text": ("CLIPTextConfig", "CLIPTextModel", _TEXT, _TOKENS),
    "vit": ("ViTConfig", "ViTModel", _VISION, _IMAGE),
    "deit": ("DeiTConfig", "DeiTModel", _VISION, _IMAGE),
    "beit": ("BeitConfig", "BeitModel", dict(_VISION, use_relative_position_bias=True), _IMAGE),
    "dinov2": ("Dinov2Config", "Dinov2Model",
               dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                    patch_size=8), _IMAGE),
    "clip_vision": ("CLIPVisionConfig", "CLIPVisionModel", _VISION, _IMAGE),
    "swin": ("SwinConfig", "SwinModel",
             dict(image_size=32, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                  window_size=4), _IMAGE),
    "convnext": ("ConvNextConfig", "ConvNextModel",
                 dict(num_stages=2, hidden_sizes=[16, 32], depths=[2, 2], image_size=32), _IMAGE),
    "segformer": ("SegformerConfig", "SegformerModel",
                  dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                       hidden_sizes=[16, 32], num_attention_heads=[1, 2], patch_sizes=[7, 3],
                       strides=[4, 2], mlp_ratios=[4, 4], image_size=32), _IMAGE),
    "mobilevit": ("MobileViTConfig", "MobileViTModel", dict(image_size=64),
                  ((3, 64, 64), "pixel_values", 0)),
    "whisper_encoder": ("WhisperConfig", "WhisperModel",
                        dict(d_model=64, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4,
                             encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=16,
                             max_source_positions=16, vocab_size=512, pad_token_id=0,
                             bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
                        ((16, 32), "input_features", 0)),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model",
                 dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, conv_dim=(32, 32), conv_stride=(5, 2),
                      conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=4), ((400,), "input_values", 0)),
    # a second tier, probed for unseen architectures (rotary, convolutional mixing, Nystrom and
    # relative attention, squeeze-excite vision stacks)
    "roformer": ("RoFormerConfig", "RoFormerModel", dict(_TEXT, embedding_size=64), _TOKENS),
    "convbert": ("ConvBertConfig", "ConvBertModel", dict(_TEXT, embedding_size=64), _TOKENS),
    "squeezebert": ("SqueezeBertConfig", "SqueezeBertModel", dict(_TEXT, embedding_size=64),
                    _TOKENS),
    "megatron_bert": ("MegatronBertConfig", "MegatronBertModel", _TEXT, _TOKENS),
    "modernbert": ("ModernBertConfig", "ModernBertModel",
                   dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, vocab_size=512, max_position_embeddings=64,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                        sep_token_id=2, global_attn_every_n_layers=2, local_attention=16),
                   _TOKENS),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXModel", dict(_TEXT, rotary_pct=0.5), _TOKENS),
    "codegen": ("CodeGenConfig", "CodeGenModel",
                dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64,
                     n_ctx=64, vocab_size=512), _TOKENS),
    "xglm": ("XGLMConfig", "XGLMModel",
             dict(d_model=64, num_layers=2, attention_heads=4, ffn_dim=256, vocab_size=512,
                  max_position_embeddings=64), _TOKENS),
    "biogpt": ("BioGptConfig", "BioGptModel", _TEXT, _TOKENS),
    "mpt": ("MptConfig", "MptModel",
            dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=4, max_seq_len=64,
                 vocab_size=512), _TOKENS),
    "stablelm": ("StableLmConfig", "StableLmModel", _DECODER, _TOKENS),
    "olmo2": ("Olmo2Config", "Olmo2Model", _DECODER, _TOKENS),
    "gemma2": ("Gemma2Config", "Gemma2Model", dict(_DECODER, head_dim=16, sliding_window=16),
               _TOKENS),
    "qwen3": ("Qwen3Config", "Qwen3Model", dict(_DECODER, head_dim=16), _TOKENS),
    "starcoder2": ("Starcoder2Config", "Starcoder2Model", _DECODER, _TOKENS),
    "m2m100": ("M2M100Config", "M2M100Model",
               dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                    vocab_size=512, max_position_embeddings=64), _TOKENS),
    "data2vec_vision": ("Data2VecVisionConfig", "Data2VecVisionModel",
                        dict(_VISION, use_relative_position_bias=True), _IMAGE),
    "siglip_vision": ("SiglipVisionConfig", "SiglipVisionModel", _VISION, _IMAGE),
    "swinv2": ("Swinv2Config", "Swinv2Model",
               dict(image_size=32, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                    window_size=4), _IMAGE),
    "convnextv2": ("ConvNextV2Config", "ConvNextV2Model",
                   dict(num_stages=2, hidden_sizes=[16, 32], depths=[2, 2], image_size=32),
                   _IMAGE),
    "focalnet": ("FocalNetConfig", "FocalNetModel",
                 dict(image_size=32, patch_size=2, embed_dim=32, depths=[2, 2]), _IMAGE),
    "pvt_v2": ("PvtV2Config", "PvtV2Model",
               dict(image_size=32, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                    hidden_sizes=[16, 32], num_attention_heads=[1, 2], patch_sizes=[7, 3],
                    strides=[4, 2], mlp_ratios=[4, 4]), _IMAGE),
    "regnet": ("RegNetConfig", "RegNetModel",
               dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 2], groups_width=8),
               _IMAGE),
    "bit": ("BitConfig", "BitModel",
            dict(embedding_size=32, hidden_sizes=[128, 256], depths=[1, 1]), _IMAGE),
    "mobilenet_v2": ("MobileNetV2Config", "MobileNetV2Model", dict(image_size=32), _IMAGE),
    "efficientnet": ("EfficientNetConfig", "EfficientNetModel", dict(image_size=32), _IMAGE),
    # a third tier (stop 39): newer decoders, and a BERT that writes its LayerNorm out
    "gemma3": ("Gemma3TextConfig", "Gemma3TextModel",
               dict(_DECODER, head_dim=16, sliding_window=16), _TOKENS),
    "granite": ("GraniteConfig", "GraniteModel", _DECODER, _TOKENS),
    "nemotron": ("NemotronConfig", "NemotronModel", _DECODER, _TOKENS),
    "cohere": ("CohereConfig", "CohereModel", _DECODER, _TOKENS),
    "ibert": ("IBertConfig", "IBertModel", _TEXT, _TOKENS),
    # a fourth tier (issue 10): pre-norm and protein/char BERTs, older and newer decoders
    # (ReLU^2 MLPs, post-norms), vision transformers with convolutional or reduced attention,
    # depth necks, speech encoders with convolutional front ends, video transformers
    "roberta_prelayernorm": ("RobertaPreLayerNormConfig", "RobertaPreLayerNormModel", _TEXT,
                             _TOKENS),
    "xlm_roberta_xl": ("XLMRobertaXLConfig", "XLMRobertaXLModel", _TEXT, _TOKENS),
    "esm": ("EsmConfig", "EsmModel",
            dict(_TEXT, pad_token_id=1, mask_token_id=2, position_embedding_type="rotary"),
            _TOKENS),
    "data2vec_text": ("Data2VecTextConfig", "Data2VecTextModel", _TEXT, _TOKENS),
    "rembert": ("RemBertConfig", "RemBertModel",
                dict(_TEXT, input_embedding_size=32, output_embedding_size=64), _TOKENS),
    "splinter": ("SplinterConfig", "SplinterModel", _TEXT, _TOKENS),
    "ernie": ("ErnieConfig", "ErnieModel", _TEXT, _TOKENS),
    "flaubert": ("FlaubertConfig", "FlaubertModel",
                 dict(emb_dim=64, n_layers=2, n_heads=4, vocab_size=512,
                      max_position_embeddings=64), _TOKENS),
    "ctrl": ("CTRLConfig", "CTRLModel",
             dict(n_embd=64, n_layer=2, n_head=4, dff=256, n_positions=64, vocab_size=512),
             _TOKENS),
    "openai_gpt": ("OpenAIGPTConfig", "OpenAIGPTModel",
                   dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=512), _TOKENS),
    "olmo": ("OlmoConfig", "OlmoModel", _DECODER, _TOKENS),
    "glm": ("GlmConfig", "GlmModel", dict(_DECODER, head_dim=16, pad_token_id=0), _TOKENS),
    "smollm3": ("SmolLM3Config", "SmolLM3Model", dict(_DECODER, pad_token_id=0), _TOKENS),
    "exaone4": ("Exaone4Config", "Exaone4Model", dict(_DECODER, sliding_window=16), _TOKENS),
    "arcee": ("ArceeConfig", "ArceeModel", _DECODER, _TOKENS),
    "bitnet": ("BitNetConfig", "BitNetModel", _DECODER, _TOKENS),
    "eurobert": ("EuroBertConfig", "EuroBertModel", dict(_DECODER, pad_token_id=0), _TOKENS),
    "modernbert_decoder": ("ModernBertDecoderConfig", "ModernBertDecoderModel",
                           dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, vocab_size=512,
                                max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2, cls_token_id=1, sep_token_id=2,
                                local_attention=16, global_attn_every_n_layers=2), _TOKENS),
    "cvt": ("CvtConfig", "CvtModel",
            dict(embed_dim=[16, 32, 64], num_heads=[1, 2, 4], depth=[1, 2, 3]),
            ((3, 64, 64), "pixel_values", 0)),
    "pvt": ("PvtConfig", "PvtModel",
            dict(image_size=32, num_encoder_blocks=2, depths=[1, 1],
                 sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32],
                 num_attention_heads=[1, 2], patch_sizes=[4, 2], strides=[4, 2],
                 mlp_ratios=[4, 4]), _IMAGE),
    "vit_msn": ("ViTMSNConfig", "ViTMSNModel", _VISION, _IMAGE),
    "ijepa": ("IJepaConfig", "IJepaModel", _VISION, _IMAGE),
    "glpn": ("GLPNConfig", "GLPNModel",
             dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                  num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
                  mlp_ratios=[4, 4]), _IMAGE),
    "dpt": ("DPTConfig", "DPTModel",
            dict(_VISION, backbone_out_indices=[0, 1], neck_hidden_sizes=[16, 32],
                 fusion_hidden_size=32), _IMAGE),
    "wav2vec2_conformer": ("Wav2Vec2ConformerConfig", "Wav2Vec2ConformerModel",
                           dict(_AUDIO, position_embeddings_type="relative",
                                conv_depthwise_kernel_size=7), _WAVE),
    "unispeech": ("UniSpeechConfig", "UniSpeechModel", _AUDIO, _WAVE),
    "unispeech_sat": ("UniSpeechSatConfig", "UniSpeechSatModel", _AUDIO, _WAVE),
    "sew_d": ("SEWDConfig", "SEWDModel",
              dict(_AUDIO, squeeze_factor=2, position_buckets=32, max_position_embeddings=64),
              _WAVE),
    "speech2text_encoder": ("Speech2TextConfig", "Speech2TextModel",
                            dict(d_model=64, encoder_layers=2, decoder_layers=2,
                                 encoder_attention_heads=4, decoder_attention_heads=4,
                                 encoder_ffn_dim=256, decoder_ffn_dim=256,
                                 input_feat_per_channel=16, input_channels=1, conv_channels=64,
                                 vocab_size=512, max_source_positions=64,
                                 max_target_positions=64), ((32, 16), "input_features", 0)),
    "ast": ("ASTConfig", "ASTModel",
            dict(_VISION, num_mel_bins=16, max_length=32, frequency_stride=8, time_stride=8),
            ((32, 16), "input_values", 0)),
    "videomae": ("VideoMAEConfig", "VideoMAEModel", dict(_VISION, num_frames=4, tubelet_size=2),
                 _VIDEO),
    "timesformer": ("TimesformerConfig", "TimesformerModel", dict(_VISION, num_frames=4), _VIDEO),
    "vivit": ("VivitConfig", "VivitModel", dict(_VISION, num_frames=4, tubelet_size=[2, 8, 8]),
              _VIDEO),
    "patchtst": ("PatchTSTConfig", "PatchTSTModel",
                 dict(num_input_channels=3, context_length=32, patch_length=8, patch_stride=8,
                      d_model=64, num_attention_heads=4, num_hidden_layers=2, ffn_dim=128),
                 ((32, 3), "past_values", 0)),
    # a fifth tier (stop 42): text encoders with layout, entity, language or shape embeddings
    # and LSH/multiresolution attention, further encoder-decoders, newer decoders (short
    # convolutions, dynamic masks), selective-scan and hybrid models, audio front ends
    # (conformers, spectrogram Swin), vision towers of multimodal models, depth and
    # segmentation heads, MLP-mixer time series
    **FIFTH,
    # a sixth tier (stop 43): sliding-window, MLA and differential-attention decoders, mixtures
    # of experts, Mamba-2 and xLSTM hybrids, further encoders and encoder-decoders, DINOv3,
    # AIMv2, MLCD and SAM-2's Hiera, neural codecs' encoders and a vocoder
    **SIXTH,
}


def build(name: str):
    """(module taking the one input positionally and returning the last hidden state, shape,
    input name, vocabulary)."""
    import torch
    import transformers

    config_class, model_class, kwargs, (shape, input_name, vocab) = MODELS[name]
    config = getattr(transformers, config_class)(attn_implementation="eager", **kwargs)
    model = getattr(transformers, model_class)(config)
    if name in _ENCODERS:
        model = model.get_encoder()
    if name in SUBMODULES:  # called positionally; its first output
        model = getattr(model, SUBMODULES[name])

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            if name in SUBMODULES:
                out = self.model(x)
                return out if isinstance(out, torch.Tensor) else out[0]
            seq2seq = ("t5", "m2m100", *SEQ2SEQ, *SEQ2SEQ_6)
            extra = {"decoder_input_ids": x} if name in seq2seq else {}
            return self.model(**{input_name: x}, **extra)[0]

    return LastHiddenState(), shape, input_name, vocab


def one(name: str, directory: Path, runs: int, worst: int, seed: int = 0,
        opset: int = 17) -> dict:
    import torch

    from tests.real.exports import export_module
    from tests.real.sequence import compare

    path = directory / (f"sweep_{name}{f'_seed{seed}' if seed else ''}"
                        f"{f'_opset{opset}' if opset != 17 else ''}.onnx")
    if not path.exists():
        torch.manual_seed(seed)
        module, shape, input_name, vocab = build(name)
        export_module(module, shape, path, input_name=input_name, integer_input=vocab,
                      opset=opset)
    r = compare(path, batch_size=8, runs=runs)
    return {"name": name, "tensors": len(r.tensors), "within_10": r.within_10,
            "within_2x": r.within_2x, "coverage": r.coverage, "non_finite": r.non_finite,
            "analyze_s": r.analyze_s, "error": r.error, "worst": r.worst(max(worst, 1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--worst", type=int, default=0, help="print each model's N worst")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per model")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch's seed for the built models' weights (default 0)")
    parser.add_argument("--opset", type=int, default=17,
                        help="the opset the TorchScript exporter writes (default 17)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    directory = Path(os.environ.get("ONNXINIT_EXPORT_CACHE") or tempfile.mkdtemp())
    directory.mkdir(parents=True, exist_ok=True)
    if args.one:
        warnings.simplefilter("ignore")
        print(json.dumps(one(args.one, directory, args.runs, args.worst, args.seed,
                             args.opset)))
        return
    env = {**os.environ, "ONNXINIT_EXPORT_CACHE": str(directory)}
    print(f"{'model':16} {'tensors':>7} {'within 10%':>10} {'within 2x':>9} {'coverage':>8} "
          f"{'NaN/inf':>7} {'analyze s':>9}  worst", flush=True)
    for name in args.models.split(","):
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--one", name, "--runs", str(args.runs),
                 "--worst", str(args.worst), "--seed", str(args.seed), "--opset",
                 str(args.opset)], capture_output=True, text=True, env=env,
                timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{name:16} timed out after {args.timeout} s", flush=True)
            continue
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name:16} failed: {last[:150]}", flush=True)
            continue
        r = json.loads(lines[-1])
        if r["error"]:
            print(f"{name:16} analyze refused: {r['error'][:150]}", flush=True)
            continue
        print(f"{name:16} {r['tensors']:7} {100 * r['within_10']:9.1f}% "
              f"{100 * r['within_2x']:8.1f}% {100 * r['coverage']:7.1f}% "
              f"{'yes' if r['non_finite'] else 'no':>7} {r['analyze_s']:9.2f}  {r['worst'][0]}",
              flush=True)
        for line in r["worst"][1:args.worst]:
            print(f"{'':16} {line}", flush=True)


if __name__ == "__main__":
    main()
