"""The transformers Grounding DINO backend (``detector.backend=transformers``, the default)."""

from __future__ import annotations

import torch
from PIL import Image

from magicseg_models.annotation.captions import DELIMITERS
from magicseg_models.annotation.detector_base import BaseDetector, DetectorWeightsError
from magicseg_models.annotation.detector_configs import random_grounding_dino_config, tiny_grounding_dino_config
from magicseg_models.annotation.detector_tokenizer import build_detector_tokenizer
from magicseg_models.annotation.text_cache import TextFeatureCache
from magicseg_models.config import DetectorConfig
from magicseg_models.devices import model_context, resolve_device
from magicseg_models.errors import one_line
from magicseg_models.weights import TINY_INIT_SEED
from magicseg_models.weights.model_types import check_model_type


class GroundingDinoDetector(BaseDetector):
    """transformers' GroundingDinoForObjectDetection, batched, with the text features cached per caption."""

    backend = "transformers"

    def __init__(self, config: DetectorConfig, device: str | torch.device | None = None):
        super().__init__()
        from transformers import GroundingDinoForObjectDetection, GroundingDinoImageProcessor

        self.config = config
        self.device = resolve_device(device)
        short, long = self.resize_limits(config)
        if config.weights == "pretrained":
            from transformers import AutoProcessor

            try:
                check_model_type(config.model, ("grounding-dino",), label="detector.model",
                                 backend="detector.backend=transformers", error=DetectorWeightsError)
                processor = AutoProcessor.from_pretrained(config.model)
                model = GroundingDinoForObjectDetection.from_pretrained(config.model)
            except OSError as err:
                raise DetectorWeightsError(f"detector.model '{config.model}' could not be loaded: "
                                           f"{one_line(err)}") from None
            self.tokenizer = processor.tokenizer
            self.image_processor = processor.image_processor
            if config.image_size is not None:
                self.image_processor.size = {"shortest_edge": short, "longest_edge": long}
            self.source = {"detector": config.model, "detector_weights": "pretrained"}
        else:
            self.tokenizer = build_detector_tokenizer()
            vocab = len(self.tokenizer)
            cfg = tiny_grounding_dino_config(vocab) if config.weights == "tiny" else random_grounding_dino_config(vocab)
            torch.manual_seed(TINY_INIT_SEED)  # the same random weights on every worker and rerun
            model = GroundingDinoForObjectDetection(cfg)
            self.image_processor = GroundingDinoImageProcessor(size={"shortest_edge": short, "longest_edge": long})
            self.source = {"detector": f"grounding-dino ({config.weights} weights, local tokenizer)",
                           "detector_weights": config.weights}
        # the phrase delimiters by this tokenizer's ids (transformers fills in BERT-base's: the same for the released
        # model, wrong for any other vocabulary)
        ids = self.tokenizer.convert_tokens_to_ids(list(DELIMITERS))
        model.model.special_tokens.copy_(torch.tensor(ids, dtype=model.model.special_tokens.dtype))
        self.model = model.to(self.device).eval()
        inner = self.model.model
        self.text_cache = TextFeatureCache(inner.text_backbone, pad_token_id=self.tokenizer.pad_token_id or 0)
        inner.text_backbone = self.text_cache
        self.max_text_tokens = min(config.max_text_tokens, self.model.config.max_text_len)

    def _forward(self, images: list[Image.Image], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.image_processor(images=images, return_tensors="pt")
        text = self.tokenizer(texts, padding="longest", return_tensors="pt", return_token_type_ids=True)
        inputs = {"pixel_values": pixels["pixel_values"], "pixel_mask": pixels["pixel_mask"],
                  "input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
                  "token_type_ids": text["token_type_ids"]}
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode(), model_context(self.device, self.config):
            out = self.model(**inputs)
        return out.logits.float(), out.pred_boxes.float()
