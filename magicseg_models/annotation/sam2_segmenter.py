"""SAM 2 (``segmenter.backend: sam2``): transformers' ``Sam2Model``, the same contract as the SAM backends.

transformers rather than Meta's ``sam2`` package: the model is maintained there, loads from the Hugging Face cache
or a ``save_pretrained`` folder like every other model here, and needs no CUDA extension build (Meta's package
compiles one for its hole-filling mask post-processing). Meta's ``facebook/sam2.1-hiera-*`` repos carry the
transformers weights in a ``sam2_video`` config; ``Sam2Model`` reads its image half from them.

Per batch of ``segmenter.batch_size`` images: ``Sam2Processor`` resizes each to the model's square input (1024
for the released models; SAM 2 does not keep the aspect ratio or pad, unlike SAM), the vision encoder embeds them
once, and every box of an image is prompted in one mask-decoder call (``PROMPTS_PER_CALL`` at most) against that
image's three feature maps. Single-mask output as SAM 2 gives it: when the single-mask token's own mask is
unstable the decoder falls back to the best of its three multi-mask outputs (``dynamic_multimask_via_stability``,
as in Meta's image predictor). ``predicted_iou`` is the decoder's IoU head for the mask it returns;
``stability_score`` is :func:`stability_score` of the logits upsampled to the image's size (threshold 0).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from magicseg_models.annotation.segmenter_base import (
    BaseSegmenter,
    PROMPTS_PER_CALL,
    ScoredMasks,
    SegmenterWeightsError,
    concat_masks,
    split_empty,
    stability_score,
)
from magicseg_models.config import SegmenterConfig
from magicseg_models.devices import model_context, resolve_device
from magicseg_models.errors import one_line
from magicseg_models.weights import TINY_INIT_SEED
from magicseg_models.weights.hub import local_folder, looks_local
from magicseg_models.weights.model_types import check_model_type

MASK_THRESHOLD = 0.0  # Sam2Processor.post_process_masks' default: a logit above 0 is inside the mask

# SAM 2.1 Hiera trunks (Meta's sam2.1_hiera_{t,s,b+,l}.yaml): blocks per stage, global-attention blocks, width and
# heads of the first stage (both double per stage), positional-embedding background size, windows per stage
HIERA = {
    "tiny": ([1, 2, 7, 2], [5, 7, 9], 96, 1, [7, 7], [8, 4, 14, 7]),
    "small": ([1, 2, 11, 2], [7, 10, 13], 96, 1, [7, 7], [8, 4, 14, 7]),
    "base-plus": ([2, 3, 16, 3], [12, 16, 20], 112, 2, [14, 14], [8, 4, 14, 7]),
    "large": ([2, 6, 36, 4], [23, 33, 43], 144, 2, [7, 7], [8, 4, 16, 8]),
}


def sam2_config(size: str):
    """The full-size SAM 2.1 architecture of a Hiera ``size`` (1024 px input, 256-dim prompts and decoder)."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    blocks, global_blocks, width, heads, background, windows = HIERA[size]
    dims = [width * 2 ** i for i in range(4)]
    trunk = Sam2HieraDetConfig(
        hidden_size=width, num_attention_heads=heads, blocks_per_stage=blocks, embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[heads * 2 ** i for i in range(4)], global_attention_blocks=global_blocks,
        window_positional_embedding_background_size=background, window_size_per_stage=windows)
    return Sam2Config(vision_config=Sam2VisionConfig(backbone_config=trunk, backbone_channel_list=dims[::-1]))


def tiny_sam2_config():
    """A SAM 2 of ~100k parameters (~400 kB): 64 px input, a 5-block Hiera of widths 8-64, 32-dim decoder.

    The trunk keeps SAM 2's shape - four stages, query pooling between them, windowed attention with one global
    block (never a stage's first block, whose pooled window must stay non-empty) - so every code path runs."""
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig,
                              Sam2VisionConfig)

    size, dims = 64, [8, 16, 32, 64]
    # initialisation spread 0.25, not transformers' 0.02: with 0.02 the mask logits are ~1e-5, so a mask would be
    # the sign of rounding noise; 0.25 gives logits of a few units and stability scores between 0 and 1
    init = {"initializer_range": 0.25}
    trunk = Sam2HieraDetConfig(hidden_size=8, num_attention_heads=1, image_size=[size, size],
                               blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=dims,
                               num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[4, 2, 2, 1],
                               global_attention_blocks=[3], window_positional_embedding_background_size=[4, 4],
                               mlp_ratio=2.0, **init)
    # the FPN's three finest levels: stride 4, 8 and 16 of the input
    vision = Sam2VisionConfig(backbone_config=trunk, backbone_channel_list=dims[::-1], fpn_hidden_size=32,
                              backbone_feature_sizes=[[size // s, size // s] for s in (4, 8, 16)], **init)
    prompt = Sam2PromptEncoderConfig(hidden_size=32, image_size=size, patch_size=16, mask_input_channels=4)
    decoder = Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                    iou_head_depth=2, iou_head_hidden_dim=32)
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder, **init)


def sam2_processor(config):
    """The ``Sam2Processor`` of a model built in code: its input side, and masks at a quarter of it."""
    from transformers import Sam2ImageProcessor, Sam2Processor

    side = config.prompt_encoder_config.image_size
    return Sam2Processor(image_processor=Sam2ImageProcessor(
        size={"height": side, "width": side}, mask_size={"height": side // 4, "width": side // 4}))


def load_sam2(config: SegmenterConfig) -> tuple[Any, Any, str]:
    """(Sam2Model, Sam2Processor, description) for ``config.weights``."""
    from transformers import Sam2Model, Sam2Processor

    if config.weights != "pretrained":
        cfg = tiny_sam2_config() if config.weights == "tiny" else sam2_config(config.sam2_size)
        torch.manual_seed(TINY_INIT_SEED)
        size = "tiny" if config.weights == "tiny" else f"hiera-{config.sam2_size}"
        return Sam2Model(cfg), sam2_processor(cfg), f"transformers Sam2Model {size} (random weights)"
    name = config.sam2_source
    source = local_folder(name) if looks_local(name) else name
    # Meta's repos hold a sam2_video model: the image model plus video-memory modules the image path never runs
    check_model_type(source, ("sam2", "sam2_video"), label="segmenter.checkpoint", backend="segmenter.backend=sam2",
                     error=SegmenterWeightsError)
    try:
        processor = Sam2Processor.from_pretrained(source)
        # float32 whatever the files hold: the encoder's dtype is segmenter.encoder_dtype, the decoder's float32
        model = Sam2Model.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise SegmenterWeightsError(f"segmenter.checkpoint '{name}' could not be loaded as a transformers "
                                    f"Sam2Model: {one_line(err)}") from None
    return model, processor, f"transformers Sam2Model {name}"


class Sam2Segmenter(BaseSegmenter):
    """SAM 2 through transformers: batched image embeddings, all boxes of an image in one decoder call."""

    backend = "sam2"

    def __init__(self, config: SegmenterConfig, device: str | torch.device | None = None):
        self.config = config
        self.device = resolve_device(device)
        model, self.processor, self.source = load_sam2(config)
        self.model = self._place(model, model.vision_encoder)

    @property
    def settings(self) -> dict[str, Any]:
        return {**self.common_settings(), "sam2_size": self.config.sam2_size}

    @torch.inference_mode()
    def segment_scored(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[ScoredMasks]:
        """As :meth:`segment`, with SAM 2's predicted IoU and the stability score of every mask."""
        out, todo = split_empty(images, boxes)
        for start in range(0, len(todo), self.config.batch_size):
            chunk = todo[start:start + self.config.batch_size]
            pixel_values = self.processor(images=[images[i] for i in chunk], return_tensors="pt")["pixel_values"]
            embeddings = self._embed(pixel_values.to(self.device, self.encoder_dtype))
            self.images_embedded += len(chunk)
            for j, i in enumerate(chunk):
                features = [level[j:j + 1] for level in embeddings]
                out[i] = self._decode(features, np.asarray(boxes[i], dtype=np.float32), images[i].shape[:2])
        return out  # type: ignore[return-value]

    def _embed(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``Sam2Model.get_image_embeddings`` (three feature maps, finest first) with the vision encoder in
        ``encoder_dtype``: its outputs enter the mask decoder's own projections of the two fine levels in float32,
        and the coarsest level gets the learned "no memory" embedding an image without video memory adds."""
        model = self.model
        with model_context(self.device, self.config):
            levels = [f.float() for f in model.vision_encoder(pixel_values, return_dict=True).fpn_hidden_states]
            levels[0] = model.mask_decoder.conv_s0(levels[0])
            levels[1] = model.mask_decoder.conv_s1(levels[1])
        levels[-1] = levels[-1] + model.no_memory_embedding.view(1, -1, 1, 1)
        return [level.float() for level in levels]

    def _decode(self, features: list[torch.Tensor], boxes: np.ndarray, size: tuple[int, int]) -> ScoredMasks:
        # the processor scales pixel boxes to the model's square input without needing the image again
        prompts = self.processor(input_boxes=boxes[None], original_sizes=[list(size)],
                                 return_tensors="pt")["input_boxes"].to(self.device)
        parts = []
        for start in range(0, prompts.shape[1], PROMPTS_PER_CALL):
            with model_context(self.device, self.config):
                result = self.model(image_embeddings=features, input_boxes=prompts[:, start:start + PROMPTS_PER_CALL],
                                    multimask_output=False)
            self.decoder_calls += 1
            logits = self.processor.post_process_masks(result.pred_masks.float(), [list(size)],
                                                       binarize=False)[0][:, 0]
            parts.append(ScoredMasks((logits > MASK_THRESHOLD).cpu().numpy(),
                                     result.iou_scores[0, :, 0].float().cpu().numpy(),
                                     stability_score(logits, MASK_THRESHOLD).cpu().numpy()))
        return concat_masks(parts)
