"""Annotation: Grounding DINO boxes per named class, SAM masks with class ids (COCO RLE) and
SAM's mask scores, context classes, counterfactual and mask-quality checks.

``Annotator(config.annotate, vocabulary)`` is the stage (rows in, rows out). Under it: ``make_detector`` -
``GroundingDinoDetector`` (transformers, default), ``OfficialGroundingDino`` (groundingdino-py) or
``Owlv2Detector`` (transformers OWLv2, one query per class phrase) - and
``make_segmenter`` - ``SamSegmenter`` (segment-anything, default), ``HFSamSegmenter`` (transformers SamModel) or
``Sam2Segmenter`` (SAM 2, transformers Sam2Model).
``post_process``/``select_boxes`` tie each box to one class through the token span of its phrase in the caption.
"""

from magicseg_models.annotation.captions import (
    Caption, PhraseTooLongError, build_caption, clean_phrase, plan_captions,
)
from magicseg_models.annotation.detector import make_detector
from magicseg_models.annotation.detector_base import BaseDetector, DetectorWeightsError
from magicseg_models.annotation.detector_tokenizer import build_detector_tokenizer
from magicseg_models.annotation.grounding_dino import GroundingDinoDetector
from magicseg_models.annotation.owlv2 import Owlv2Detector
from magicseg_models.annotation.postprocess import Detections, post_process, select_boxes
from magicseg_models.annotation.text_cache import TextFeatureCache
from magicseg_models.annotation.sam2_segmenter import Sam2Segmenter
from magicseg_models.annotation.segmenter import (
    HFSamSegmenter,
    SamSegmenter,
    ScoredMasks,
    SegmenterWeightsError,
    build_tiny_sam,
    make_segmenter,
    stability_score,
)
from magicseg_models.annotation.stage import (
    DROP_COUNTERFACTUAL,
    DROP_LOW_MASK_QUALITY,
    DROP_NOT_DETECTED,
    AnnotationInputError,
    Annotator,
    not_detected_reason,
)

__all__ = [
    "DROP_COUNTERFACTUAL",
    "DROP_LOW_MASK_QUALITY",
    "DROP_NOT_DETECTED",
    "AnnotationInputError",
    "Annotator",
    "BaseDetector",
    "Caption",
    "Detections",
    "DetectorWeightsError",
    "GroundingDinoDetector",
    "HFSamSegmenter",
    "Owlv2Detector",
    "PhraseTooLongError",
    "Sam2Segmenter",
    "SamSegmenter",
    "ScoredMasks",
    "SegmenterWeightsError",
    "TextFeatureCache",
    "build_caption",
    "build_detector_tokenizer",
    "build_tiny_sam",
    "clean_phrase",
    "make_detector",
    "make_segmenter",
    "not_detected_reason",
    "plan_captions",
    "post_process",
    "select_boxes",
    "stability_score",
]
