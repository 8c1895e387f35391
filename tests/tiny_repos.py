"""Tiny models saved the way their libraries save the real ones, and a Hugging Face cache filled with them.

Each ``save_*`` writes a folder with the real ``save_pretrained`` of the real model class (random weights, a few
hundred kB). :func:`put_in_hf_cache` places a folder under the Hugging Face cache layout
(``hub/models--org--name/{blobs,refs,snapshots}``: content-addressed blobs, ``refs/main`` holding the commit, the
snapshot made of relative symlinks to the blobs), as ``hf download`` leaves it, and checks the result with
``huggingface_hub.scan_cache_dir`` so the library itself vouches for the layout.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def _tiny_pipeline():
    from diffusers import StableDiffusionPipeline

    from magicseg_models.config import load_config
    from magicseg_models.generation.components import load_components

    components = load_components(load_config("build", "tiny").generator, device=torch.device("cpu"))
    return StableDiffusionPipeline(**components.as_kwargs(), requires_safety_checker=False)


def save_tiny_sd(folder: Path, variant: str | None = None, *, plain_offset: float | None = None) -> Path:
    """The tiny preset's SD components as a diffusers ``StableDiffusionPipeline`` folder.

    ``variant="fp16"``: float16 weights under ``*.fp16.*`` names only (as the SD 1.5 repo ships them);
    ``plain_offset``: plain float32 files too, every weight shifted by that much, so a test can tell which loaded.
    """
    if variant is None or plain_offset is not None:
        plain = _tiny_pipeline()
        with torch.no_grad():
            for module in (plain.unet, plain.vae, plain.text_encoder):
                for p in module.parameters():
                    p.add_(plain_offset or 0.0)
        plain.save_pretrained(folder)
    if variant is not None:
        _tiny_pipeline().to(torch.float16).save_pretrained(folder, variant=variant)
    return folder


def save_tiny_family(folder: Path, family: str, variant: str | None = None, max_shard_size: str | None = None) -> Path:
    """The tiny preset's SDXL or FLUX components, saved by diffusers' own ``StableDiffusionXLPipeline`` /
    ``FluxPipeline`` (the folder layout of stabilityai/stable-diffusion-xl-base-1.0 and FLUX.1-schnell);
    ``variant="fp16"``: the weights under ``*.fp16.*`` names only; ``max_shard_size``: weights split into shards
    with a json index, as the released FLUX transformer and T5 encoder are."""
    from diffusers import FluxPipeline, StableDiffusionXLPipeline

    from magicseg_models.config import load_config
    from magicseg_models.generation.components import load_components

    config = load_config("build", "tiny", overrides=[f"generator.family={family}"]).generator
    kwargs = {k: v for k, v in load_components(config, device=torch.device("cpu")).as_kwargs().items()
              if k not in ("safety_checker", "feature_extractor")}
    pipeline = StableDiffusionXLPipeline(**kwargs) if family == "sdxl" else FluxPipeline(**kwargs)
    if variant is not None:
        pipeline.to(torch.float16)
    pipeline.save_pretrained(folder, variant=variant, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return folder


def save_tiny_grounding_dino(folder: Path) -> Path:
    from transformers import GroundingDinoForObjectDetection, GroundingDinoImageProcessor, GroundingDinoProcessor

    from magicseg_models.annotation.detector_configs import tiny_grounding_dino_config
    from magicseg_models.annotation.detector_tokenizer import build_detector_tokenizer

    tokenizer = build_detector_tokenizer()
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(tiny_grounding_dino_config(len(tokenizer))).save_pretrained(folder)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 106}), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_owlv2(folder: Path, image_size: int = 64) -> Path:
    """The ``tiny`` OWLv2 detector's model and processor (local CLIP tokenizer), as an OWLv2 hub repo holds them."""
    from transformers import Owlv2Processor

    from magicseg_models.annotation.owlv2 import Owlv2Detector
    from magicseg_models.config import DetectorConfig

    detector = Owlv2Detector(DetectorConfig(backend="owlv2", weights="tiny", image_size=image_size))
    detector.model.save_pretrained(folder)
    Owlv2Processor(image_processor=detector.image_processor, tokenizer=detector.tokenizer).save_pretrained(folder)
    return folder


def save_tiny_sam(folder: Path) -> Path:
    from transformers import SamImageProcessor, SamModel, SamProcessor

    from magicseg_models.annotation.segmenter import tiny_sam_config

    torch.manual_seed(0)
    SamModel(tiny_sam_config()).save_pretrained(folder)
    SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16})).save_pretrained(folder)
    return folder


def save_tiny_sam2(folder: Path, *, hub_layout: bool = False) -> Path:
    """The ``tiny`` SAM 2 segmenter's model and processor. ``hub_layout``: as Meta's ``facebook/sam2.1-hiera-*``
    repos hold them - a ``Sam2VideoModel`` (the image model plus video-memory modules, ``sam2_video`` config),
    the image processor's own ``preprocessor_config.json`` under its transformers 4.x name and the repos'
    ``processor_config.json`` naming ``Sam2VideoProcessor`` - else ``save_pretrained`` of the image model and its
    processor, as a user saves a fine-tuned model."""
    import json

    from transformers import Sam2VideoConfig, Sam2VideoModel

    from magicseg_models.annotation.sam2_segmenter import Sam2Segmenter
    from magicseg_models.config import SegmenterConfig

    seg = Sam2Segmenter(SegmenterConfig(backend="sam2", weights="tiny"), device="cpu")
    if not hub_layout:
        seg.model.save_pretrained(folder)
        seg.processor.save_pretrained(folder)
        return folder
    c = seg.model.config
    video = Sam2VideoModel(Sam2VideoConfig(vision_config=c.vision_config,
                                           prompt_encoder_config=c.prompt_encoder_config.to_dict(),
                                           mask_decoder_config=c.mask_decoder_config.to_dict()))
    _, unexpected = video.load_state_dict(seg.model.state_dict(), strict=False)  # memory modules stay random
    assert not unexpected, unexpected
    video.save_pretrained(folder)
    image_processor = {**seg.processor.image_processor.to_dict(), "image_processor_type": "Sam2ImageProcessorFast",
                       "processor_class": "Sam2VideoProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
    (folder / "processor_config.json").write_text(json.dumps(
        {"point_pad_value": -10, "processor_class": "Sam2VideoProcessor",
         "target_size": seg.processor.target_size}))
    return folder


def save_tiny_llm(folder: Path) -> Path:
    from magicseg_models.prompts.hf_writer import tiny_model, tiny_chat_tokenizer

    tokenizer = tiny_chat_tokenizer()
    tiny_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path) -> Path:
    from magicseg_models.generation.components import build_tiny_tokenizer
    from magicseg_models.zegclip.build import TINY_TEXT_CONFIG, TINY_VISION_CONFIG, clip_from_configs

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(3)
    clip_from_configs(TINY_VISION_CONFIG, TINY_TEXT_CONFIG, 32, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def put_in_hf_cache(hf_home: Path, repo_id: str, folder: Path, revision: str = "main") -> str:
    """``folder``'s files as repo ``repo_id`` in the Hugging Face cache under ``hf_home``; returns the commit."""
    from huggingface_hub import scan_cache_dir

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    commit = hashlib.sha1("".join(f"{p.relative_to(folder)}:{d}" for p, d in digests.items()).encode()).hexdigest()
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for path, digest in digests.items():
        blob = repo / "blobs" / digest
        if not blob.exists():
            blob.write_bytes(path.read_bytes())
        link = repo / "snapshots" / commit / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    info = scan_cache_dir(hf_home / "hub")
    assert not info.warnings, info.warnings
    [cached] = [r for r in info.repos if r.repo_id == repo_id]
    [rev] = [r for r in cached.revisions if r.commit_hash == commit]
    assert rev.nb_files == len(files) and revision in rev.refs
    return commit
