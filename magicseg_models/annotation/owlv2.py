"""OWLv2 (transformers' ``Owlv2ForObjectDetection``) as a detector backend: ``detector.backend=owlv2``.

How a box gets its class. OWLv2 predicts one box per image patch (3600 for the 960 px base models) and scores it
against every text query with a sigmoid head: logit = (cosine(patch embedding, query embedding) + shift) x scale,
shift and scale computed from the patch alone. Each class phrase of an image is its own query, so Grounding
DINO's caption becomes a list of queries, and a phrase's token span becomes the one position of its query. The
shared :func:`~magicseg_models.annotation.postprocess.select_boxes` then reads, per box: box score = the best class
probability (sigmoid of the logit) over the image's classes; the box goes to that class, and its class score is
that same probability. So a box is kept when its probability is above both ``box_threshold`` and
``text_threshold`` (the larger one decides). :func:`~magicseg_models.annotation.postprocess.merge_selections`
does the rest as for Grounding DINO: boxes under a pixel dropped, per-class NMS, ``max_boxes`` per class, and
``best_scores`` (per class, the best probability of a box that went to it, before thresholds) for the
counterfactual check.

OWLv2's objectness head (a query-agnostic "is this an object" score) is not run: boxes are selected by class
probability, as transformers' own post-processing selects them, and queries are text (image-guided queries are
not used).

Queries do not see one another: adding context phrases leaves the asked classes' logits exactly as they were
(unlike Grounding DINO, where every query attends to the whole caption); only which class a box goes to can
move to a context class.

Batching. The processor pads every image to a square (bottom and right) and resizes it to the model's side, so
images of any size share a forward pass; boxes come out relative to the square and are rescaled here to the
image. Images with different class lists are padded to the same number of queries and the padded ones masked
(probability 0). The text tower runs once per distinct query text per detector (:class:`QueryEmbeddingCache`).

Prompt ensembling (``detector.query_templates``, off by default). Each phrase is queried through every template
(``"a photo of the large {}."``), the text brought to OWL-ViT's canonical form (lower case; anything but letters,
digits, ``-`` and spaces becomes a space; runs of spaces and of dashes collapsed), and the phrase's logits are
the mean of its templates' logits, as OWL-ViT's LVIS evaluator averages the class predictor's outputs over
``CLIP_BEST_PROMPT_TEMPLATES`` (``clip-best`` here). The mean is of logits, not of embeddings: the class head
normalises each query embedding, so averaging embeddings would score a different cosine.

Text window: 16 token positions per query, BOS and EOS included; a phrase whose query (any of its templated
queries) is longer is refused (:class:`PhraseTooLongError`) when first seen, before any forward pass of that call.
A cut query would no longer hold the whole class name.

Weights (``detector.weights``): ``pretrained`` loads ``detector.model`` (hub id or folder; its config must be an
OWLv2's); ``random`` builds owlv2-base-patch16 at 960 px and ``tiny`` a few hundred kB model, both from configs
in code with a CLIP BPE tokenizer made here (no download).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from magicseg_models.annotation.captions import Caption, PhraseTooLongError, clean_phrase
from magicseg_models.annotation.detector_base import BaseDetector, DetectorWeightsError
from magicseg_models.annotation.detector_configs import random_owlv2_config, tiny_owlv2_config
from magicseg_models.annotation.text_cache import LruStore
from magicseg_models.config import DetectorConfig
from magicseg_models.config.build import OWLV2_TEXT_WINDOW
from magicseg_models.devices import model_context, resolve_device
from magicseg_models.errors import ConfigError, one_line
from magicseg_models.weights import TINY_INIT_SEED
from magicseg_models.weights.model_types import check_model_type


@dataclass(frozen=True)
class QueryCaption(Caption):
    """The queries of one image: one per phrase (the span of phrase ``k`` is query position ``k``)."""

    queries: tuple[str, ...] = ()


class QueryEmbeddingCache(LruStore):
    """Normalised text embeddings per query text: the text tower runs once per distinct text (bounded LRU).

    A query's embedding does not depend on the other queries (a causal text tower over its own tokens,
    padding masked), so cached and freshly computed embeddings agree.
    """

    def __init__(self, encode: Callable[[list[str]], torch.Tensor], max_entries: int = 8192):
        super().__init__(max_entries)
        self.encode = encode

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = self.missing(texts)
        fresh = dict(zip(missing, self.encode(missing))) if missing else {}
        rows = [fresh[t] if t in fresh else self[t] for t in texts]
        self.add(fresh)
        return torch.stack(rows)


def canonical_query(text: str) -> str:
    """OWL-ViT's canonical query text: lower case, only ``a-z0-9``, ``-`` and single spaces, stripped."""
    text = re.sub(r"[^a-z0-9\- ]", " ", text.lower())
    return re.sub(r"-+", "-", re.sub(r"\s+", " ", text)).strip()


def build_owlv2_tokenizer():
    """The tiny CLIP BPE tokenizer (no download) set up as OWLv2's: 16 positions, padded with ``!`` (id 0)."""
    from magicseg_models.weights.tiny_tokenizers import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(pad_token="!")
    tokenizer.model_max_length = OWLV2_TEXT_WINDOW
    return tokenizer


class Owlv2Detector(BaseDetector):
    """transformers' Owlv2ForObjectDetection, batched across image sizes, text embeddings cached per phrase."""

    backend = "owlv2"

    def __init__(self, config: DetectorConfig, device: str | torch.device | None = None):
        super().__init__()
        from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor

        self.config = config
        self.device = resolve_device(device)
        if config.weights == "pretrained":
            model, processor = _load_pretrained(config.model)
            self.tokenizer, self.image_processor = processor.tokenizer, processor.image_processor
            self.source = {"detector": config.model, "detector_weights": "pretrained"}
        else:
            self.tokenizer = build_owlv2_tokenizer()
            tok = self.tokenizer
            cfg = (tiny_owlv2_config(len(tok), tok.bos_token_id, tok.eos_token_id, config.image_size or 64)
                   if config.weights == "tiny" else random_owlv2_config())
            torch.manual_seed(TINY_INIT_SEED)  # the same random weights on every worker and rerun
            model = Owlv2ForObjectDetection(cfg)
            self.image_processor = Owlv2ImageProcessor()
            self.source = {"detector": f"owlv2 ({config.weights} weights, local tokenizer)",
                           "detector_weights": config.weights}
        vision = model.config.vision_config
        self.side = config.image_size or vision.image_size
        if self.side % vision.patch_size:
            raise ConfigError(f"detector.image_size {self.side} must be a multiple of the OWLv2 patch size "
                              f"{vision.patch_size}")
        self.image_processor.size = {"height": self.side, "width": self.side}
        self.interpolate = self.side != vision.image_size  # another side: position embeddings interpolated
        self.model = model.to(self.device).eval()
        self.max_text_tokens = min(config.max_text_tokens, model.config.text_config.max_position_embeddings)
        self.templates = tuple(config.query_templates or ())
        self.text_cache = QueryEmbeddingCache(self._encode)
        self._lengths: dict[str, int] = {}

    @property
    def settings(self) -> dict[str, Any]:
        return {**super().settings, "query_templates": list(self.templates) or None}

    def query_texts(self, phrase: str) -> list[str]:
        """The texts a cleaned phrase is queried with: itself, or one per template (canonical form)."""
        if not self.templates:
            return [phrase]
        return [canonical_query(t.replace("{}", phrase)) for t in self.templates]

    def input_size(self) -> list[int]:
        return [self.side, self.side]  # every image is padded to a square and resized to it

    def check_phrases(self, phrases: Sequence[str]) -> list[str]:
        """The cleaned phrases; :class:`PhraseTooLongError` for the first that does not fit the text window."""
        cleaned = [clean_phrase(p) for p in phrases]
        for raw, p in zip(phrases, cleaned):
            if not p:
                raise ValueError(f"empty detector phrase in {list(phrases)!r}")
            for template, query in zip(self.templates or (None,), self.query_texts(p)):
                if query not in self._lengths:
                    self._lengths[query] = len(self.tokenizer(query)["input_ids"])
                if self._lengths[query] > self.max_text_tokens:
                    where = f" as {query!r} (query template {template!r})" if template else ""
                    raise PhraseTooLongError(
                        f"detector phrase {raw!r}{where} needs {self._lengths[query]} tokens, more than OWLv2's "
                        f"text window of {self.max_text_tokens} (BOS and EOS included)")
        return cleaned

    def captions_for(self, phrases: Sequence[str]) -> list[Caption]:
        queries = tuple(self.check_phrases(phrases))
        n = len(queries)
        return [QueryCaption(". ".join(queries) + ".", tuple((k,) for k in range(n)), tuple(range(n)), n, queries)]

    def _encode(self, phrases: list[str]) -> torch.Tensor:
        text = self.tokenizer(phrases, padding="max_length", max_length=self.max_text_tokens, return_tensors="pt")
        embeds = self.model.owlv2.get_text_features(input_ids=text["input_ids"].to(self.device),
                                                    attention_mask=text["attention_mask"].to(self.device))
        embeds = embeds.pooler_output
        return embeds / torch.linalg.norm(embeds, ord=2, dim=-1, keepdim=True)  # as Owlv2Model's forward

    def _batch_key(self, image: Image.Image) -> Any:
        return None  # every image becomes the same square: any sizes share a pass

    def _run(self, images: list[Image.Image], captions: list[Caption]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        per_phrase = max(len(self.templates), 1)
        with torch.inference_mode(), model_context(self.device, self.config):
            # phrase k of an image owns query rows k * per_phrase ... (k + 1) * per_phrase - 1, one per template
            embeds = [self.text_cache([q for p in caption.queries for q in self.query_texts(p)])  # type: ignore
                      for caption in captions]
            width = max(len(e) for e in embeds)
            queries = embeds[0].new_zeros((len(embeds), width, embeds[0].shape[-1]))
            mask = torch.zeros((len(embeds), width), dtype=torch.bool, device=self.device)
            for b, e in enumerate(embeds):
                queries[b, :len(e)], mask[b, :len(e)] = e, True
            feature_map, _ = self.model.image_embedder(pixel_values=pixels, interpolate_pos_encoding=self.interpolate)
            b, h, w, d = feature_map.shape
            feats = feature_map.reshape(b, h * w, d)
            logits, _ = self.model.class_predictor(feats, queries, mask)
            if per_phrase > 1:  # the ensemble: each phrase's logits are the mean over its templates
                logits = logits.float().unflatten(-1, (-1, per_phrase)).mean(dim=-1)
                phrase_mask = mask[:, ::per_phrase]
                logits = torch.where(phrase_mask[:, None, :], logits, torch.finfo(logits.dtype).min)
            boxes = self.model.box_predictor(feats, feature_map, self.interpolate)
        # boxes are relative to the padded square (side = the image's longer side): make them relative to the image
        sizes = torch.tensor([[im.width, im.height] for im in images], dtype=torch.float32)
        scale = (sizes.max(dim=1, keepdim=True).values / sizes).repeat(1, 2).to(boxes.device)
        return logits.float(), boxes.float() * scale[:, None, :]


def _load_pretrained(model_id: str):
    from transformers import AutoProcessor, Owlv2ForObjectDetection

    check_model_type(model_id, ("owlv2",), label="detector.model", backend="detector.backend=owlv2",
                     error=DetectorWeightsError)
    try:
        processor = AutoProcessor.from_pretrained(model_id)
        model = Owlv2ForObjectDetection.from_pretrained(model_id)
    except OSError as err:
        raise DetectorWeightsError(f"detector.model '{model_id}' could not be loaded: {one_line(err)}") from None
    return model, processor
