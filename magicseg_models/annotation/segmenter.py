"""SAM: one mask per detector box (box prompt, single-mask output), each image embedded once.

Two backends (``segmenter.backend``):

- ``segment-anything`` (default, the authors'): Meta's package. Images are resized the way ``SamPredictor``
  does (longest side 1024, PIL), normalised, padded, and embedded by the image encoder in batches of
  ``segmenter.batch_size``; then every box of an image is prompted in one mask-decoder call against that
  image's embedding. The masks are the ones ``SamPredictor.predict(box=..., multimask_output=False)`` gives box
  by box (a test checks it), without re-embedding per box or per call. Weights: ``pretrained`` = the
  ``segmenter.checkpoint`` file of ``segmenter.model_type`` (``vit_h`` ``sam_vit_h_4b8939.pth``, ``vit_l``,
  ``vit_b``): a local path or any fsspec URL (``s3://``, ``https://``, ``hf://``), fetched once per node into a
  local cache (:mod:`magicseg_models.weights.fetch`) and read with ``weights_only=True``; ``random`` = that
  architecture at full size, random init; ``tiny`` = a small ``segment_anything.modeling.Sam`` built here
  (64 px input, 2-block ViT).
- ``transformers``: ``SamModel`` + ``SamProcessor``; ``segmenter.checkpoint`` is a hub id or folder
  (``None`` or a ``.pth`` path = ``facebook/sam-vit-<size>`` of ``model_type``); ``random``/``tiny`` build from
  ``SamConfig`` in code.
- ``sam2``: SAM 2 through transformers' ``Sam2Model`` (:mod:`magicseg_models.annotation.sam2_segmenter`).

``segment(images, boxes)`` returns, per image, a boolean array (num_boxes, height, width) at the image's size;
``segment_scored`` returns :class:`ScoredMasks`: those masks with SAM's two quality scores per mask -
``predicted_iou`` (the IoU the mask decoder's own head predicts for the mask it returns) and ``stability_score``
(:func:`stability_score` of the mask logits at the image's size, as segment-anything's automatic mask generator
computes it).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import numpy as np
import torch

from magicseg_models.annotation.sam2_segmenter import Sam2Segmenter
from magicseg_models.annotation.segmenter_base import (  # noqa: F401 - the shared names, importable from here too
    BaseSegmenter,
    PROMPTS_PER_CALL,
    STABILITY_OFFSET,
    ScoredMasks,
    SegmenterWeightsError,
    concat_masks,
    split_empty,
    stability_score,
)
from magicseg_models.devices import model_context, resolve_device
from magicseg_models.config import SegmenterConfig
from magicseg_models.errors import ConfigError, one_line
from magicseg_models.weights import TINY_INIT_SEED
from magicseg_models.weights.model_types import check_model_type
from magicseg_models.weights.fetch import Checkpoint, CheckpointFetchError, local_checkpoint
from magicseg_models.weights.hub import HF_SAM_IDS


def build_tiny_sam():
    """A segment-anything ``Sam`` of a few hundred kB: 64 px input, patch 8, 2 ViT blocks, 32-dim prompts."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    image_size, patch, dim = 64, 8, 32
    torch.manual_seed(TINY_INIT_SEED)
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, patch_size=patch, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
            out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(image_size // patch, image_size // patch),
                                     input_image_size=(image_size, image_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2), transformer_dim=dim, iou_head_depth=2,
            iou_head_hidden_dim=32),
    ).eval()


def _load_sam(config: SegmenterConfig) -> tuple[Any, str, Checkpoint | None]:
    """(SAM, description, the checkpoint file it came from or None) for ``config.weights``."""
    from segment_anything import sam_model_registry

    if config.weights == "tiny":
        return build_tiny_sam(), "segment-anything tiny (random weights)", None
    if config.weights == "random":
        torch.manual_seed(TINY_INIT_SEED)
        return sam_model_registry[config.model_type](checkpoint=None).eval(), \
            f"segment-anything {config.model_type} (random weights)", None
    try:
        checkpoint = local_checkpoint(config.checkpoint_source, label="segmenter.checkpoint")
    except CheckpointFetchError as err:
        raise SegmenterWeightsError(f"{err} (the segment-anything release: sam_vit_h_4b8939.pth, "
                                    "sam_vit_l_0b3195.pth, sam_vit_b_01ec64.pth)") from None
    sam = sam_model_registry[config.model_type](checkpoint=None)
    try:
        state = torch.load(checkpoint.path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
    except (RuntimeError, OSError, ValueError, EOFError) as err:
        raise SegmenterWeightsError(f"segmenter.checkpoint '{checkpoint.source}' is not a SAM "
                                    f"{config.model_type} checkpoint: {_load_error(err)}") from None
    name = checkpoint.source.rstrip("/").rsplit("/", 1)[-1]
    return sam.eval(), f"segment-anything {config.model_type} {name}", checkpoint


def _load_error(err: BaseException) -> str:
    """What went wrong loading a state dict: torch's first line is only "Error(s) in loading state_dict for
    Sam:", so the first concrete line (a missing key, a size mismatch) is the one worth quoting."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return one_line(lines[1], 240)
    return one_line(err)


class SamSegmenter(BaseSegmenter):
    """segment-anything SAM: batched image embeddings, all boxes of an image in one decoder call."""

    backend = "segment-anything"

    def __init__(self, config: SegmenterConfig, device: str | torch.device | None = None):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.config = config
        self.device = resolve_device(device)
        sam, self.source, self.checkpoint = _load_sam(config)
        self.sam = self._place(sam, sam.image_encoder)
        self.transform = ResizeLongestSide(self.sam.image_encoder.img_size)

    @property
    def settings(self) -> dict[str, Any]:
        return {**self.common_settings(), "model_type": self.config.model_type}

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        resized = self.transform.apply_image(image)  # exactly SamPredictor.set_image's resize
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous().float()
        return tensor

    @torch.inference_mode()
    def segment_scored(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[ScoredMasks]:
        """As :meth:`segment`, with SAM's predicted IoU and stability score of every mask."""
        out, todo = split_empty(images, boxes)
        step = self.config.batch_size
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            inputs = [self._prepare(images[i]) for i in chunk]
            input_sizes = [tuple(t.shape[-2:]) for t in inputs]
            batch = torch.stack([self.sam.preprocess(t) for t in inputs])
            with model_context(self.device, self.config):
                embeddings = self.sam.image_encoder(batch.to(self.encoder_dtype)).float()
            self.images_embedded += len(chunk)
            for i, embedding, input_size in zip(chunk, embeddings, input_sizes):
                out[i] = self._decode(embedding[None], np.asarray(boxes[i], dtype=np.float32), input_size,
                                      images[i].shape[:2])
        return out  # type: ignore[return-value]

    def _decode(self, embedding: torch.Tensor, boxes: np.ndarray, input_size: tuple[int, int],
                original_size: tuple[int, int]) -> ScoredMasks:
        sam = self.sam
        parts = []
        prompts = self.transform.apply_boxes_torch(torch.as_tensor(boxes, device=self.device), original_size)
        for start in range(0, len(prompts), PROMPTS_PER_CALL):
            part = prompts[start:start + PROMPTS_PER_CALL]
            with model_context(self.device, self.config):
                sparse, dense = sam.prompt_encoder(points=None, boxes=part, masks=None)
                low_res, iou = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                              multimask_output=False)
            self.decoder_calls += 1
            logits = sam.postprocess_masks(low_res.float(), input_size, original_size)[:, 0]
            parts.append(ScoredMasks((logits > sam.mask_threshold).cpu().numpy(),
                                     iou[:, 0].float().cpu().numpy(),
                                     stability_score(logits, sam.mask_threshold).cpu().numpy()))
        return concat_masks(parts)


# ------------------------------------------------------------------------------------- transformers SAM
def tiny_sam_config():
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64,
                             num_pos_feats=16)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                   iou_head_depth=2, iou_head_hidden_dim=32)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def random_sam_config(model_type: str):
    from transformers import SamConfig, SamVisionConfig

    sizes = {"vit_b": (768, 12, 12, [2, 5, 8, 11]), "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
             "vit_h": (1280, 32, 16, [7, 15, 23, 31])}
    hidden, layers, heads, global_idx = sizes[model_type]
    return SamConfig(vision_config=SamVisionConfig(hidden_size=hidden, num_hidden_layers=layers,
                                                   num_attention_heads=heads, global_attn_indexes=global_idx))


class HFSamSegmenter(BaseSegmenter):
    """transformers' SamModel: the same contract as :class:`SamSegmenter` (embed once, all boxes at once)."""

    backend = "transformers"

    def __init__(self, config: SegmenterConfig, device: str | torch.device | None = None):
        from transformers import SamImageProcessor, SamModel, SamProcessor

        self.config = config
        self.device = resolve_device(device)
        if config.weights == "pretrained":
            name = config.checkpoint
            if not name or name.endswith(".pth"):
                name = HF_SAM_IDS[config.model_type]
            try:
                check_model_type(name, ("sam",), label="segmenter.checkpoint",
                                 backend="segmenter.backend=transformers", error=SegmenterWeightsError)
                self.processor = SamProcessor.from_pretrained(name)
                model = SamModel.from_pretrained(name)
            except OSError as err:
                raise SegmenterWeightsError(f"segmenter.checkpoint '{name}' could not be loaded: "
                                            f"{one_line(err)}") from None
            self.source = f"transformers SamModel {name}"
        else:
            cfg = tiny_sam_config() if config.weights == "tiny" else random_sam_config(config.model_type)
            torch.manual_seed(TINY_INIT_SEED)
            model = SamModel(cfg)
            size = cfg.vision_config.image_size
            self.processor = SamProcessor(image_processor=SamImageProcessor(
                size={"longest_edge": size}, pad_size={"height": size, "width": size},
                mask_size={"longest_edge": size // 4}, mask_pad_size={"height": size // 4, "width": size // 4}))
            self.source = f"transformers SamModel ({config.weights} weights)"
        self.model = self._place(model, model.vision_encoder)

    @property
    def settings(self) -> dict[str, Any]:
        return {**self.common_settings(), "model_type": self.config.model_type}

    @torch.inference_mode()
    def segment_scored(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[ScoredMasks]:
        out, todo = split_empty(images, boxes)
        threshold = 0.0  # SamProcessor.post_process_masks' mask_threshold (and SAM's model.mask_threshold)
        for start in range(0, len(todo), self.config.batch_size):
            chunk = todo[start:start + self.config.batch_size]
            inputs = self.processor(images=[images[i] for i in chunk], return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device, self.encoder_dtype)
            with model_context(self.device, self.config):
                embeddings = self.model.get_image_embeddings(pixel_values).float()
            self.images_embedded += len(chunk)
            for j, i in enumerate(chunk):
                image_boxes = [[list(map(float, b)) for b in np.asarray(boxes[i])]]
                prompt = self.processor(images=[images[i]], input_boxes=image_boxes, return_tensors="pt")
                parts = []
                for s in range(0, len(image_boxes[0]), PROMPTS_PER_CALL):
                    part = prompt["input_boxes"][:, s:s + PROMPTS_PER_CALL].to(self.device)
                    with model_context(self.device, self.config):
                        result = self.model(image_embeddings=embeddings[j:j + 1], input_boxes=part,
                                            multimask_output=False)
                    self.decoder_calls += 1
                    logits = self.processor.post_process_masks(
                        result.pred_masks.float().cpu(), prompt["original_sizes"].cpu(),
                        prompt["reshaped_input_sizes"].cpu(), binarize=False)[0][:, 0]
                    parts.append(ScoredMasks((logits > threshold).numpy(),
                                             result.iou_scores[0, :, 0].float().cpu().numpy(),
                                             stability_score(logits, threshold).numpy()))
                out[i] = concat_masks(parts)
        return out  # type: ignore[return-value]


def make_segmenter(config: SegmenterConfig, device: str | torch.device | None = None):
    """The segmenter of ``config.backend``: segment-anything (default), transformers' SamModel, or SAM 2."""
    if config.backend == "transformers":
        return HFSamSegmenter(config, device)
    if config.backend == "sam2":
        return Sam2Segmenter(config, device)
    if config.backend != "segment-anything":
        raise ConfigError(f"unknown segmenter.backend {config.backend!r}")
    return SamSegmenter(config, device)
