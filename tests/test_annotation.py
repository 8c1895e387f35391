"""Annotation stage: Grounding DINO boxes per class (token spans, chunks, text cache), SAM masks, keep policy.

Real model classes at tiny size (random weights, fixed seed) and a WordPiece tokenizer made from the vocabulary;
nothing downloads. The official groundingdino-py backend runs at full size with random weights when installed.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from magicseg_models.annotation import (
    DROP_COUNTERFACTUAL,
    DROP_LOW_MASK_QUALITY,
    Annotator,
    Detections,
    GroundingDinoDetector,
    HFSamSegmenter,
    SamSegmenter,
    build_caption,
    build_detector_tokenizer,
    make_segmenter,
    not_detected_reason,
    plan_captions,
    post_process,
)
from magicseg_models.annotation.stage import decide_drop
from magicseg_models.config import AnnotateConfig, DetectorConfig, SegmenterConfig, load_config
from magicseg_models.dataset.codecs import decode_mask
from magicseg_models.dataset.schema import SCHEMA
from magicseg_models.errors import MagicSegError
from magicseg_models.vocabulary import Vocabulary
from tests.helpers_annotation import annotation_rows as _rows
from tests.helpers_annotation import random_image as _image
from tests.helpers_annotation import with_context as _with_context

TINY_DET = dict(weights="tiny", image_size=64)
TINY_SEG = dict(weights="tiny", checkpoint=None, model_type="vit_b")


@pytest.fixture(scope="module")
def tokenizer():
    return build_detector_tokenizer()


@pytest.fixture(scope="module")
def detector():
    return GroundingDinoDetector(DetectorConfig(**TINY_DET))


@pytest.fixture(scope="module")
def tiny_annotate_config():
    return load_config("build", "tiny").annotate


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.load(classes=load_config("build", "tiny").vocabulary.classes)


# ------------------------------------------------------------------------------------ captions, spans
def test_caption_token_spans_follow_positions_not_text(tokenizer):
    caption = build_caption(["Hot dog", "dog", "dogsled", "traffic light"], tokenizer)
    assert caption.text == "hot dog. dog. dogsled. traffic light."
    ids = tokenizer(caption.text)["input_ids"]
    dog = tokenizer.convert_tokens_to_ids("dog")
    hot_dog, lone_dog, dogsled, traffic = caption.spans
    assert [ids[p] for p in hot_dog] == tokenizer.convert_tokens_to_ids(["hot", "dog"])
    assert [ids[p] for p in lone_dog] == [dog]
    assert len(dogsled) > 1 and ids[dogsled[0]] == dog  # a word-piece name that starts with the token "dog"
    assert len(traffic) == 2
    # the same token id sits in three spans; positions never overlap
    assert len({*hot_dog, *lone_dog, *dogsled, *traffic}) == len(hot_dog) + 1 + len(dogsled) + 2
    assert caption.num_tokens == len(ids)


def test_plan_captions_chunks_an_lvis_size_vocabulary(tokenizer):
    phrases = [c.detector_phrase for c in Vocabulary.default()]
    chunks = plan_captions(phrases, tokenizer, 256)
    assert len(chunks) > 1
    assert all(len(tokenizer(c.text)["input_ids"]) == c.num_tokens <= 256 for c in chunks)
    assert [k for c in chunks for k in c.phrase_index] == list(range(len(phrases)))  # each once, in order
    assert len(plan_captions(phrases[:5], tokenizer, 256)) == 1


def _logits_for(caption, lit: dict[int, dict[int, float]], batch_len=256, queries=900):
    """Real-shaped logits (queries x 256): -inf past the caption, -9 elsewhere, chosen token logits per query."""
    logits = torch.full((queries, batch_len), float("-inf"))
    logits[:, :caption.num_tokens] = -9.0
    for q, tokens in lit.items():
        for pos, value in tokens.items():
            logits[q, pos] = value
    return logits


def test_box_to_class_mapping_through_post_processing(tokenizer):
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor
    from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoObjectDetectionOutput

    cap0 = build_caption(["hot dog", "dog", "dogsled"], tokenizer)
    cap1 = build_caption(["traffic light", "person"], tokenizer)
    (hot, hdog), (dog,), sled = cap0.spans
    (traffic, light), (person,) = cap1.spans
    dot = cap0.num_tokens - 2  # the final "." of caption 0
    lit0 = {
        0: {hot: 4.0, hdog: 4.0},  # both words of "hot dog"
        1: {dog: 4.0},  # the lone "dog": the same token id as in "hot dog", another position
        2: {p: 3.0 for p in sled},  # every piece of "dogsled" (its first piece is "dog")
        3: {hdog: 5.0},  # only the "dog" inside "hot dog": decoded text says "dog", the position says hot dog
        4: {dot: 5.0},  # box score from a delimiter only: no class passes the text threshold
        5: {dog: -1.5},  # below the box threshold
    }
    lit1 = {7: {traffic: 2.0, light: 1.0}, 8: {person: 3.0}, 9: {traffic: -0.3}}
    logits = torch.stack([_logits_for(cap0, lit0), _logits_for(cap1, lit1)])
    torch.manual_seed(0)
    pred_boxes = torch.cat([torch.rand(2, 900, 2) * 0.4 + 0.3, torch.rand(2, 900, 2) * 0.2 + 0.1], -1)  # inside
    outputs = GroundingDinoObjectDetectionOutput(logits=logits, pred_boxes=pred_boxes)
    sizes = [(48, 64), (64, 64)]
    det0, det1 = post_process(outputs, [cap0, cap1], sizes, box_threshold=0.3, text_threshold=0.25)

    by_query0 = dict(zip(_query_of(det0, pred_boxes[0], sizes[0]), det0.labels.tolist()))
    assert by_query0 == {0: 0, 1: 1, 2: 2, 3: 0}
    by_query1 = dict(zip(_query_of(det1, pred_boxes[1], sizes[1]), det1.labels.tolist()))
    assert by_query1 == {7: 0, 8: 1}  # query 9: "traffic" 0.43 alone -> the phrase scores 0.21 < 0.25
    # class score = mean probability over the phrase's span
    expected = torch.sigmoid(torch.tensor([4.0, 5.0])).tolist()[0], (torch.sigmoid(torch.tensor(5.0)).item()
                                                                     + torch.sigmoid(torch.tensor(-9.0)).item()) / 2
    assert sorted(det0.scores[det0.labels == 0].tolist()) == pytest.approx(sorted(expected), abs=1e-5)
    assert det0.best_scores.tolist() == pytest.approx([expected[0], torch.sigmoid(torch.tensor(4.0)).item(),
                                                       torch.sigmoid(torch.tensor(3.0)).item()], abs=1e-5)

    # transformers' own post-processing finds the same boxes, but can only name them by decoded text:
    # query 3 comes back as "dog", which a substring match would give to the wrong class
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer)
    input_ids = tokenizer([cap0.text, cap1.text], padding="max_length", max_length=256, return_tensors="pt")
    ref = processor.post_process_grounded_object_detection(outputs, input_ids["input_ids"], threshold=0.3,
                                                           text_threshold=0.25, target_sizes=sizes)[0]
    ref_labels = dict(zip(_query_of_boxes(ref["boxes"], pred_boxes[0], sizes[0]), ref["text_labels"]))
    assert ref_labels[3] == "dog"
    for q in (0, 1, 2, 3):
        j = _query_of(det0, pred_boxes[0], sizes[0]).index(q)
        k = _query_of_boxes(ref["boxes"], pred_boxes[0], sizes[0]).index(q)
        assert det0.boxes[j] == pytest.approx(ref["boxes"][k].numpy(), abs=1e-4)


def _query_of_boxes(boxes, pred_boxes, size) -> list[int]:
    h, w = size
    cx, cy, bw, bh = pred_boxes.unbind(-1)
    ref = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
    return [int((ref - torch.as_tensor(b)).abs().sum(-1).argmin()) for b in boxes]


def _query_of(det: Detections, pred_boxes, size) -> list[int]:
    return _query_of_boxes(det.boxes, pred_boxes, size)


# -------------------------------------------------------------------------------------------- detector
def test_detector_batches_images_and_encodes_each_caption_once(detector):
    images = [Image.fromarray(_image(i, 64, 48 + 8 * i)) for i in range(4)]
    phrases = [["cat"], ["hot dog", "dog"], ["cat"], ["hot dog", "dog"]]
    cache = detector.text_cache
    cache.clear()
    misses = cache.misses
    batched = detector.detect(images, phrases)
    assert cache.misses - misses == 2  # two distinct captions, four images
    one_by_one = [detector.detect([im], [ph])[0] for im, ph in zip(images, phrases)]
    assert cache.misses - misses == 2  # later calls hit the cache
    cache.enabled = False
    try:
        uncached = detector.detect(images, phrases)
    finally:
        cache.enabled = True
    for a, b, c, im in zip(batched, one_by_one, uncached, images):
        for other in (b, c):
            np.testing.assert_allclose(a.boxes, other.boxes, atol=1e-3)
            np.testing.assert_allclose(a.scores, other.scores, atol=1e-4)
            np.testing.assert_array_equal(a.labels, other.labels)
            np.testing.assert_allclose(a.best_scores, other.best_scores, atol=1e-4)
        assert len(a) > 0
        assert (a.boxes[:, 0] >= 0).all() and (a.boxes[:, 2] <= im.width).all()
        assert (a.boxes[:, 1] >= 0).all() and (a.boxes[:, 3] <= im.height).all()
        assert (a.boxes[:, 2] > a.boxes[:, 0]).all() and (a.boxes[:, 3] > a.boxes[:, 1]).all()


def test_a_text_cache_smaller_than_one_batch_still_serves_the_whole_batch(detector):
    """Both detectors' caches are bounded LRUs; a batch with more distinct captions than the cache holds
    gets every caption's own features (values are read before the new ones evict anything)."""
    from magicseg_models.annotation.text_cache import LruStore

    images = [Image.fromarray(_image(i, 64, 64)) for i in range(3)]
    phrases = [["cat"], ["hot dog", "dog"], ["person"]]
    reference = detector.detect(images, phrases)
    cache = detector.text_cache
    saved, cache.store = cache.store, LruStore(max_entries=1)
    try:
        again = detector.detect(images, phrases)
        assert cache.misses == 3 and cache.hits == 0
    finally:
        cache.store = saved
    for a, b in zip(reference, again):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_array_equal(a.labels, b.labels)
    store = LruStore(max_entries=2)
    assert store.missing(["a", "b", "a"]) == ["a", "b"] and (store.hits, store.misses) == (1, 2)
    store.add({"a": 1, "b": 2})
    assert store.missing(["a"]) == []  # "a" is now the most recent, so "b" goes first
    store.add({"c": 3})
    assert "b" not in store and store["a"] == 1 and store["c"] == 3


def test_chunked_captions_give_the_detections_of_single_captions(detector):
    chunked = GroundingDinoDetector(DetectorConfig(**TINY_DET, max_text_tokens=8))
    phrases = ["hot dog", "traffic light", "potted plant", "tv monitor"]
    assert [c.phrase_index for c in chunked.captions_for(phrases)] == [(0, 1), (2, 3)]
    assert len(detector.captions_for(phrases)) == 1
    images = [Image.fromarray(_image(10 + i)) for i in range(2)]
    merged = chunked.detect(images, [phrases] * 2)
    for image, result in zip(images, merged):
        first, second = detector.detect([image, image], [phrases[:2], phrases[2:]])
        for k in range(4):
            single, offset = (first, 0) if k < 2 else (second, 2)
            rows, ref_rows = result.of_class(k), single.of_class(k - offset)
            np.testing.assert_allclose(result.boxes[rows], single.boxes[ref_rows], atol=1e-3)
            np.testing.assert_allclose(result.scores[rows], single.scores[ref_rows], atol=1e-4)
            assert result.best_scores[k] == pytest.approx(single.best_scores[k - offset], abs=1e-4)


# ------------------------------------------------------------------------------------------- segmenter
def test_sam_embeds_each_image_once_and_matches_the_predictor_box_by_box():
    from segment_anything import SamPredictor

    seg = SamSegmenter(SegmenterConfig(**TINY_SEG, batch_size=2))
    images = [_image(1), _image(2, 48, 80), _image(3), _image(4, 80, 40)]
    boxes = [np.array([[2, 3, 40, 50], [10, 10, 60, 60], [0, 0, 64, 64]], np.float32),
             np.array([[0, 0, 79, 47]], np.float32), np.zeros((0, 4), np.float32),
             np.array([[5, 5, 30, 70]], np.float32)]
    masks = seg.segment(images, boxes)
    assert [m.shape for m in masks] == [(3, 64, 64), (1, 48, 80), (0, 64, 64), (1, 80, 40)]
    assert seg.images_embedded == 3 and seg.decoder_calls == 3  # the image without boxes is not embedded
    predictor = SamPredictor(seg.sam)
    for image, image_boxes, image_masks in zip(images, boxes, masks):
        if len(image_boxes):
            predictor.set_image(image)
        for box, mask in zip(image_boxes, image_masks):
            ref, _, _ = predictor.predict(box=box, multimask_output=False)
            np.testing.assert_array_equal(ref[0], mask)


def test_transformers_sam_backend_gives_one_mask_per_box():
    seg = make_segmenter(SegmenterConfig(**TINY_SEG, backend="transformers"))
    assert isinstance(seg, HFSamSegmenter)
    masks = seg.segment([_image(5), _image(6, 40, 72)], [np.array([[1, 2, 30, 40], [0, 0, 64, 64]], np.float32),
                                                         np.array([[3, 3, 70, 38]], np.float32)])
    assert [m.shape for m in masks] == [(2, 64, 64), (1, 40, 72)] and all(m.dtype == bool for m in masks)


def test_unavailable_pretrained_detector_is_one_line_error(tmp_path):
    from magicseg_models.annotation import DetectorWeightsError

    with pytest.raises(DetectorWeightsError, match="could not be loaded") as err:
        GroundingDinoDetector(DetectorConfig(model=str(tmp_path / "no-such-model")))
    assert "\n" not in str(err.value)


def test_missing_sam_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(MagicSegError, match="not found") as err:
        SamSegmenter(SegmenterConfig(model_type="vit_b", checkpoint=str(tmp_path / "sam_vit_b.pth")))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ stage
@pytest.fixture(scope="module")
def annotator(tiny_annotate_config, vocab):
    return Annotator(tiny_annotate_config, vocab)


def test_tiny_annotator_labels_rows_with_class_ids_and_rle_masks(annotator, vocab):
    rows = _rows(vocab, 12, sizes=((64, 64), (48, 80)))
    rows.append({**_rows(vocab, 1, seed=99)[0], "sample_id": "gone", "image": None,
                 "drop_reason": "nsfw"})  # dropped upstream: passes through untouched
    out = annotator(rows)
    assert [r["sample_id"] for r in out] == [r["sample_id"] for r in rows]
    assert out[-1] == rows[-1]
    kept = [r for r in out[:-1] if r["drop_reason"] is None]
    assert len(kept) >= 0.75 * 12  # the tiny preset keeps most samples, so the demo exercises every stage
    for row in kept:
        h, w = row["height"], row["width"]
        assert row["annotations"] and len(row["counterfactual_scores"]) == len(row["class_ids"])
        assert {a["class_id"] for a in row["annotations"]} == set(row["class_ids"])  # keep=all
        for a in row["annotations"]:
            assert a["class_name"] == row["class_names"][row["class_ids"].index(a["class_id"])]
            x0, y0, x1, y1 = a["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            mask = decode_mask(a["mask_rle"], h, w)
            assert mask.shape == (h, w) and int(mask.sum()) == a["area"]
            assert 0 < a["score"] <= 1
    table = pa.Table.from_pylist([{f: r[f] for f in SCHEMA.names} for r in kept], schema=SCHEMA)
    assert table.num_rows == len(kept)
    stats = annotator.stats()
    assert stats["kept"] >= len(kept) and stats["text_cache_hits"] > 0
    assert "counterfactual_threshold" in annotator.settings


def _detections(labels: list[int], num_classes: int, cf: list[float] | None = None) -> Detections:
    n = len(labels)
    return Detections(np.tile(np.array([[1, 1, 5, 5]], np.float32), (n, 1)), np.full(n, 0.9, np.float32),
                      np.array(labels, np.int64), np.zeros(num_classes, np.float32))


@pytest.mark.parametrize("keep, labels, cf_scores, threshold, reason", [
    ("all", [0, 1], [0.1, 0.2], None, None),
    ("all", [0], [0.1, 0.2], None, "class_not_detected:bus (vehicle)"),
    ("all", [], [0.1, 0.2], None, "class_not_detected:cat"),
    ("any", [1], [0.1, 0.2], None, None),
    ("any", [], [0.1, 0.2], None, "class_not_detected:cat"),
    ("all", [0, 1], [0.1, 0.6], 0.5, DROP_COUNTERFACTUAL),
    ("all", [0, 1], [0.1, 0.5], 0.5, None),  # strictly above the threshold
    ("all", [1], [0.9, 0.9], 0.5, "class_not_detected:cat"),  # the keep policy is checked first
])
def test_keep_policy_and_counterfactual_threshold(keep, labels, cf_scores, threshold, reason):
    names = ["cat", "bus (vehicle)"]
    assert decide_drop(_detections(labels, 2), names, cf_scores, keep=keep,
                       counterfactual_threshold=threshold) == reason


def test_annotator_drop_reasons_end_to_end(vocab, tiny_annotate_config, annotator):
    rows = _rows(vocab, 4, seed=3)
    strict = tiny_annotate_config.model_copy(deep=True)
    strict.detector.box_threshold = 1.0  # no score is above 1: nothing is detected
    blind = Annotator(strict, vocab, detector=None, segmenter=annotator.segmenter)
    out = blind(rows)
    assert [r["drop_reason"] for r in out] == [not_detected_reason(r["class_names"][0]) for r in rows]
    assert all(r["annotations"] is None for r in out)
    assert blind.stats()["dropped"] == {not_detected_reason(r["class_names"][0]): 1 for r in rows}

    cf_cfg = tiny_annotate_config.model_copy(update={"counterfactual_threshold": 0.5})
    checker = Annotator(cf_cfg, vocab, detector=annotator.detector, segmenter=annotator.segmenter)
    out = checker(rows)
    for row in out:  # random tiny weights see the classes in the counterfactual too
        assert row["drop_reason"] in (None, DROP_COUNTERFACTUAL)
        assert (row["drop_reason"] == DROP_COUNTERFACTUAL) == (max(row["counterfactual_scores"]) > 0.5)
    assert checker.stats()["dropped"].get(DROP_COUNTERFACTUAL, 0) >= 1


def test_resources_come_from_config():
    assert AnnotateConfig().resources.num_gpus == 0.5
    tiny = load_config("build", "tiny").annotate.resources
    assert tiny.num_gpus == 0.5 and tiny.gpu == "optional"  # a GPU where one can be had, else the CPU, said so
    cfg = load_config("build", "sd15-random")
    assert cfg.annotate.detector.weights == "random" and cfg.annotate.segmenter.model_type == "vit_h"


# --------------------------------------------------------------------------------------- official backend
def test_official_backend_missing_package_names_the_pip_line(monkeypatch):
    from magicseg_models.annotation.detector import make_detector

    monkeypatch.setitem(sys.modules, "groundingdino", None)  # as if the extra were not installed
    with pytest.raises(MagicSegError) as err:
        make_detector(DetectorConfig(backend="official", weights="random"))
    assert "pip install --no-build-isolation groundingdino-py" in str(err.value)
    assert "\n" not in str(err.value)


def test_official_backend_runs_full_size_random_swint_on_a_small_image():
    pytest.importorskip("groundingdino")
    from magicseg_models.annotation.official import OfficialGroundingDino

    det = OfficialGroundingDino(DetectorConfig(backend="official", weights="random", image_size=256,
                                               box_threshold=0.0, text_threshold=0.0, max_boxes=5))
    assert det.model.transformer.num_queries == 900 and det.max_text_tokens == 256
    image = Image.fromarray(_image(0, 200, 256))
    (result,) = det.detect([image], [["hot dog", "dog"]])
    assert 0 < len(result) <= 10 and result.best_scores.shape == (2,)
    assert (result.boxes[:, 2] <= 256).all() and (result.boxes[:, 3] <= 200).all() and (result.boxes >= 0).all()


# ------------------------------------------------------------------------------------------- benchmark
def test_official_checkpoint_loads_its_args_but_never_runs_pickled_code(tmp_path):
    pytest.importorskip("groundingdino")
    import argparse

    from magicseg_models.annotation.official import read_official_checkpoint

    path = tmp_path / "release.pth"
    torch.save({"model": {"module.w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4)}, path)
    assert list(read_official_checkpoint(str(path))) == ["w"]

    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickled code ran')",))

    torch.save({"model": {"w": torch.ones(1)}, "x": Payload()}, path)
    with pytest.raises(MagicSegError, match="cannot be read safely"):
        read_official_checkpoint(str(path))


# ------------------------------------------------------------------------------------------- SAM scores
def test_stability_score_is_segment_anythings_formula():
    """IoU of the mask at logit threshold +1 and -1, checked against an independent re-statement (explicit
    intersection over union) and against segment-anything's own calculate_stability_score."""
    from segment_anything.utils.amg import calculate_stability_score

    from magicseg_models.annotation import stability_score

    logits = torch.tensor([[[3.0, 1.5, 0.5, -0.5, -2.0],
                            [2.0, 0.9, 0.2, -1.5, -3.0],
                            [1.2, 1.0, -0.9, -1.0, -4.0]],
                           [[-5.0, -5.0, -5.0, -5.0, -5.0],  # nothing above -1: empty mask, score 0
                            [-5.0, -5.0, -5.0, -5.0, -5.0],
                            [-5.0, -5.0, -5.0, -5.0, -5.0]],
                           [[4.0, 4.0, 0.0, 0.0, 0.0],  # 4 logits above +1, 7 above -1
                            [4.0, 4.0, -3.0, -3.0, -3.0],
                            [-3.0, -3.0, -3.0, -3.0, -3.0]]])
    high, low = (logits > 1.0).numpy(), (logits > -1.0).numpy()
    inter, union = (high & low).sum((1, 2)), (high | low).sum((1, 2))
    expected = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    # by hand for the first mask: 4 logits above +1 (3, 1.5, 2, 1.2; 1.0 is not above), 10 above -1
    assert inter[0] == 4 and union[0] == 10 and expected[2] == pytest.approx(4 / 7)
    ours = stability_score(logits, 0.0, 1.0).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    official = calculate_stability_score(logits, 0.0, 1.0)
    np.testing.assert_allclose(ours[[0, 2]], official[[0, 2]].numpy(), rtol=1e-6)  # SAM's is NaN when empty
    # another threshold moves both cut-offs
    np.testing.assert_allclose(stability_score(logits, 0.5, 1.0).numpy()[0], (logits[0] > 1.5).sum() /
                               (logits[0] > -0.5).sum(), rtol=1e-6)


def test_sam_scores_are_the_predictors_iou_and_stability():
    from segment_anything import SamPredictor
    from segment_anything.utils.amg import calculate_stability_score

    seg = SamSegmenter(SegmenterConfig(**TINY_SEG, batch_size=2))
    images = [_image(1), _image(2, 48, 80)]
    boxes = [np.array([[2, 3, 40, 50], [10, 10, 60, 60]], np.float32), np.array([[0, 0, 79, 47]], np.float32)]
    results = seg.segment_scored(images, boxes)
    predictor = SamPredictor(seg.sam)
    for image, image_boxes, result in zip(images, boxes, results):
        predictor.set_image(image)
        assert result.masks.shape[0] == result.predicted_iou.shape[0] == result.stability_score.shape[0]
        for j, box in enumerate(image_boxes):
            logits, iou, _ = predictor.predict(box=box, multimask_output=False, return_logits=True)
            np.testing.assert_array_equal(result.masks[j], logits[0] > seg.sam.mask_threshold)
            assert result.predicted_iou[j] == pytest.approx(float(iou[0]), abs=1e-5)
            ref = calculate_stability_score(torch.as_tensor(logits), seg.sam.mask_threshold, 1.0)
            assert result.stability_score[j] == pytest.approx(float(ref[0]), abs=1e-6)


def test_transformers_sam_backend_gives_the_scores_too():
    seg = make_segmenter(SegmenterConfig(**TINY_SEG, backend="transformers"))
    images = [_image(5), _image(6, 40, 72)]
    boxes = [np.array([[1, 2, 30, 40], [0, 0, 64, 64]], np.float32), np.array([[3, 3, 70, 38]], np.float32)]
    results = seg.segment_scored(images, boxes)
    for result, plain, image_boxes in zip(results, seg.segment(images, boxes), boxes):
        np.testing.assert_array_equal(result.masks, plain)
        assert result.predicted_iou.shape == result.stability_score.shape == (len(image_boxes),)
        assert np.isfinite(result.predicted_iou).all()
        assert ((result.stability_score >= 0) & (result.stability_score <= 1)).all()


# ------------------------------------------------------------------------------------- context classes
def test_context_classes_are_masked_as_not_asked_and_change_no_asked_label(tiny_annotate_config, vocab, annotator):
    rows = _with_context(_rows(vocab, 6, seed=11), vocab)
    off = Annotator(tiny_annotate_config.model_copy(update={"context_classes": False}), vocab,
                    detector=annotator.detector, segmenter=annotator.segmenter)
    on = Annotator(tiny_annotate_config, vocab, detector=annotator.detector, segmenter=annotator.segmenter)
    without, with_context = off(rows), on(rows)
    assert [r["drop_reason"] for r in with_context] == [r["drop_reason"] for r in without]
    kept = [k for k, r in enumerate(with_context) if r["drop_reason"] is None]
    assert kept
    for k in kept:
        asked = [a for a in with_context[k]["annotations"] if a["asked"]]
        assert asked == without[k]["annotations"]  # the very same boxes, scores and masks
        assert all(a["asked"] for a in without[k]["annotations"])
        context = [a for a in with_context[k]["annotations"] if not a["asked"]]
        assert {a["class_id"] for a in context} <= set(rows[k]["context_class_ids"])
        assert with_context[k]["annotations"] == asked + context  # asked first, then context
        assert with_context[k]["context_class_ids"] == rows[k]["context_class_ids"]
        assert with_context[k]["counterfactual_scores"] == without[k]["counterfactual_scores"]
        for a in context:
            assert a["class_name"] == vocab[a["class_id"]].name and 0 <= a["box_fill"] <= 1
            assert 0 <= a["stability_score"] <= 1 and a["predicted_iou"] is not None
    # random tiny weights find (nearly) everything they are asked for: context objects are found
    assert on.stats()["context_instances"] > 0 and off.stats()["context_instances"] == 0
    table = pa.Table.from_pylist([{f: with_context[k][f] for f in SCHEMA.names} for k in kept], schema=SCHEMA)
    assert table.num_rows == len(kept)


def test_context_phrases_share_the_asked_caption_or_are_chunked(tiny_annotate_config, vocab, annotator):
    """Asked phrases first, then the context phrases: one caption (one batched forward for the batch) when it fits
    the text budget, chunks otherwise - and the chunked context pass finds the same context boxes."""
    rows = _with_context(_rows(vocab, 2, seed=21), vocab)
    phrases = [[vocab[i].detector_phrase for i in r["class_ids"] + r["context_class_ids"]] for r in rows]
    detector = annotator.detector
    assert all(len(detector.captions_for(p)) == 1 for p in phrases)
    small = tiny_annotate_config.model_copy(deep=True)
    small.detector.max_text_tokens = 8  # "[CLS] cat. dog. bus. [SEP]": at most three one-token phrases
    chunked = Annotator(small, vocab, segmenter=annotator.segmenter)
    assert max(len(p) for p in phrases) == 4 and any(len(chunked.detector.captions_for(p)) > 1 for p in phrases)
    before = detector.forwards
    shared = Annotator(tiny_annotate_config, vocab, detector=detector, segmenter=annotator.segmenter)(rows)
    kept = sum(r["drop_reason"] is None for r in shared)
    # one forward for the 2 images + 2 counterfactuals (batch_size 4), one for the kept images' context caption
    assert detector.forwards - before == 1 + (kept > 0)
    assert chunked(rows)  # runs; boxes differ (another caption), the contract holds
    for row in chunked(rows):
        for a in row["annotations"] or []:
            assert a["asked"] == (a["class_id"] in row["class_ids"])


def test_mask_thresholds_drop_samples_with_a_poor_asked_mask(tiny_annotate_config, vocab, annotator):
    rows = _with_context(_rows(vocab, 8, seed=5), vocab)
    plain = Annotator(tiny_annotate_config, vocab, detector=annotator.detector, segmenter=annotator.segmenter)
    base = plain(rows)
    worst = {k: min(a["predicted_iou"] for a in r["annotations"] if a["asked"]) for k, r in enumerate(base)
             if r["drop_reason"] is None}
    assert len(set(worst.values())) > 1
    cut = sorted(worst.values())[len(worst) // 2]  # about half the kept samples have an asked mask below
    strict = Annotator(tiny_annotate_config.model_copy(update={"predicted_iou_min": cut}), vocab,
                       detector=annotator.detector, segmenter=annotator.segmenter)
    out = strict(rows)
    for k, row in enumerate(out):
        if k not in worst:
            assert row["drop_reason"] == base[k]["drop_reason"]  # dropped before: for the same reason
        elif worst[k] < cut:
            assert row["drop_reason"] == DROP_LOW_MASK_QUALITY and row["annotations"] is None
        else:
            assert row["drop_reason"] is None and row["annotations"] == base[k]["annotations"]
    dropped = sum(v < cut for v in worst.values())
    assert dropped >= 1 and strict.stats()["dropped"][DROP_LOW_MASK_QUALITY] == dropped
    assert strict.stats()["kept"] == len(worst) - dropped
    assert strict.settings["predicted_iou_min"] == cut and strict.settings["context_classes"] is True
    # a context instance below the threshold never drops a sample
    from magicseg_models.annotation.stage import mask_quality_drop

    assert mask_quality_drop([{"asked": False, "box_fill": 0.0}], {"box_fill": 0.5}) is None
    assert mask_quality_drop([{"asked": True, "box_fill": None}], {"box_fill": 0.5}) is None
    assert mask_quality_drop([{"asked": True, "box_fill": 0.4}], {"box_fill": 0.5}) == DROP_LOW_MASK_QUALITY
