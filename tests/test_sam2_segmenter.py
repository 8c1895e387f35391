"""SAM 2 segmenter backend (``segmenter.backend: sam2``, transformers' Sam2Model).

Tiny random SAM 2 models built from configs in code; nothing downloads. The batched path is checked against
transformers' own single-image path (``Sam2Processor`` + ``Sam2Model`` on one image with its boxes,
``post_process_masks``), written out here without our code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_annotation import annotation_rows, random_image
from magicseg_models.annotation import Annotator, Sam2Segmenter, SegmenterWeightsError, make_segmenter
from magicseg_models.config import SegmenterConfig, load_config
from magicseg_models.errors import ConfigError
from magicseg_models.vocabulary import Vocabulary
from magicseg_models.weights.hub import HF_SAM2_IDS
from tests import tiny_repos

ROOT = Path(__file__).resolve().parents[1]
TINY_SAM2 = dict(backend="sam2", weights="tiny")
# the batched encoder runs two images where the reference runs one, and the decoder gets the feature maps from a
# separate encoder call: float summation order differs, so logits agree to rounding (seen: up to 4e-6 on logits of a
# few units), not bit for bit
LOGIT_ATOL = 1e-4

# different sizes (SAM 2 resizes each to its square input), several boxes each, one image without boxes
IMAGES = [random_image(1), random_image(2, 48, 80), random_image(3, 80, 40), random_image(4, 37, 59)]
BOXES = [np.array([[2, 3, 40, 50], [10, 10, 60, 60], [0, 0, 64, 64]], np.float32),
         np.array([[0, 0, 79, 47], [30, 5, 70, 40]], np.float32),
         np.zeros((0, 4), np.float32),
         np.array([[5, 5, 30, 30], [1, 2, 58, 36], [20, 10, 40, 30]], np.float32)]


@pytest.fixture(scope="module")
def seg():
    return Sam2Segmenter(SegmenterConfig(**TINY_SAM2, batch_size=2), device="cpu")


@pytest.fixture(scope="module")
def batched(seg):
    results = seg.segment_scored(IMAGES, BOXES)
    return results, seg.images_embedded, seg.decoder_calls


def reference(model, processor, image: np.ndarray, boxes: np.ndarray):
    """transformers' single-image path: (mask logits at the image's size, predicted IoU), one row per box."""
    inputs = processor(images=[image], input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=False)
    logits = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)[0][:, 0]
    return logits, out.iou_scores[0, :, 0]


def test_batched_path_equals_transformers_single_image_path(seg, batched):
    results, embedded, calls = batched
    assert embedded == 3 and calls == 3  # two batches of images with boxes; the boxless image is never embedded
    assert [r.masks.shape for r in results] == [(3, 64, 64), (2, 48, 80), (0, 80, 40), (3, 37, 59)]
    compared = 0
    for image, boxes, result in zip(IMAGES, BOXES, results):
        if not len(boxes):
            continue
        logits, iou = reference(seg.model, seg.processor, image, boxes)
        sure = logits.abs() > LOGIT_ATOL  # pixels whose side of the threshold rounding cannot change
        assert sure.float().mean() > 0.99
        np.testing.assert_array_equal(result.masks[sure.numpy()], (logits > 0)[sure].numpy())
        np.testing.assert_allclose(result.predicted_iou, iou.numpy(), atol=1e-5)
        compared += len(boxes)
        assert result.masks.any() and not result.masks.all()  # masks with a boundary, not a constant
    assert compared == 8


def test_more_boxes_than_one_decoder_call_takes_are_chunked_in_order():
    from magicseg_models.annotation.segmenter_base import PROMPTS_PER_CALL

    seg = Sam2Segmenter(SegmenterConfig(**TINY_SAM2), device="cpu")
    rng = np.random.default_rng(5)
    corners = rng.uniform(0, 30, (PROMPTS_PER_CALL + 6, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(8, 30, corners.shape)], axis=1).astype(np.float32)
    [result] = seg.segment_scored([IMAGES[1]], [boxes])
    assert seg.decoder_calls == 2 and result.masks.shape == (len(boxes), 48, 80)
    logits, iou = reference(seg.model, seg.processor, IMAGES[1], boxes)  # all boxes in one call
    sure = (logits.abs() > LOGIT_ATOL).numpy()
    np.testing.assert_array_equal(result.masks[sure], (logits > 0).numpy()[sure])
    np.testing.assert_allclose(result.predicted_iou, iou.numpy(), atol=1e-5)


def test_stability_score_is_the_iou_of_the_masks_at_plus_and_minus_one(seg, batched):
    results, _, _ = batched
    scores = []
    for image, boxes, result in zip(IMAGES, BOXES, results):
        if not len(boxes):
            assert result.stability_score.shape == (0,)
            continue
        logits, _ = reference(seg.model, seg.processor, image, boxes)
        high, low = (logits > 1.0).numpy(), (logits > -1.0).numpy()
        inter, union = (high & low).sum((1, 2)), (high | low).sum((1, 2))
        expected = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        np.testing.assert_allclose(result.stability_score, expected, atol=1e-3)  # a pixel at +-1 +- rounding
        scores += list(result.stability_score)
    assert all(0 < s < 1 for s in scores)  # informative scores, not the 0 of an empty mask


def test_pretrained_from_a_save_pretrained_folder_gives_the_in_memory_masks(batched, tmp_path):
    folder = tiny_repos.save_tiny_sam2(tmp_path / "sam2")
    loaded = make_segmenter(SegmenterConfig(backend="sam2", weights="pretrained", checkpoint=str(folder),
                                            batch_size=2), device="cpu")
    assert isinstance(loaded, Sam2Segmenter) and loaded.settings["segmenter"] == f"transformers Sam2Model {folder}"
    for ours, theirs in zip(batched[0], loaded.segment_scored(IMAGES, BOXES)):
        np.testing.assert_array_equal(ours.masks, theirs.masks)
        np.testing.assert_array_equal(ours.predicted_iou, theirs.predicted_iou)


def test_default_hub_id_loads_offline_from_the_hugging_face_cache(batched, tmp_path):
    """checkpoint=None means facebook/sam2.1-hiera-large: here a tiny model in Meta's repo layout (sam2_video
    config, 4.x processor files) under that id in a fresh HF_HOME, read by a fresh interpreter with
    HF_HUB_OFFLINE=1."""
    hf_home = tmp_path / "hf"
    repo_id = HF_SAM2_IDS["large"]
    tiny_repos.put_in_hf_cache(hf_home, repo_id, tiny_repos.save_tiny_sam2(tmp_path / "repo", hub_layout=True))
    np.savez(tmp_path / "inputs.npz", *IMAGES, *BOXES)
    script = f"""
import numpy as np
from magicseg_models.annotation import make_segmenter
from magicseg_models.config import load_config
from magicseg_models.weights.inventory import list_models
config = load_config("build", "tiny", overrides=["annotate.segmenter.backend=sam2",
                                                 "annotate.segmenter.weights=pretrained"])
[entry] = [e for e in list_models(config) if e.role == "segmenter"]
print(entry.source, entry.available)
arrays = list(np.load({str(tmp_path / "inputs.npz")!r}).values())
results = make_segmenter(config.annotate.segmenter, "cpu").segment_scored(arrays[:4], arrays[4:])
np.savez({str(tmp_path / "out.npz")!r}, *[r.masks for r in results], *[r.predicted_iou for r in results])
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == [repo_id, "yes"]  # `magicseg models` sees it as here, too
    out = list(np.load(tmp_path / "out.npz").values())
    for k, ours in enumerate(batched[0]):
        np.testing.assert_array_equal(ours.masks, out[k])
        np.testing.assert_array_equal(ours.predicted_iou, out[4 + k])


@pytest.mark.parametrize("where", ["folder", "hub id"])
def test_missing_weights_are_one_line_errors(tmp_path, where):
    checkpoint = str(tmp_path / "no-such-sam2") if where == "folder" else "nobody-here/no-sam2"
    with pytest.raises(SegmenterWeightsError, match="segmenter.checkpoint .* could not be loaded: ") as err:
        Sam2Segmenter(SegmenterConfig(backend="sam2", weights="pretrained", checkpoint=checkpoint), device="cpu")
    assert "\n" not in str(err.value) and checkpoint in str(err.value)


@pytest.mark.parametrize("size, published", [("tiny", 38.9), ("small", 46.0), ("base-plus", 80.8),
                                              ("large", 224.4)])
def test_full_size_architectures_have_the_published_parameter_counts(size, published):
    """Meta's README counts SAM 2.1 with its video-memory modules: the same trunk in a Sam2VideoModel (built on
    the meta device: no memory, no time) must have that many parameters."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from magicseg_models.annotation.sam2_segmenter import sam2_config

    with torch.device("meta"):
        video = Sam2VideoModel(Sam2VideoConfig(vision_config=sam2_config(size).vision_config))
    assert sum(p.numel() for p in video.parameters()) / 1e6 == pytest.approx(published, abs=0.1)


@pytest.mark.slow  # the full-size encoder at 1024 px: ~20 s on two CPU cores
def test_random_weights_build_the_full_size_architecture():
    seg = Sam2Segmenter(SegmenterConfig(backend="sam2", weights="random", sam2_size="tiny"), device="cpu")
    trunk = seg.model.config.vision_config.backbone_config
    assert trunk.blocks_per_stage == [1, 2, 7, 2] and trunk.embed_dim_per_stage == [96, 192, 384, 768]
    assert seg.processor.image_processor.size["height"] == 1024
    [result] = seg.segment_scored([random_image(7, 40, 56)], [np.array([[4, 4, 50, 30]], np.float32)])
    assert result.masks.shape == (1, 40, 56) and np.isfinite(result.predicted_iou).all()
    assert seg.settings["segmenter"] == "transformers Sam2Model hiera-tiny (random weights)"


# ------------------------------------------------------------------------------------------------ config
def test_tiny_preset_switches_to_sam2_with_one_set():
    c = load_config("build", "tiny", overrides=["annotate.segmenter.backend=sam2"]).annotate.segmenter
    assert c.backend == "sam2" and c.weights == "tiny" and c.sam2_source == "facebook/sam2.1-hiera-large"
    c = load_config("build", "tiny", overrides=["annotate.segmenter.backend=sam2",
                                                "annotate.segmenter.sam2_size=small"]).annotate.segmenter
    assert c.sam2_source == "facebook/sam2.1-hiera-small"
    c = load_config("build", "tiny", overrides=["annotate.segmenter.backend=sam2",
                                                "annotate.segmenter.checkpoint=my-org/sam2-finetuned"])
    assert c.annotate.segmenter.sam2_source == "my-org/sam2-finetuned"  # a hub id stays a hub id


@pytest.mark.parametrize("checkpoint", ["sam2.1_hiera_large.pt", "s3://bucket/sam2"])
def test_sam2_refuses_files_and_urls_in_one_line(checkpoint):
    with pytest.raises(ConfigError, match="backend=sam2 loads a transformers Sam2Model") as err:
        load_config("build", "tiny", overrides=["annotate.segmenter.backend=sam2",
                                                f"annotate.segmenter.checkpoint={checkpoint}"])
    assert "\n" not in str(err.value)


def test_the_presets_sam_release_file_follows_the_backend_and_any_other_pth_is_refused():
    """The pretrained presets name SAM's release file; with backend sam2 that means SAM 2's own default (as the
    detector's model follows backend owlv2). A .pth the user chose is theirs: refused with the fix."""
    c = load_config("build", "sd15", overrides=["annotate.segmenter.backend=sam2"]).annotate.segmenter
    assert c.weights == "pretrained" and c.checkpoint is None and c.sam2_source == "facebook/sam2.1-hiera-large"
    assert load_config("build", "sd15").annotate.segmenter.checkpoint.endswith("sam_vit_h_4b8939.pth")
    with pytest.raises(ConfigError, match="or to null for facebook/sam2.1-hiera-large"):
        load_config("build", "sd15", overrides=["annotate.segmenter.backend=sam2",
                                                "annotate.segmenter.checkpoint=/models/my_sam_finetune.pth"])


# ------------------------------------------------------------------------------------------------- stage
def test_annotator_with_sam2_stores_mask_scores():
    config = load_config("build", "tiny", overrides=["annotate.segmenter.backend=sam2"])
    vocab = Vocabulary.load(classes=config.vocabulary.classes)
    annotator = Annotator(config.annotate, vocab)
    assert annotator.settings["segmenter_backend"] == "sam2"
    out = annotator(annotation_rows(vocab, 4, sizes=((64, 64), (48, 80))))
    kept = [r for r in out if r["drop_reason"] is None]
    assert kept
    for row in kept:
        for a in row["annotations"]:
            assert 0 <= a["predicted_iou"] <= 1 and 0 <= a["stability_score"] <= 1 and 0 <= a["box_fill"] <= 1
    assert any(a["area"] > 0 for row in kept for a in row["annotations"])


def test_the_dataset_card_states_sam2s_licence():
    from collections import Counter

    from magicseg_models.dataset.card import render_card

    manifest = {"counts": {"planned": 1, "kept": 1, "dropped": {}}, "classes": ["cat"],
                "models": {"pairs": {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
                           "annotate": {"segmenter": "transformers Sam2Model facebook/sam2.1-hiera-large"}}}
    card = render_card(manifest, Counter({0: 1}), "/data/run")
    assert "- Segment Anything 2 (masks): Apache-2.0" in card
