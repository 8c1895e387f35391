"""Grounding DINO architectures built from configs in code: ``tiny`` (tests, CPU) and ``random`` (full size)."""

from __future__ import annotations


def tiny_grounding_dino_config(vocab_size: int):
    """A Grounding DINO a few hundred kB in size: 2-stage, 4 feature levels, Swin + BERT, all tiny."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    return GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   image_size=64, out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=256),
        d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=50, encoder_n_points=1,
        decoder_n_points=1)


def random_grounding_dino_config(vocab_size: int = 30522):
    """IDEA-Research/grounding-dino-tiny's architecture (Swin-T + BERT-base, 900 queries): the library defaults."""
    from transformers import BertConfig, GroundingDinoConfig

    return GroundingDinoConfig(text_config=BertConfig(vocab_size=max(vocab_size, 30522)))
