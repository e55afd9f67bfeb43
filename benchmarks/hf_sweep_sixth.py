"""The sixth tier of ``benchmarks/hf_sweep.py`` (stop 43): Hugging Face architectures of
transformers 5.24 that no earlier tier, ``unseen_exports.py`` nor docs/robustness.md had, at the
sweep's sizes (2 layers, hidden 64, 4 heads, 32 tokens of 512; images 32x32; audio 1600
samples). ``hf_sweep.MODELS`` merges :data:`SIXTH`; :data:`SEQ2SEQ` are encoder-decoders fed
the token ids as decoder ids too; :data:`SUBMODULES` names the submodule exported for a model
whose own output is not a float hidden state (a neural codec's encoder, called positionally).
"""

from __future__ import annotations

from hf_sizes import DECODER, IMAGE, TEXT, TOKENS, VISION  # this script's folder

_TEXT, _DECODER, _VISION = TEXT, DECODER, VISION
_TOKENS, _IMAGE = TOKENS, IMAGE
_HEAD = dict(_DECODER, head_dim=16)
_SEQ = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, vocab_size=512,
            max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2)
_MLA = dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16,
            head_dim=8, num_key_value_heads=4)  # head_dim: the rotary part
_EXPERTS = dict(experts_implementation="batched_mm")  # the default grouped_mm calls histc
_MOE = dict(_HEAD, **_EXPERTS, moe_intermediate_size=32, num_experts_per_tok=2)
_DEEPSEEK = dict(_MOE, **_MLA, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1,
                 n_group=1, topk_group=1)
_MAMBA2 = dict(mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=8,
               mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16)
_CODEC = ((1, 1600), "input_values", 0)

SEQ2SEQ = ("mt5", "fsmt", "nllb_moe", "t5gemma")
SUBMODULES = {"encodec": "encoder", "dac": "encoder", "mimi": "encoder"}

SIXTH = {
    # dense decoders: sliding windows, MLA (low-rank q/kv with a rotary part), differential
    # attention, scaled embeddings and residuals
    "cohere2": ("Cohere2Config", "Cohere2Model", dict(_HEAD, sliding_window=16), _TOKENS),
    "olmo3": ("Olmo3Config", "Olmo3Model", dict(_DECODER, sliding_window=16), _TOKENS),
    "glm4": ("Glm4Config", "Glm4Model", dict(_HEAD, pad_token_id=0), _TOKENS),
    "ministral": ("MinistralConfig", "MinistralModel", dict(_HEAD, sliding_window=16),
                  _TOKENS),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", "HunYuanDenseV1Model", _HEAD, _TOKENS),
    "minicpm3": ("MiniCPM3Config", "MiniCPM3Model", dict(_HEAD, **_MLA, q_lora_rank=32),
                 _TOKENS),
    "diffllama": ("DiffLlamaConfig", "DiffLlamaModel", _DECODER, _TOKENS),
    "vaultgemma": ("VaultGemmaConfig", "VaultGemmaModel", dict(_HEAD, sliding_window=16),
                   _TOKENS),
    "jais2": ("Jais2Config", "Jais2Model", _DECODER, _TOKENS),
    "nanochat": ("NanoChatConfig", "NanoChatModel", _DECODER, _TOKENS),
    "imagegpt": ("ImageGPTConfig", "ImageGPTModel",
                 dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=512), _TOKENS),
    # mixtures of experts
    "jetmoe": ("JetMoeConfig", "JetMoeModel",
               dict(hidden_size=64, num_hidden_layers=2, num_key_value_heads=4, kv_channels=16,
                    intermediate_size=128, num_local_experts=4, num_experts_per_tok=2,
                    vocab_size=512, max_position_embeddings=64, **_EXPERTS), _TOKENS),
    "dbrx": ("DbrxConfig", "DbrxModel",
             dict(d_model=64, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=512,
                  attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                  ffn_config=dict(ffn_hidden_size=128, moe_num_experts=4, moe_top_k=2), **_EXPERTS),
             _TOKENS),
    "gpt_oss": ("GptOssConfig", "GptOssModel",
                dict(_HEAD, **_EXPERTS, intermediate_size=64, num_local_experts=4,
                     num_experts_per_tok=2, sliding_window=16), _TOKENS),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeModel", dict(_MOE, num_experts=4), _TOKENS),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2Model", _DEEPSEEK, _TOKENS),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3Model", dict(_DEEPSEEK, q_lora_rank=32),
                    _TOKENS),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", "Ernie4_5_MoeModel",
                     dict(_MOE, moe_num_experts=4, moe_k=2, moe_num_shared_experts=1,
                          moe_layer_start_index=1), _TOKENS),
    "flex_olmo": ("FlexOlmoConfig", "FlexOlmoModel",
                  dict(_DECODER, **_EXPERTS, num_experts=4, num_experts_per_tok=2,
                       pad_token_id=1), _TOKENS),
    "dots1": ("Dots1Config", "Dots1Model",
              dict(_MOE, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1),
              _TOKENS),
    "lfm2_moe": ("Lfm2MoeConfig", "Lfm2MoeModel",
                 dict(_MOE, num_experts=4, num_dense_layers=1,
                      layer_types=["conv", "full_attention"]), _TOKENS),
    # hybrids of attention with state-space or recurrent layers
    "bamba": ("BambaConfig", "BambaModel", dict(_DECODER, **_MAMBA2, attn_layer_indices=[1]),
              _TOKENS),
    "falcon_h1": ("FalconH1Config", "FalconH1Model",
                  dict(_DECODER, **_MAMBA2, head_dim=16, mamba_d_ssm=128), _TOKENS),
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridModel",
                         dict(_DECODER, **_MAMBA2, **_EXPERTS, layer_types=["mamba", "attention"],
                              num_local_experts=4, num_experts_per_tok=2,
                              shared_intermediate_size=64), _TOKENS),
    "zamba2": ("Zamba2Config", "Zamba2Model",
               dict(hidden_size=64, num_hidden_layers=2, layers_block_type=["mamba", "hybrid"],
                    mamba_d_state=8, n_mamba_heads=4, mamba_headdim=32, num_attention_heads=4,
                    num_key_value_heads=4, intermediate_size=128, vocab_size=512,
                    max_position_embeddings=64, use_mamba_kernels=False, num_mem_blocks=1,
                    adapter_rank=8, chunk_size=16), _TOKENS),
    "xlstm": ("xLSTMConfig", "xLSTMModel",
              dict(hidden_size=64, embedding_dim=64, num_hidden_layers=2, num_blocks=2,
                   num_heads=4, vocab_size=512, mode="train", chunk_size=32, qk_dim_factor=1.0,
                   chunkwise_kernel="chunkwise--native_autograd",
                   sequence_kernel="native_sequence__native", step_kernel="native"), _TOKENS),
    # encoders and encoder-decoders
    "nomic_bert": ("NomicBertConfig", "NomicBertModel", _TEXT, _TOKENS),
    "xlm": ("XLMConfig", "XLMModel",
            dict(emb_dim=64, n_layers=2, n_heads=4, vocab_size=512, max_position_embeddings=64),
            _TOKENS),
    "layoutlmv3": ("LayoutLMv3Config", "LayoutLMv3Model",
                   dict(_TEXT, max_position_embeddings=66, coordinate_size=12, shape_size=8,
                        visual_embed=False, max_2d_position_embeddings=64), _TOKENS),
    "mt5": ("MT5Config", "MT5Model",
            dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=512),
            _TOKENS),
    "fsmt": ("FSMTConfig", "FSMTModel",
             dict(_SEQ, langs=["en", "de"], src_vocab_size=512, tgt_vocab_size=512), _TOKENS),
    "nllb_moe": ("NllbMoeConfig", "NllbMoeModel",
                 dict(_SEQ, num_experts=4, expert_capacity=64, encoder_sparse_step=2,
                      decoder_sparse_step=2), _TOKENS),
    "t5gemma": ("T5GemmaConfig", "T5GemmaModel",
                dict(encoder=dict(_HEAD, sliding_window=16), decoder=dict(_HEAD, sliding_window=16),
                     vocab_size=512), _TOKENS),
    # vision
    "dinov3_vit": ("DINOv3ViTConfig", "DINOv3ViTModel",
                   dict(_VISION, num_register_tokens=2, pos_embed_rescale=None),
                   _IMAGE),  # the default rescale draws uniform_ in training: no export
    "dinov3_convnext": ("DINOv3ConvNextConfig", "DINOv3ConvNextModel",
                        dict(hidden_sizes=[16, 32], depths=[2, 2], image_size=32), _IMAGE),
    "aimv2_vision": ("Aimv2VisionConfig", "Aimv2VisionModel",
                     dict(_VISION, intermediate_size=172), _IMAGE),
    "mlcd_vision": ("MLCDVisionConfig", "MLCDVisionModel", _VISION, _IMAGE),
    "sam2_hiera_det": ("Sam2HieraDetConfig", "Sam2HieraDetModel",
                       dict(hidden_size=16, num_attention_heads=1, image_size=[32, 32],
                            patch_kernel_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3],
                            blocks_per_stage=[1, 2], embed_dim_per_stage=[16, 32],
                            num_attention_heads_per_stage=[1, 2], window_size_per_stage=[4, 2],
                            num_query_pool_stages=1, global_attention_blocks=[2],
                            window_positional_embedding_background_size=[4, 4]), _IMAGE),
    # audio: neural codecs' encoders, a vocoder
    "encodec": ("EncodecConfig", "EncodecModel",
                dict(num_filters=8, hidden_size=32, upsampling_ratios=[4, 2],
                     num_residual_layers=1, num_lstm_layers=1), _CODEC),
    "dac": ("DacConfig", "DacModel",
            dict(encoder_hidden_size=8, downsampling_ratios=[2, 4], decoder_hidden_size=32,
                 hidden_size=64), _CODEC),
    "mimi": ("MimiConfig", "MimiModel",
             dict(num_filters=8, hidden_size=32, upsampling_ratios=[4, 2],
                  num_residual_layers=1, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=8, intermediate_size=64,
                  upsample_groups=32), _CODEC),
    "univnet": ("UnivNetConfig", "UnivNetModel",
                dict(model_in_channels=16, model_hidden_channels=8, num_mel_bins=16,
                     resblock_stride_sizes=[2, 2], resblock_kernel_sizes=[3, 3],
                     resblock_dilation_sizes=[[1, 3], [1, 3]], kernel_predictor_num_blocks=1,
                     kernel_predictor_hidden_channels=16), ((16, 16), "input_features", 0)),
}
