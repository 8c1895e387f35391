"""ZegCLIP (frozen CLIP ViT with deep prompts + cross-attention decoder) in plain PyTorch, and its text side.

``build_zegclip(config)`` gives a :class:`ZegCLIPBundle` (model, class-name embedder, normalisation);
``load_clip(...)`` the plain CLIP it is built on (the build's quality stage uses it too); the architecture and
its parameter counts are documented in :mod:`magicseg_models.zegclip.model`.
"""

from magicseg_models.zegclip.build import (CLIPWeightsError, ZegCLIPBundle, build_zegclip, load_clip,
                                           parameter_summary, trainable_parameters)
from magicseg_models.zegclip.model import (CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, PromptedCLIPVisionEncoder, ZegCLIP,
                                           ZegCLIPDecoder, ZegCLIPError)
from magicseg_models.zegclip.text import (IMAGENET15_TEMPLATES, SINGLE_TEMPLATES, CLIPTextEncoder, prompt_text)

__all__ = [
    "CLIPWeightsError", "ZegCLIPBundle", "build_zegclip", "load_clip", "parameter_summary", "trainable_parameters",
    "CLIP_IMAGE_MEAN", "CLIP_IMAGE_STD", "PromptedCLIPVisionEncoder", "ZegCLIP", "ZegCLIPDecoder", "ZegCLIPError",
    "IMAGENET15_TEMPLATES", "SINGLE_TEMPLATES", "CLIPTextEncoder", "prompt_text",
]
