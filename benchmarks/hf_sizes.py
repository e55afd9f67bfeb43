"""The Hugging Face sweep's sizes (``hf_sweep.py`` and its fifth and sixth tiers,
``hf_sweep_fifth.py`` and ``hf_sweep_sixth.py``): 2 layers, hidden 64, 4 heads, a vocabulary
of 512; images 32x32 in patches of 8; the token ids and image inputs each model is fed."""

TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            vocab_size=512, max_position_embeddings=64)
DECODER = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
               max_position_embeddings=64)
VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
              image_size=32, patch_size=8)
TOKENS, IMAGE = ((32,), "input_ids", 512), ((3, 32, 32), "pixel_values", 0)
