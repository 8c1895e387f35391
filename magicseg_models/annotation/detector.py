"""Grounding DINO: boxes for the named classes of each image, each box tied to one class through token spans.

How an image's classes become boxes:

1. **Caption.** The detector phrases of the image's classes, lower-cased, joined the authors' way:
   ``"cat. hot dog."``. A phrase's *token span* is the set of caption token positions its characters produced
   (from the fast tokenizer's offsets). A caption longer than the text encoder's window
   (``detector.max_text_tokens``, 256 for Grounding DINO) is cut between phrases into several captions
   (*chunks*), each run as its own pass; the detections of all chunks are merged (LVIS-size vocabularies).
2. **Scores.** The model gives, per query, a probability for every caption token. The box score is the highest
   of them (the authors' ``box_threshold`` test); the score of class ``c`` is the mean probability over ``c``'s
   span (a multi-token name must match as a whole, as in GLIP/mmdet). Each query goes to the class with the
   highest score, and is kept when box score > ``box_threshold`` and class score > ``text_threshold``. The
   class is decided by token *positions*, never by matching decoded text: ``"hot dog. dog."`` has two
   ``dog`` tokens and a box on the second is a ``dog``, not a ``hot dog``.
3. **Merge.** Boxes are clipped to the image, near-duplicates of the same class removed by NMS
   (``detector.nms_iou``), and the ``detector.max_boxes`` best of each class kept. ``best_scores`` holds, for
   each class, the best class score of any query assigned to it before thresholds: what the counterfactual
   check reads.

Speed: images are batched (``detector.batch_size`` per forward, each with its own caption, padded); the text
encoder (BERT) runs once per distinct caption - :class:`TextFeatureCache` sits in place of the model's text
backbone and returns cached features for captions it has seen (an image and its counterfactual share one).

Weights (``detector.weights``): ``pretrained`` loads ``detector.model`` (hub id or folder) with its processor;
``random`` builds the Grounding DINO SwinT architecture at full size and ``tiny`` a few hundred kB version, both
from configs in code with a WordPiece tokenizer made here from the vocabulary's words (no download). The
official backend (``detector.backend=official``) lives in :mod:`magicseg_models.annotation.official`.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from magicseg_models.config import DetectorConfig
from magicseg_models.errors import ConfigError, MagicSegError, one_line

TINY_INIT_SEED = 0
DELIMITERS = ("[CLS]", "[SEP]", ".", "?")  # the tokens Grounding DINO splits phrases at
DEFAULT_SHORT_SIDE, DEFAULT_LONG_SIDE = 800, 1333  # the authors' RandomResize([800], max_size=1333)
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class DetectorWeightsError(MagicSegError):
    """Detector weights or processor cannot be loaded (missing folder, offline hub, wrong checkpoint)."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_context(device: torch.device, dtype: str):
    """Autocast on a GPU when a half dtype is asked for; a CPU always runs float32."""
    if dtype == "float32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


@contextlib.contextmanager
def matmul_tf32(enabled: bool):
    """TF32 for float32 matmuls inside the block only. torch's switch is process-wide, and stages that share a
    process (the generator and the annotator in a plain loop) must each keep their own setting; cuBLAS reads it
    when a matmul is launched, so scoping the calls is enough."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@contextlib.contextmanager
def model_context(device: torch.device, config):
    """One detector or SAM call: autocast to ``config.dtype`` on a GPU, TF32 matmuls when ``config.tf32``."""
    with autocast_context(device, config.dtype), matmul_tf32(config.tf32):
        yield


# ------------------------------------------------------------------------------------------- tokenizer
def _vocabulary_words() -> list[str]:
    from magicseg_models.vocabulary import Vocabulary

    words: set[str] = set()
    for c in Vocabulary.default():
        for text in (c.detector_phrase, c.prompt_name, *c.synonyms):
            words.update(re.findall(r"[a-z0-9]+", text.lower()))
    return sorted(words)


@functools.lru_cache(maxsize=1)
def build_detector_tokenizer():
    """A BERT-style uncased WordPiece tokenizer made here from the builtin vocabulary's words (no download).

    Every word of every class name, prompt name and synonym is one token; anything else falls back to word
    pieces (``a``-``z``, ``##a``-``##z``, digits), so custom vocabularies tokenize too. Ids fit inside BERT's
    30522, so the full-size random model takes them.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", ",", "-", "'", "(", ")", "/", "&"]
    pieces += chars + ["##" + c for c in chars]
    pieces += [w for w in _vocabulary_words() if w not in set(pieces)]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(pieces))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)


# -------------------------------------------------------------------------------------------- captions
def clean_phrase(phrase: str) -> str:
    """Lower case, and no ``.``/``?`` inside (they split phrases in Grounding DINO's text attention)."""
    text = re.sub(r"[.?]", " ", str(phrase).lower())
    return " ".join(text.split())


@dataclass(frozen=True)
class Caption:
    """One detector caption: its text and, for each of its phrases, the token positions that phrase fills."""

    text: str
    spans: tuple[tuple[int, ...], ...]  # token positions of each phrase, in caption order
    phrase_index: tuple[int, ...]  # position of each phrase in the image's phrase list
    num_tokens: int  # with [CLS] and [SEP]


def build_caption(phrases: Sequence[str], tokenizer, phrase_index: Sequence[int] | None = None) -> Caption:
    """``["cat", "hot dog"]`` -> ``"cat. hot dog."`` with each phrase's token span (from character offsets)."""
    cleaned = [clean_phrase(p) for p in phrases]
    if any(not p for p in cleaned):
        raise ValueError(f"empty detector phrase in {list(phrases)!r}")
    starts, text = [], ""
    for p in cleaned:
        starts.append(len(text))
        text += p + ". "
    text = text.rstrip()
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    spans: list[list[int]] = [[] for _ in cleaned]
    for pos, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:  # special tokens have empty offsets
            continue
        for k, (start, p) in enumerate(zip(starts, cleaned)):
            if start <= s and e <= start + len(p):
                spans[k].append(pos)
                break
    for p, span in zip(cleaned, spans):
        if not span:
            raise ValueError(f"phrase {p!r} produced no tokens in caption {text!r}")
    index = tuple(phrase_index) if phrase_index is not None else tuple(range(len(cleaned)))
    return Caption(text, tuple(tuple(s) for s in spans), index, len(enc["input_ids"]))


def plan_captions(phrases: Sequence[str], tokenizer, max_tokens: int) -> list[Caption]:
    """One caption when it fits in ``max_tokens``, else chunks cut between phrases, each within the limit."""
    lengths = [len(tokenizer(clean_phrase(p), add_special_tokens=False)["input_ids"]) + 1 for p in phrases]  # + "."
    chunks: list[list[int]] = []
    used = 2  # [CLS] ... [SEP]
    for k, n in enumerate(lengths):
        if 2 + n > max_tokens:
            raise MagicSegError(f"detector phrase {phrases[k]!r} needs {n + 2} tokens, more than the "
                                f"text encoder's {max_tokens}")
        if not chunks or used + n > max_tokens:
            chunks.append([])
            used = 2
        chunks[-1].append(k)
        used += n
    captions = []
    for members in chunks:
        caption = build_caption([phrases[k] for k in members], tokenizer, phrase_index=members)
        if caption.num_tokens > max_tokens:  # tokenization in context differed: split this chunk further
            half = len(members) // 2
            captions += [build_caption([phrases[k] for k in part], tokenizer, phrase_index=part)
                         for part in (members[:half], members[half:])]
        else:
            captions.append(caption)
    return captions


# ----------------------------------------------------------------------------------------- detections
@dataclass
class Detections:
    """Boxes found in one image. ``labels`` index the image's phrase list (not vocabulary ids)."""

    boxes: np.ndarray  # (N, 4) float32, xyxy in pixels of the original image, inside it
    scores: np.ndarray  # (N,) float32: the class score of each box
    labels: np.ndarray  # (N,) int64: which phrase (class) each box is
    best_scores: np.ndarray  # (P,) float32: best class score of each phrase over all queries, no threshold
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def of_class(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.labels == k)

    @classmethod
    def empty(cls, num_phrases: int = 0) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   np.zeros(num_phrases, np.float32))


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def select_boxes(logits: torch.Tensor, pred_boxes: torch.Tensor, caption: Caption, image_size: tuple[int, int],
                 box_threshold: float, text_threshold: float) -> dict[str, torch.Tensor]:
    """One image x one caption: the queries that pass both thresholds, each with its class.

    ``logits``: (num_queries, max_text_len) raw scores over caption token positions (positions past the
    caption are ``-inf``); ``pred_boxes``: (num_queries, 4) cx, cy, w, h relative to the image;
    ``image_size``: (height, width) in pixels. Returns ``boxes`` (xyxy px, clipped), ``scores``, ``labels``
    (positions in the image's phrase list) and ``best`` (per phrase of this caption, aligned with
    ``caption.phrase_index``).
    """
    probs = logits.float().sigmoid()  # -inf -> 0
    box_score = probs.max(dim=-1).values  # the authors' box score: best token of the whole caption
    class_scores = torch.stack([probs[:, list(span)].mean(dim=-1) for span in caption.spans], dim=-1)
    score, which = class_scores.max(dim=-1)  # each query goes to one class, by token position
    best = torch.stack([torch.where(which == k, score, torch.zeros_like(score)).max()
                        for k in range(len(caption.spans))])
    keep = (box_score > box_threshold) & (score > text_threshold)
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=pred_boxes.device)
    boxes = _cxcywh_to_xyxy(pred_boxes[keep].float()) * scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    index = torch.tensor(caption.phrase_index, dtype=torch.long, device=logits.device)
    return {"boxes": boxes, "scores": score[keep], "labels": index[which[keep]], "best": best}


def merge_selections(parts: Sequence[tuple[Caption, dict[str, torch.Tensor]]], num_phrases: int,
                     nms_iou: float | None, max_boxes: int) -> Detections:
    """The selections of all chunks of one image -> its :class:`Detections`: boxes under a pixel wide or high
    dropped, per-class NMS, at most ``max_boxes`` per class, sorted by score."""
    from torchvision.ops import batched_nms

    best = np.zeros(num_phrases, np.float32)
    if not parts:
        return Detections.empty(num_phrases)
    for caption, sel in parts:
        best[list(caption.phrase_index)] = sel["best"].float().cpu().numpy()
    boxes = torch.cat([sel["boxes"] for _, sel in parts])
    scores = torch.cat([sel["scores"] for _, sel in parts])
    labels = torch.cat([sel["labels"] for _, sel in parts])
    candidates = len(scores)
    ok = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)  # at least a pixel each way
    boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    if nms_iou is not None and len(scores):
        order = batched_nms(boxes, scores, labels, nms_iou)  # sorted by score
    else:
        order = torch.argsort(scores, descending=True)
    rank = torch.zeros_like(order)  # rank of each box within its class, best first
    sorted_labels = labels[order]
    for k in sorted_labels.unique():
        members = sorted_labels == k
        rank[members] = torch.arange(int(members.sum()), device=order.device)
    order = order[rank < max_boxes]
    return Detections(boxes[order].cpu().numpy().astype(np.float32), scores[order].cpu().numpy().astype(np.float32),
                      labels[order].cpu().numpy().astype(np.int64), best,
                      stats={"candidates": candidates, "degenerate": int((~ok).sum()), "kept": len(order)})


def post_process(outputs: Any, captions: Sequence[Caption], image_sizes: Sequence[tuple[int, int]], *,
                 box_threshold: float, text_threshold: float, nms_iou: float | None = None,
                 max_boxes: int = 900) -> list[Detections]:
    """Model outputs for a batch (one caption per image, a single chunk each) -> :class:`Detections`.

    ``outputs`` has ``logits`` (B, num_queries, max_text_len) and ``pred_boxes`` (B, num_queries, 4), as
    :class:`transformers.GroundingDinoForObjectDetection` returns (the official model's ``pred_logits`` /
    ``pred_boxes`` dict works too). The detector uses the same two steps for chunked captions.
    """
    logits = outputs["pred_logits"] if isinstance(outputs, dict) and "pred_logits" in outputs else outputs.logits
    boxes = outputs["pred_boxes"] if isinstance(outputs, dict) else outputs.pred_boxes
    results = []
    for lg, bx, caption, size in zip(logits, boxes, captions, image_sizes):
        sel = select_boxes(lg, bx, caption, size, box_threshold, text_threshold)
        results.append(merge_selections([(caption, sel)], len(caption.spans), nms_iou, max_boxes))
    return results


# ---------------------------------------------------------------------------------------- text cache
class TextFeatureCache(torch.nn.Module):
    """Stands in for Grounding DINO's text backbone (BERT): runs it once per distinct caption.

    Keyed by the caption's token ids (padding stripped). Grounding DINO's phrase-block attention masks and
    position ids are functions of the token ids, and no real token attends to padding, so a caption's features
    do not depend on the batch it comes in; padded positions are returned as zeros (the model masks them
    everywhere downstream). Bounded LRU; bypassed while gradients are enabled.
    """

    def __init__(self, backbone: torch.nn.Module, pad_token_id: int = 0, max_entries: int = 512):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.pad_token_id = pad_token_id
        self.max_entries = max_entries
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def clear(self) -> None:
        self._cache.clear()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, return_dict=True,
                **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        if not self.enabled or torch.is_grad_enabled() or attention_mask is None:
            return self.backbone(input_ids, attention_mask, token_type_ids, position_ids, return_dict=return_dict,
                                 **kwargs)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:  # not what Grounding DINO passes; keep the plain behaviour
            return self.backbone(input_ids, attention_mask, token_type_ids, position_ids, return_dict=return_dict,
                                 **kwargs)
        batch, seq = input_ids.shape
        real = (input_ids != self.pad_token_id).to(torch.long)
        lengths = (real * torch.arange(1, seq + 1, device=input_ids.device)).max(dim=1).values.tolist()
        ids_cpu, tt_cpu = input_ids.cpu(), token_type_ids.cpu()
        keys = [(tuple(ids_cpu[b, :n].tolist()), tuple(tt_cpu[b, :n].tolist())) for b, n in enumerate(lengths)]
        missing: dict[tuple, int] = {}
        for b, key in enumerate(keys):
            if key in self._cache:
                self._cache.move_to_end(key)
            elif key not in missing:
                missing[key] = b
        self.hits += batch - len(missing)
        self.misses += len(missing)
        fresh: dict[tuple, torch.Tensor] = {}
        if missing:
            rows = list(missing.values())
            length = max(lengths[b] for b in rows)
            out = self.backbone(input_ids[rows, :length], attention_mask[rows][..., :length, :length],
                                token_type_ids[rows, :length], position_ids[rows, :length], return_dict=True)
            hidden = out.last_hidden_state
            for j, (key, b) in enumerate(missing.items()):
                fresh[key] = hidden[j, :lengths[b]].detach()
        first = next(iter(fresh.values())) if fresh else self._cache[keys[0]]
        features = first.new_zeros((batch, seq, first.shape[-1]))
        for b, key in enumerate(keys):
            features[b, :lengths[b]] = fresh[key] if key in fresh else self._cache[key]
        for key, value in fresh.items():
            self._cache[key] = value
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        if not return_dict:
            return (features,)
        return BaseModelOutput(last_hidden_state=features)


# ------------------------------------------------------------------------------------------ detectors
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


class BaseDetector:
    """Captions, chunking, batching and merging; a backend supplies ``_forward`` (logits and boxes)."""

    config: DetectorConfig
    device: torch.device
    tokenizer: Any
    max_text_tokens: int

    def __init__(self) -> None:
        self._captions: OrderedDict[tuple[str, ...], list[Caption]] = OrderedDict()
        self.forwards = 0

    def captions_for(self, phrases: Sequence[str]) -> list[Caption]:
        key = tuple(phrases)
        if key not in self._captions:
            self._captions[key] = plan_captions(list(phrases), self.tokenizer, self.max_text_tokens)
            while len(self._captions) > 4096:
                self._captions.popitem(last=False)
        return self._captions[key]

    def _forward(self, images: list[Image.Image], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def detect(self, images: Sequence[Image.Image], phrases: Sequence[Sequence[str]]) -> list[Detections]:
        """Per image, the boxes of its phrases. Images of the same size are batched (``detector.batch_size``),
        each with its own caption; an image with several caption chunks is run once per chunk and the chunks'
        detections merged."""
        if len(images) != len(phrases):
            raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
        items = [(i, caption) for i, ph in enumerate(phrases) if len(ph) for caption in self.captions_for(ph)]
        # same-size images per batch: padding would change the backbone's view of a smaller image, and an
        # image's boxes must not depend on which images it was batched with
        by_size: dict[tuple[int, int], list[tuple[int, Caption]]] = {}
        for item in items:
            by_size.setdefault(images[item[0]].size, []).append(item)
        batches = [group[s:s + self.config.batch_size] for group in by_size.values()
                   for s in range(0, len(group), self.config.batch_size)]
        parts: list[list[tuple[Caption, dict]]] = [[] for _ in images]
        c = self.config
        for chunk in batches:
            batch_images = [images[i] for i, _ in chunk]
            logits, boxes = self._forward(batch_images, [cap.text for _, cap in chunk])
            self.forwards += 1
            for (i, caption), lg, bx in zip(chunk, logits, boxes):
                size = (images[i].height, images[i].width)
                parts[i].append((caption, select_boxes(lg, bx, caption, size, c.box_threshold, c.text_threshold)))
        return [merge_selections(p, len(ph), c.nms_iou, c.max_boxes) for p, ph in zip(parts, phrases)]

    @staticmethod
    def resize_limits(config: DetectorConfig) -> tuple[int, int]:
        if config.image_size is None:
            return DEFAULT_SHORT_SIDE, DEFAULT_LONG_SIDE
        return config.image_size, max(config.image_size, round(config.image_size * DEFAULT_LONG_SIDE
                                                               / DEFAULT_SHORT_SIDE))


class GroundingDinoDetector(BaseDetector):
    """transformers' GroundingDinoForObjectDetection, batched, with the text features cached per caption."""

    def __init__(self, config: DetectorConfig, device: str | torch.device | None = None):
        super().__init__()
        from transformers import GroundingDinoForObjectDetection, GroundingDinoImageProcessor

        self.config = config
        self.device = resolve_device(device)
        short, long = self.resize_limits(config)
        if config.weights == "pretrained":
            from transformers import AutoProcessor

            try:
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

    @property
    def settings(self) -> dict[str, Any]:
        c = self.config
        return {**self.source, "detector_backend": "transformers", "box_threshold": c.box_threshold,
                "text_threshold": c.text_threshold, "max_text_tokens": self.max_text_tokens,
                "image_size": list(self.resize_limits(c)), "nms_iou": c.nms_iou, "max_boxes": c.max_boxes,
                "detector_dtype": c.dtype if self.device.type == "cuda" else "float32", "detector_tf32": c.tf32}

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


def make_detector(config: DetectorConfig, device: str | torch.device | None = None) -> BaseDetector:
    """The detector of ``config.backend``: transformers (default) or the official groundingdino-py."""
    if config.backend == "official":
        from magicseg_models.annotation.official import OfficialGroundingDino

        return OfficialGroundingDino(config, device)
    if config.backend != "transformers":
        raise ConfigError(f"unknown detector.backend {config.backend!r}")
    return GroundingDinoDetector(config, device)
