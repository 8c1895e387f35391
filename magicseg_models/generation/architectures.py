"""Model configs of the SDXL and FLUX generator families: the published full-size ones and tiny ones for tests.

The full-size dicts are the ``config.json`` files of ``stabilityai/stable-diffusion-xl-base-1.0`` and
``black-forest-labs/FLUX.1-schnell`` (their ``unet``/``transformer``, ``vae``, ``text_encoder``, ``text_encoder_2``
and ``scheduler`` folders), so ``weights: random`` builds the real architecture without a download. The tiny ones
keep every block type and every conditioning path (SDXL's pooled text embeds and size/crop ids, FLUX's T5 sequence,
CLIP pooled vector and 2x2-packed latents with rotary ids) at a few channels, so a CPU runs a pair in milliseconds.
SD 1.5's configs live in :mod:`magicseg_models.generation.components`.
"""

from __future__ import annotations

from typing import Any


CLIP_TOKENS = 77  # both CLIP text towers (ViT-L/14 and OpenCLIP ViT-bigG/14) read 77 tokens, BOS and EOS included

# ------------------------------------------------------------------------------------------------ SDXL
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,  # 768 (CLIP ViT-L) + 1280 (OpenCLIP bigG) hidden states, concatenated
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 size/crop ids x 256 + the 1280-d pooled text embedding
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
SD15_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
# SDXL's VAE is SD 1.5's architecture trained again: a larger native size and its own latent scale
SDXL_VAE_CONFIG: dict[str, Any] = {
    **SD15_VAE_CONFIG,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,  # SDXL's VAE overflows in float16: diffusers decodes it in float32
}
CLIP_L_TEXT_CONFIG: dict[str, Any] = {  # CLIP ViT-L/14's text tower (SD 1.5, SDXL text_encoder, FLUX text_encoder)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": CLIP_TOKENS,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
SDXL_TEXT_2_CONFIG: dict[str, Any] = {  # OpenCLIP ViT-bigG/14's text tower, with its projection
    "vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "projection_dim": 1280,
    "num_hidden_layers": 32, "num_attention_heads": 20, "max_position_embeddings": CLIP_TOKENS,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5,
}
SDXL_SCHEDULER_CLASS = "EulerDiscreteScheduler"
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "interpolation_type": "linear", "prediction_type": "epsilon", "sample_max_value": 1.0,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}

TINY_SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 2),
    "attention_head_dim": (2, 4),
    "cross_attention_dim": 80,  # 32 + 48: the two tiny text towers
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 96,  # 6 x 8 + the 48-d pooled embedding
    "norm_num_groups": 32,
}
TINY_CLIP_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 37, "projection_dim": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "max_position_embeddings": CLIP_TOKENS, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
}
# SDXL's second tower is wider than its first (1280 vs 768), and the tiny one is too (48 vs 32): diffusers'
# single-file reader tells the two encoders of a file apart by their widths
TINY_SDXL_TEXT_2_CONFIG: dict[str, Any] = {**TINY_CLIP_TEXT_CONFIG, "hidden_size": 48, "projection_dim": 48}

# ------------------------------------------------------------------------------------------------ FLUX
FLUX_SCHNELL_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels x a 2x2 patch
    "num_layers": 19,  # double-stream (text and image) blocks
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,  # T5-XXL's width
    "pooled_projection_dim": 768,  # CLIP ViT-L's pooled vector
    "guidance_embeds": False,  # schnell is guidance-distilled away: no guidance input at all (dev has one)
    "axes_dims_rope": (16, 56, 56),
}
# FLUX's VAE is SDXL's architecture with 16 latent channels, its own latent statistics and no quant convs
FLUX_VAE_CONFIG: dict[str, Any] = {
    **SDXL_VAE_CONFIG,
    "latent_channels": 16,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
T5_XXL_ENCODER_CONFIG: dict[str, Any] = {  # google/t5-v1_1-xxl's encoder, as FLUX's text_encoder_2
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-gelu", "is_encoder_decoder": True,
    "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "tie_word_embeddings": False,
}
FLUX_SCHEDULER_CLASS = "FlowMatchEulerDiscreteScheduler"
FLUX_SCHNELL_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5,
    "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
}

TINY_FLUX_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 16,  # 4 latent channels x 2x2
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": False,
    "axes_dims_rope": (4, 4, 8),
}
TINY_T5_ENCODER_CONFIG: dict[str, Any] = {
    "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4, "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32, "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu", "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0, "tie_word_embeddings": False,
}


def tiny_vae_config(base: dict[str, Any], *, latent_channels: int, flux: bool = False) -> dict[str, Any]:
    """SD 1.5's tiny VAE (8x downsampling) with a family's latent width, scaling and quant-conv layout."""
    config = {**base, "latent_channels": latent_channels}
    if flux:
        config.update(scaling_factor=FLUX_VAE_CONFIG["scaling_factor"], shift_factor=FLUX_VAE_CONFIG["shift_factor"],
                      use_quant_conv=False, use_post_quant_conv=False)
    else:
        config.update(scaling_factor=SDXL_VAE_CONFIG["scaling_factor"])
    return config
