"""OWLv2 as a detector backend: the batched path equals transformers' own single-image path, boxes go to classes
by the shared rule, weights load from a folder and an offline Hugging Face cache, and the Annotator runs on it.

A tiny OWLv2 built from a config (random weights, fixed seed) with a CLIP tokenizer made here; nothing downloads.
Tolerances: boxes 1e-4 px, scores and logits 1e-5 (float32; batching and padding change only summation order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magicseg_models.annotation import (
    DROP_COUNTERFACTUAL,
    Annotator,
    DetectorWeightsError,
    make_detector,
    not_detected_reason,
    select_boxes,
)
from magicseg_models.annotation.owlv2 import Owlv2Detector, PhraseTooLongError
from magicseg_models.config import DetectorConfig, load_config
from magicseg_models.config.build import OWLV2_MODEL
from magicseg_models.errors import ConfigError
from magicseg_models.vocabulary import Vocabulary
from tests import tiny_repos
from tests.helpers_annotation import annotation_rows, random_image, with_context

ROOT = Path(__file__).resolve().parents[1]
TINY_OWL = dict(backend="owlv2", weights="tiny", image_size=64)
EVERYTHING = dict(box_threshold=0.0, text_threshold=0.0, nms_iou=None, max_boxes=10_000)  # no selection at all
SIZES = [(64, 64), (48, 80), (80, 40), (56, 72)]
PHRASES = [["cat"], ["hot dog", "dog"], ["cat", "person", "car"], ["dog", "bus"]]


@pytest.fixture(scope="module")
def detector():
    return Owlv2Detector(DetectorConfig(**TINY_OWL, **EVERYTHING, batch_size=2))


def _images(seed: int = 0) -> list[Image.Image]:
    return [Image.fromarray(random_image(seed + k, h, w)) for k, (h, w) in enumerate(SIZES)]


def _reference(detector: Owlv2Detector, image: Image.Image, queries: list[str]):
    """transformers' own single-image path: the processor on one image with its queries, the model's forward."""
    from transformers import Owlv2Processor

    processor = Owlv2Processor(image_processor=detector.image_processor, tokenizer=detector.tokenizer)
    inputs = processor(text=[queries], images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = detector.model(**inputs)
    return processor, outputs


def _clip(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return boxes


def test_batched_path_equals_transformers_single_image_path(detector):
    images = _images()
    before = detector.forwards
    found = detector.detect(images, PHRASES)
    assert detector.forwards - before == 2  # four sizes, batch_size 2: every image is the same square inside
    for image, queries, det in zip(images, PHRASES, found):
        processor, outputs = _reference(detector, image, queries)
        h, w = image.height, image.width
        [ref] = processor.post_process_grounded_object_detection(outputs, threshold=0.0, target_sizes=[(h, w)])
        boxes = _clip(ref["boxes"].numpy(), h, w)
        ok = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)  # the shared degenerate rule
        order = np.argsort(-ref["scores"].numpy()[ok], kind="stable")
        np.testing.assert_allclose(det.boxes, boxes[ok][order], atol=1e-4)
        np.testing.assert_allclose(det.scores, ref["scores"].numpy()[ok][order], atol=1e-5)
        np.testing.assert_array_equal(det.labels, ref["labels"].numpy()[ok][order])
        assert det.stats["candidates"] == len(ref["scores"]) and det.stats["degenerate"] == int((~ok).sum())
        # best_scores: per class, the best probability of a box that went to it, degenerate boxes included
        probs = outputs.logits[0].sigmoid()
        score, label = probs.max(-1)
        best = [float(torch.where(label == k, score, 0.0).max()) for k in range(len(queries))]
        np.testing.assert_allclose(det.best_scores, best, atol=1e-5)


def test_padded_queries_are_masked_and_raw_outputs_match(detector):
    """Two images of different sizes and class counts in one pass: the real queries' logits and the boxes are
    transformers' own; the padded query positions score nothing."""
    images = _images(3)[1:3]
    queries = [PHRASES[1], PHRASES[2]]
    logits, boxes = detector._run(images, [detector.captions_for(q)[0] for q in queries])
    assert logits.shape[-1] == 3
    for b, (image, q) in enumerate(zip(images, queries)):
        _, outputs = _reference(detector, image, q)
        torch.testing.assert_close(logits[b, :, :len(q)], outputs.logits[0], atol=1e-5, rtol=0)
        assert (logits[b, :, len(q):].sigmoid() == 0).all()
        side = max(image.size)  # transformers' boxes are relative to the padded square, ours to the image
        scale = torch.tensor([side / image.width, side / image.height] * 2)
        torch.testing.assert_close(boxes[b], outputs.pred_boxes[0] * scale, atol=1e-5, rtol=0)


def test_each_phrase_is_encoded_once_and_the_cache_changes_nothing(detector):
    cache = detector.text_cache
    cache.clear()
    hits, misses = cache.hits, cache.misses
    first = detector.detect(_images(), PHRASES)
    assert cache.misses - misses == 6  # cat, hot dog, dog, person, car, bus
    assert cache.hits - hits == 2  # 8 phrases: the second cat and the second dog were cached
    again = detector.detect(_images(), PHRASES)
    assert cache.misses - misses == 6
    one_by_one = [detector.detect([im], [ph])[0] for im, ph in zip(_images(), PHRASES)]
    for a, b, c in zip(first, again, one_by_one):
        for other in (b, c):
            np.testing.assert_allclose(a.boxes, other.boxes, atol=1e-4)
            np.testing.assert_allclose(a.scores, other.scores, atol=1e-5)
            np.testing.assert_array_equal(a.labels, other.labels)


def test_assignment_and_thresholds_follow_the_restated_rule():
    """On the model's raw logits: box score = best class probability, the box goes to that class, kept when
    above both thresholds; then per class the best ``max_boxes``. Restated here in numpy."""
    box_threshold, text_threshold, max_boxes = 0.505, 0.5, 3
    det = Owlv2Detector(DetectorConfig(**TINY_OWL, box_threshold=box_threshold, text_threshold=text_threshold,
                                       nms_iou=None, max_boxes=max_boxes))
    image, queries = Image.fromarray(random_image(7, 56, 64)), ["cat", "person", "car"]
    [found] = det.detect([image], [queries])
    _, outputs = _reference(det, image, queries)
    probs = outputs.logits[0].sigmoid().numpy()
    side = max(image.size)
    cx, cy, bw, bh = (outputs.pred_boxes[0].numpy() * side).T
    boxes = _clip(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1), image.height, image.width)
    label, score = probs.argmax(-1), probs.max(-1)
    keep = (score > max(box_threshold, text_threshold)) & ((boxes[:, 2] - boxes[:, 0]) >= 1) \
        & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    expected = []
    for k in range(len(queries)):
        rows = np.flatnonzero(keep & (label == k))
        expected += [(k, score[j], tuple(boxes[j])) for j in rows[np.argsort(-score[rows])][:max_boxes]]
    expected.sort(key=lambda e: -e[1])
    assert 0 < len(expected) < keep.size  # the thresholds cut, and leave something
    np.testing.assert_array_equal(found.labels, [e[0] for e in expected])
    np.testing.assert_allclose(found.scores, [e[1] for e in expected], atol=1e-5)
    np.testing.assert_allclose(found.boxes, [e[2] for e in expected], atol=1e-4)
    # the two thresholds test the same number: a box between them is out whichever one is higher
    swapped = Owlv2Detector(DetectorConfig(**TINY_OWL, box_threshold=text_threshold, text_threshold=box_threshold,
                                           nms_iou=None, max_boxes=max_boxes))
    np.testing.assert_array_equal(swapped.detect([image], [queries])[0].labels, found.labels)


def test_a_padded_query_never_takes_a_box():
    """select_boxes on OWLv2-shaped logits: a query position past the image's phrases (masked to the dtype's
    minimum) is never a class, and best_scores cover the real phrases only."""
    det = Owlv2Detector(DetectorConfig(**TINY_OWL))
    [caption] = det.captions_for(["cat", "dog"])
    logits = torch.tensor([[2.0, -1.0, torch.finfo(torch.float32).min], [-3.0, 0.5, torch.finfo(torch.float32).min],
                           [-5.0, -5.0, torch.finfo(torch.float32).min]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 3)
    sel = select_boxes(logits, boxes, caption, (64, 64), 0.3, 0.25)
    assert sel["labels"].tolist() == [0, 1] and sel["best"].shape == (2,)
    torch.testing.assert_close(sel["scores"], torch.tensor([2.0, 0.5]).sigmoid())


def test_context_phrases_leave_the_asked_classes_scores_unchanged(detector):
    image = [Image.fromarray(random_image(9, 48, 64))]
    asked, context = ["cat", "dog"], ["person", "car"]
    alone, _ = detector._run(image, detector.captions_for(asked))
    shared, _ = detector._run(image, detector.captions_for(asked + context))
    torch.testing.assert_close(shared[..., :2], alone, atol=1e-6, rtol=0)  # each query is scored on its own
    [without] = detector.detect(image, [asked])
    [with_ctx] = detector.detect(image, [asked + context])
    # a box can only move from an asked class to a context class, never between asked classes
    rows = with_ctx.labels < 2
    lookup = {tuple(np.round(b, 3)): (k, s) for b, k, s in zip(without.boxes, without.labels, without.scores)}
    for box, k, s in zip(with_ctx.boxes[rows], with_ctx.labels[rows], with_ctx.scores[rows]):
        assert lookup[tuple(np.round(box, 3))][0] == k and lookup[tuple(np.round(box, 3))][1] == pytest.approx(s)


def test_a_phrase_past_the_text_window_is_refused_in_one_line(detector):
    fits = " ".join(["cat"] * 14)  # 14 tokens + BOS + EOS = the 16-position window
    assert detector.check_phrases([fits]) == [fits]
    too_long = " ".join(["cat"] * 15)
    before = detector.forwards
    with pytest.raises(PhraseTooLongError) as err:
        detector.detect(_images()[:2], [["dog"], ["cat", too_long]])
    assert detector.forwards == before  # refused before any forward pass of the call
    message = str(err.value)
    assert "\n" not in message and too_long in message and "17 tokens" in message and "16" in message


# ------------------------------------------------------------------------------------------ prompt ensemble
TEMPLATES = ["a photo of a {}.", "{} in the SCENE!", "art of the {}"]


def _owl_vit_canonical(text: str) -> str:
    """OWL-ViT's ``_canonicalize_string`` restated: lower case, every character outside a-z, 0-9, '-' and space
    becomes a space, whitespace runs and dash runs become one, ends stripped."""
    out = "".join(ch if ch in "abcdefghijklmnopqrstuvwxyz0123456789- " else " " for ch in text.lower())
    while "  " in out or "--" in out:
        out = out.replace("  ", " ").replace("--", "-")
    return out.strip()


def test_prompt_ensemble_is_the_mean_of_transformers_logits_over_templates():
    """OWL-ViT's LVIS evaluator: each template's queries through the model, the class logits averaged over the
    templates, then the sigmoid. Here each template is one plain transformers forward on the canonical texts."""
    ens = Owlv2Detector(DetectorConfig(**TINY_OWL, **EVERYTHING, query_templates=TEMPLATES, batch_size=2))
    images = _images(5)[:2]
    queries = [PHRASES[1], PHRASES[2]]  # different class counts: padded query rows in one pass
    logits, boxes = ens._run(images, [ens.captions_for(q)[0] for q in queries])
    assert logits.shape[-1] == 3
    for b, (image, q) in enumerate(zip(images, queries)):
        per_template = [_reference(ens, image, [_owl_vit_canonical(t.replace("{}", p)) for p in q])[1]
                        for t in TEMPLATES]
        expected = torch.stack([o.logits[0] for o in per_template]).mean(dim=0)
        torch.testing.assert_close(logits[b, :, :len(q)], expected, atol=1e-5, rtol=0)
        assert (logits[b, :, len(q):].sigmoid() == 0).all()
        side = max(image.size)
        scale = torch.tensor([side / image.width, side / image.height] * 2)
        torch.testing.assert_close(boxes[b], per_template[0].pred_boxes[0] * scale, atol=1e-5, rtol=0)
    # the ensemble scores differ from the bare phrase's (the templates change what is detected)
    bare = Owlv2Detector(DetectorConfig(**TINY_OWL, **EVERYTHING))
    [found], [plain] = ens.detect(images[:1], queries[:1]), bare.detect(images[:1], queries[:1])
    assert np.abs(found.best_scores - plain.best_scores).max() > 1e-3
    assert ens.settings["query_templates"] == TEMPLATES and bare.settings["query_templates"] is None
    assert ens.text_cache.misses == len({_owl_vit_canonical(t.replace("{}", p)) for t in TEMPLATES
                                         for q in queries for p in q})


def test_the_one_template_ensemble_of_the_bare_phrase_is_the_bare_detector(detector):
    one = Owlv2Detector(DetectorConfig(**TINY_OWL, **EVERYTHING, query_templates=["{}"], batch_size=2))
    for a, b in zip(detector.detect(_images(), PHRASES), one.detect(_images(), PHRASES)):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_a_templated_query_past_the_text_window_is_refused_naming_the_template():
    ens = Owlv2Detector(DetectorConfig(**TINY_OWL, query_templates=["{}", "a photo of the large {} in a video game"]))
    phrase = " ".join(["cat"] * 8)  # alone it fits: 8 + BOS + EOS; inside the second template it does not
    with pytest.raises(PhraseTooLongError) as err:
        ens.check_phrases([phrase])
    message = str(err.value)
    assert "\n" not in message and phrase in message and "a photo of the large {} in a video game" in message
    Owlv2Detector(DetectorConfig(**TINY_OWL)).check_phrases([phrase])


def test_query_template_settings():
    named = load_config("build", "tiny", overrides=["annotate.detector.backend=owlv2",
                                                    "annotate.detector.query_templates=clip-best"])
    templates = named.annotate.detector.query_templates
    assert len(templates) == 7 and "a photo of the small {}." in templates  # OWL-ViT's CLIP_BEST_PROMPT_TEMPLATES
    for setting, message in [
        ("annotate.detector.query_templates=clip-bset", "no template set 'clip-bset' \\(did you mean 'clip-best'"),
        ("annotate.detector.query_templates=[a photo]", "must hold '{}' \\(the class phrase\\) once"),
        ("annotate.detector.query_templates=['{} and {}']", "must hold '{}'"),
        ("annotate.detector.query_templates=[]", "is empty"),
    ]:
        with pytest.raises(ConfigError, match=message) as err:
            load_config("build", "tiny", overrides=["annotate.detector.backend=owlv2", setting])
        assert "\n" not in str(err.value)
    # other templates are another dataset: a resume that changes them is refused like any detector change
    from magicseg_models.config import public_config
    from magicseg_models.config.rerun import config_differences

    plain = load_config("build", "tiny", overrides=["annotate.detector.backend=owlv2"])
    assert config_differences(public_config(plain), public_config(named)) == [
        "annotate.detector.query_templates"]
    with pytest.raises(ConfigError, match="query_templates is for backend owlv2") as err:
        load_config("build", "tiny", overrides=["annotate.detector.query_templates=clip-best"])
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------- weights
def _detections_json(det) -> list[dict]:
    return [{"boxes": d.boxes.tolist(), "scores": d.scores.tolist(), "labels": d.labels.tolist(),
             "best": d.best_scores.tolist()} for d in det]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x["boxes"], y["boxes"], atol=1e-4)
        np.testing.assert_allclose(x["scores"], y["scores"], atol=1e-5)
        assert x["labels"] == y["labels"]
        np.testing.assert_allclose(x["best"], y["best"], atol=1e-5)


_DETECT_SNIPPET = """
import json, sys
import numpy as np
from PIL import Image
from magicseg_models.annotation import make_detector
from magicseg_models.config import DetectorConfig
from tests.helpers_annotation import random_image
det = make_detector(DetectorConfig(backend="owlv2", weights="pretrained", model=sys.argv[1]))
images = [Image.fromarray(random_image(k, h, w)) for k, (h, w) in enumerate([(64, 64), (48, 80)])]
found = det.detect(images, [["cat"], ["hot dog", "dog"]])
print(json.dumps([{"boxes": d.boxes.tolist(), "scores": d.scores.tolist(), "labels": d.labels.tolist(),
                   "best": d.best_scores.tolist()} for d in found]))
print(json.dumps(det.settings))
"""


def test_pretrained_from_a_folder_and_an_offline_hub_cache_match_the_in_memory_model(tmp_path):
    folder = tiny_repos.save_tiny_owlv2(tmp_path / "owl")
    images = [Image.fromarray(random_image(k, h, w)) for k, (h, w) in enumerate([(64, 64), (48, 80)])]
    phrases = [["cat"], ["hot dog", "dog"]]
    memory = _detections_json(Owlv2Detector(DetectorConfig(**TINY_OWL)).detect(images, phrases))
    loaded = make_detector(DetectorConfig(backend="owlv2", weights="pretrained", model=str(folder)))
    assert isinstance(loaded, Owlv2Detector) and loaded.settings["detector"] == str(folder)
    _assert_same(_detections_json(loaded.detect(images, phrases)), memory)

    hf_home = tmp_path / "hf"
    tiny_repos.put_in_hf_cache(hf_home, "tiny-org/tiny-owlv2", folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", _DETECT_SNIPPET, "tiny-org/tiny-owlv2"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stderr
    detections, settings = [json.loads(line) for line in result.stdout.strip().splitlines()[-2:]]
    _assert_same(detections, memory)
    assert settings["detector"] == "tiny-org/tiny-owlv2" and settings["detector_backend"] == "owlv2"


def test_missing_or_foreign_weights_are_one_line_errors(tmp_path):
    with pytest.raises(DetectorWeightsError, match="could not be loaded") as err:
        Owlv2Detector(DetectorConfig(backend="owlv2", model=str(tmp_path / "no-such-model")))
    assert "\n" not in str(err.value)
    gd = tiny_repos.save_tiny_grounding_dino(tmp_path / "gd")
    with pytest.raises(DetectorWeightsError, match="is a grounding-dino model, not the owlv2 that detector.backend=owlv2 loads") as err:
        Owlv2Detector(DetectorConfig(backend="owlv2", model=str(gd)))
    assert "\n" not in str(err.value)


def test_random_weights_build_owlv2_base_at_full_size():
    from transformers import Owlv2ForObjectDetection

    from magicseg_models.annotation.detector_configs import random_owlv2_config

    with torch.device("meta"):  # the architecture only: 150M parameters are not needed to count them
        model = Owlv2ForObjectDetection(random_owlv2_config())
    assert 150e6 < sum(p.numel() for p in model.parameters()) < 160e6
    assert model.num_patches_height == model.num_patches_width == 60  # 3600 boxes per image at 960 px
    assert model.config.text_config.max_position_embeddings == 16


# -------------------------------------------------------------------------------------------------- config
def test_backend_owlv2_on_the_tiny_preset_gives_a_tiny_owlv2():
    config = load_config("build", "tiny", overrides=["annotate.detector.backend=owlv2"]).annotate.detector
    assert config.weights == "tiny" and config.model == OWLV2_MODEL
    det = make_detector(config)
    assert isinstance(det, Owlv2Detector)
    assert det.settings["detector"] == "owlv2 (tiny weights, local tokenizer)"
    assert det.settings["image_size"] == [64, 64] and det.settings["max_text_tokens"] == 16
    assert sum(p.numel() for p in det.model.parameters()) * 4 < 400_000  # a few hundred kB


def test_detector_defaults_follow_the_backend():
    owl = DetectorConfig(backend="owlv2")
    assert (owl.model, owl.box_threshold, owl.text_threshold, owl.max_text_tokens) == (OWLV2_MODEL, 0.1, 0.1, 16)
    gd = DetectorConfig()
    assert (gd.model, gd.box_threshold, gd.max_text_tokens) == ("IDEA-Research/grounding-dino-tiny", 0.3, 256)
    # the pretrained presets spell out Grounding DINO's model and thresholds: the model follows the backend, the
    # thresholds the user (or preset) set stay
    sd15 = load_config("build", "sd15", overrides=["annotate.detector.backend=owlv2"]).annotate.detector
    assert (sd15.model, sd15.box_threshold, sd15.text_threshold) == (OWLV2_MODEL, 0.3, 0.25)
    mine = DetectorConfig(backend="owlv2", model="google/owlv2-large-patch14-ensemble", box_threshold=0.2)
    assert (mine.model, mine.box_threshold, mine.text_threshold) == ("google/owlv2-large-patch14-ensemble", 0.2, 0.1)


@pytest.mark.parametrize("setting, message", [
    ("annotate.detector.checkpoint=/tmp/groundingdino_swint_ogc.pth", "is for backend official"),
    ("annotate.detector.text_encoder=bert-base-uncased", "is for backend official"),
    ("annotate.detector.max_text_tokens=32", "reads at most 16 tokens per class phrase"),
])
def test_nonsensical_owlv2_settings_are_refused_in_one_line(setting, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("build", "tiny", overrides=["annotate.detector.backend=owlv2", setting])
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------- stage
@pytest.fixture(scope="module")
def owl_annotate():
    return load_config("build", "tiny", overrides=["annotate.detector.backend=owlv2"]).annotate


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.load(classes=load_config("build", "tiny").vocabulary.classes)


def test_annotator_runs_on_owlv2_with_counterfactuals_and_context_classes(owl_annotate, vocab):
    rows = with_context(annotation_rows(vocab, 6, seed=13, sizes=((64, 64), (48, 80))), vocab)
    annotator = Annotator(owl_annotate, vocab)
    assert isinstance(annotator.detector, Owlv2Detector)
    out = annotator(rows)
    kept = [(row, r) for row, r in zip(rows, out) if r["drop_reason"] is None]
    assert kept and annotator.stats()["context_instances"] > 0
    for row, r in kept:
        assert len(r["counterfactual_scores"]) == len(row["class_ids"])
        asked = [a for a in r["annotations"] if a["asked"]]
        context = [a for a in r["annotations"] if not a["asked"]]
        assert {a["class_id"] for a in asked} == set(row["class_ids"])  # keep=all
        assert {a["class_id"] for a in context} <= set(row["context_class_ids"])
        assert r["annotations"] == asked + context and all(0 < a["score"] <= 1 for a in r["annotations"])
    assert annotator.settings["detector_backend"] == "owlv2"
    assert annotator.stats()["text_cache_hits"] > 0  # an image and its counterfactual share their phrases

    # the shared drop rules: a counterfactual threshold drops exactly the pairs whose counterfactual scores pass it
    threshold = float(np.median([max(r["counterfactual_scores"]) for _, r in kept]))
    checker = Annotator(owl_annotate.model_copy(update={"counterfactual_threshold": threshold}), vocab,
                        detector=annotator.detector, segmenter=annotator.segmenter)
    for before, r in zip(out, checker(rows)):
        if before["drop_reason"] is None:
            assert (r["drop_reason"] == DROP_COUNTERFACTUAL) == (max(r["counterfactual_scores"]) > threshold)
    assert checker.stats()["dropped"].get(DROP_COUNTERFACTUAL, 0) >= 1
    blind_cfg = owl_annotate.model_copy(deep=True)
    blind_cfg.detector.box_threshold = 1.0  # no probability is above 1: nothing is detected
    blind = Annotator(blind_cfg, vocab, segmenter=annotator.segmenter)
    assert [r["drop_reason"] for r in blind(rows)] == [not_detected_reason(r["class_names"][0]) for r in rows]


@pytest.mark.parametrize("backend,overrides,limit", [
    ("owlv2", [], "OWLv2's text window of 16"),
    # Grounding DINO reads 256 tokens; a window of 8 makes a five-word class name too long for it
    ("transformers", ["annotate.detector.max_text_tokens=8"], "more than the text encoder's 8"),
])
def test_a_class_name_past_the_detectors_text_window_is_refused_when_the_annotator_is_built(backend, overrides, limit):
    """Refused before any image is generated (the annotator is built when its actors start), not at the first
    sample of that class - which in a large vocabulary may come hours into a run."""
    name = "giant pacific octopus of the northern deep sea reefs at dusk"
    annotate = load_config("build", "tiny", overrides=[f"annotate.detector.backend={backend}", *overrides]).annotate
    vocabulary = Vocabulary.from_names(["cat", name])
    with pytest.raises(PhraseTooLongError) as err:
        Annotator(annotate, vocabulary)
    assert "\n" not in str(err.value) and name in str(err.value) and limit in str(err.value)
    Annotator(annotate, Vocabulary.from_names(["cat", "dog"]))  # names that fit build
