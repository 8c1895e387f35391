"""Detector architectures built from configs in code, Grounding DINO's and OWLv2's: ``tiny`` (tests, CPU) and
``random`` (full size)."""

from __future__ import annotations

from magicseg_models.config.build import OWLV2_TEXT_WINDOW


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


# Owlv2Config has no initializer_range of its own, and without one its box/class heads start at std 1: boxes
# collapse to a corner and logits reach +-50. The towers' configs use 0.02; so do the heads here.
OWLV2_HEAD_INIT_STD = 0.02


def tiny_owlv2_config(vocab_size: int, bos_token_id: int, eos_token_id: int, image_size: int = 64):
    """An OWLv2 a few hundred kB in size: ViT with 8 px patches, a one-layer CLIP text tower, 16-token window."""
    from transformers import Owlv2Config

    # the class head compares image embeddings mapped to the text width with the projected text embedding: the
    # text width must equal projection_dim, as in the released models (512)
    return Owlv2Config(
        text_config=dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=OWLV2_TEXT_WINDOW, pad_token_id=0,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=16, initializer_range=OWLV2_HEAD_INIT_STD)


def random_owlv2_config():
    """google/owlv2-base-patch16(-ensemble)'s architecture: ViT-B/16 at 960 px (3600 boxes), CLIP text tower."""
    from transformers import Owlv2Config

    return Owlv2Config(vision_config=dict(image_size=960, patch_size=16), initializer_range=OWLV2_HEAD_INIT_STD)
