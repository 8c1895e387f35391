"""The GPU speed switches (generator, detector, SAM) are real config fields: each changes what the loaded models do,
and images and masks stay equal or close. Measured on and off by benchmarks/gpu_suite.py; tested here on the CPU."""

import numpy as np
import pytest
import torch
from PIL import Image

from magicseg_models.annotation import Annotator, make_detector, make_segmenter
from magicseg_models.config import load_config
from magicseg_models.generation import PairGenerator
from magicseg_models.vocabulary import Vocabulary

SIZE = 32


def generator_config(**changes):
    overrides = [f"generator.height={SIZE}", f"generator.width={SIZE}", "generator.steps=2",
                 "generator.image_format=png", *(f"generator.{k}={v}" for k, v in changes.items())]
    return load_config("build", preset="tiny", overrides=overrides).generator


def jobs(n: int) -> list[dict]:
    return [{"sample_id": f"s-{i}", "prompt": f"a photo of a cat on a sofa {i}",
             "counterfactual_prompt": f"a photo of a nothing on a sofa {i}", "seed": 7 + i} for i in range(n)]


def pixels(row: dict, key: str = "image") -> np.ndarray:
    from magicseg_models.dataset.codecs import decode_image

    return np.asarray(decode_image(row[key]), dtype=int)


def calls_of(module) -> list:
    """Records, per forward of ``module``, whether TF32 matmuls were on at that moment."""
    seen: list[bool] = []
    module.register_forward_hook(lambda *_: seen.append(torch.backends.cuda.matmul.allow_tf32))
    return seen


@pytest.fixture(scope="module")
def reference():
    with PairGenerator(generator_config(), device="cpu") as gen:
        return gen(jobs(3))


def test_channels_last_puts_unet_and_vae_weights_in_channels_last_with_the_same_images(reference):
    with PairGenerator(generator_config(channels_last=True), device="cpu") as gen:
        for module in (gen.pipeline.unet, gen.pipeline.vae):
            convs = [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
            assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        out = gen(jobs(3))
    for ours, ref in zip(out, reference):
        np.testing.assert_allclose(pixels(ours), pixels(ref), atol=1)
        np.testing.assert_allclose(pixels(ours, "counterfactual_image"), pixels(ref, "counterfactual_image"), atol=1)


def test_vae_decode_batch_1_decodes_one_image_per_call_and_gives_the_same_images(reference):
    with PairGenerator(generator_config(vae_decode_batch=1), device="cpu") as gen:
        batches: list[int] = []
        gen.pipeline.vae.decoder.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
        out = gen(jobs(3))
        assert gen.settings["vae_decode_batch"] == 1
    assert batches == [1] * 6  # 3 pairs = 6 images, one per decode call (the default decodes all 6 at once)
    for ours, ref in zip(out, reference):
        np.testing.assert_allclose(pixels(ours), pixels(ref), atol=1)


def test_compile_wraps_the_unet_and_the_vae_decoder_in_place():
    # running the compiled models is the slow test in test_generation.py; here: both are compiled, in place
    with PairGenerator(generator_config(compile=True), device="cpu") as gen:
        assert gen.pipeline.unet._compiled_call_impl is not None
        assert gen.pipeline.vae.decoder._compiled_call_impl is not None
        assert gen.pipeline.vae.encoder._compiled_call_impl is None  # only decoding runs in generation
    with PairGenerator(generator_config(), device="cpu") as gen:
        assert gen.pipeline.unet._compiled_call_impl is None


def test_generator_tf32_is_on_during_its_unet_calls_only():
    assert torch.backends.cuda.matmul.allow_tf32 is False
    with PairGenerator(generator_config(tf32=True), device="cpu") as gen:
        seen = calls_of(gen.pipeline.unet)
        gen(jobs(1))
    assert seen and all(seen)
    assert torch.backends.cuda.matmul.allow_tf32 is False  # restored: another stage in this process keeps its own
    with PairGenerator(generator_config(), device="cpu") as gen:
        seen = calls_of(gen.pipeline.unet)
        gen(jobs(1))
    assert seen and not any(seen)


def annotate_config(*overrides: str):
    return load_config("build", preset="tiny", overrides=list(overrides)).annotate


@pytest.mark.parametrize("backend", ["segment-anything", "transformers", "sam2"])
def test_sam_encoder_dtype_bfloat16_casts_the_image_encoder_and_masks_stay_close(backend):
    config = annotate_config(f"annotate.segmenter.backend={backend}").segmenter
    plain = make_segmenter(config, "cpu")
    half = make_segmenter(config.model_copy(update={"encoder_dtype": "bfloat16"}), "cpu")
    encoder = half.sam.image_encoder if backend == "segment-anything" else half.model.vision_encoder
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    decoder = half.sam.mask_decoder if backend == "segment-anything" else half.model.mask_decoder
    assert {p.dtype for p in decoder.parameters()} == {torch.float32}  # only the encoder changes
    assert half.settings["segmenter_encoder_dtype"] == "bfloat16"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [np.array([[4, 4, 40, 30], [10, 12, 60, 44]], dtype=np.float32)] * 3
    for a, b in zip(plain.segment(images, boxes), half.segment(images, boxes)):
        assert a.shape == b.shape == (2, 48, 64)
        assert (a == b).mean() > 0.95  # bf16 rounding moves a few pixels at mask borders


def test_sam2_tf32_applies_to_its_encoder_and_decoder_calls():
    seg = make_segmenter(annotate_config("annotate.segmenter.backend=sam2",
                                         "annotate.segmenter.tf32=true").segmenter, "cpu")
    encoder_calls, decoder_calls = calls_of(seg.model.vision_encoder), calls_of(seg.model.mask_decoder)
    image = np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    seg.segment([image], [np.array([[2, 2, 30, 30]], dtype=np.float32)])
    assert encoder_calls == [True] and decoder_calls == [True] and seg.settings["segmenter_tf32"] is True
    assert torch.backends.cuda.matmul.allow_tf32 is False  # restored after each call


def test_detector_and_sam_tf32_apply_to_their_own_calls():
    vocab = Vocabulary.default()
    config = annotate_config("annotate.detector.tf32=true", "annotate.segmenter.tf32=false")
    annotator = Annotator(config, vocab, device="cpu", detector=make_detector(config.detector, "cpu"),
                          segmenter=make_segmenter(config.segmenter, "cpu"))
    detector_calls = calls_of(annotator.detector.model)
    sam_calls = calls_of(annotator.segmenter.sam.image_encoder)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    annotator.detector.detect([Image.fromarray(image)], [["cat"]])
    annotator.segmenter.segment([image], [np.array([[2, 2, 30, 30]], dtype=np.float32)])
    assert detector_calls == [True] and sam_calls == [False]
    assert annotator.settings["detector_tf32"] is True and annotator.settings["segmenter_tf32"] is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
