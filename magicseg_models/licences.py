"""Licences of the models whose outputs or weights shape a dataset, as the manifest records them and as a
Hugging Face dataset card's ``license`` header names them.

The generator's licence decides what users may do with the images; it is recorded by the generator stage
(``models.pairs.license`` in the manifest, from ``generator.license`` or the family's released weights) and the
card reads it from there. Detector and segmenter licences are matched by model id.
"""

from __future__ import annotations

# what the outputs of each generator family's released weights are licensed under (their model cards)
FAMILY_LICENSES = {
    "sd15": "CreativeML OpenRAIL-M",
    "sdxl": "CreativeML Open RAIL++-M",
    "flux": "Apache-2.0",  # FLUX.1-schnell; FLUX.1-dev has its own non-commercial licence
}
FLUX_DEV_LICENSE = "FLUX.1 [dev] Non-Commercial License"
NO_LICENSE = "none (random weights: no model licence applies)"
UNKNOWN_PREFIX = "unknown"


def generator_license(config) -> str:
    """The licence the settings and the manifest record: ``generator.license`` when set, else the family's.

    Random and tiny weights are no released model, so no model licence applies to their (noise) images. A FLUX
    model id naming neither schnell nor dev cannot be told apart: the user is asked to say.
    """
    if config.license:
        return config.license
    if config.weights != "pretrained":
        return NO_LICENSE
    family = getattr(config, "family", "sd15")
    model = (config.model or "").lower()
    if family == "flux" and "schnell" not in model:
        return FLUX_DEV_LICENSE if "dev" in model else f"{UNKNOWN_PREFIX}: set generator.license"
    return FAMILY_LICENSES[family]


# recorded licence -> (the card header's `license` id on the Hugging Face hub, `license_name` when that id is other)
CARD_IDS = {
    "creativeml openrail-m": ("creativeml-openrail-m", None),
    "creativeml open rail++-m": ("openrail++", None),
    "apache-2.0": ("apache-2.0", None),
    "mit": ("mit", None),
    "flux.1 [dev] non-commercial license": ("other", "flux-1-dev-non-commercial-license"),
}

# model id fragment -> (card id, the card's line); first match wins
MODEL_LICENCES = [
    ("stable-diffusion-v1-5", "creativeml-openrail-m",
     "Stable Diffusion 1.5 outputs: CreativeML OpenRAIL-M (use restrictions of its Attachment A apply)"),
    ("runwayml/stable-diffusion", "creativeml-openrail-m",
     "Stable Diffusion 1.5 outputs: CreativeML OpenRAIL-M (use restrictions of its Attachment A apply)"),
    ("stable-diffusion-xl", "openrail++", "SDXL outputs: CreativeML OpenRAIL++-M (use restrictions apply)"),
    ("flux.1-schnell", "apache-2.0", "FLUX.1-schnell outputs: Apache-2.0"),
    ("flux.1-dev", "other", "FLUX.1-dev outputs: FLUX.1 [dev] Non-Commercial License"),
    ("grounding-dino", "apache-2.0", "Grounding DINO (boxes): Apache-2.0"),
    ("groundingdino", "apache-2.0", "Grounding DINO (boxes): Apache-2.0"),
    ("owlv2", "apache-2.0", "OWLv2 (boxes): Apache-2.0"),
    ("sam2", "apache-2.0", "Segment Anything 2 (masks): Apache-2.0"),
    ("sam_vit", "apache-2.0", "Segment Anything (masks): Apache-2.0"),
    ("sam-vit", "apache-2.0", "Segment Anything (masks): Apache-2.0"),
    ("segment-anything", "apache-2.0", "Segment Anything (masks): Apache-2.0"),
]


def model_licence(model: str) -> tuple[str, str] | None:
    """(card id, line) of a model id or checkpoint URL, None when not known."""
    lowered = (model or "").lower()
    for fragment, card_id, text in MODEL_LICENCES:
        if fragment in lowered:
            return card_id, text
    return None


def card_id(recorded: str) -> tuple[str, str | None]:
    """The card header's (``license``, ``license_name``) for a licence as recorded; ``other`` with the recorded
    text as its name when the hub has no id for it."""
    known = CARD_IDS.get(recorded.strip().lower())
    if known:
        return known
    slug = "".join(c if c.isalnum() else "-" for c in recorded.lower()).strip("-")
    return "other", "-".join(part for part in slug.split("-") if part) or None
