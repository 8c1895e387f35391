"""GPU-hour estimates for a build, from the throughput table in the package (``data/throughput.yaml``).

Generation cost scales with denoising steps and pixels (the UNet's FLOPs per step are close to linear in the
latent area at SD 1.5 sizes); annotation with the number of pairs. A row marked ``measured: false`` is arithmetic
from published figures, and every estimate built on it says so.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from magicseg_models.config import BuildConfig


def throughput_table() -> dict[str, Any]:
    return yaml.safe_load((resources.files("magicseg_models") / "data" / "throughput.yaml").read_text())


def estimate_build(config: BuildConfig, num_samples: int | None = None) -> dict[str, Any] | None:
    """GPU hours (low, high) and pairs per GPU hour for ``config``; None for weights that make no real images."""
    if config.generator.weights == "tiny":
        return None  # a plumbing preset: seconds on a CPU, nothing to estimate
    table = throughput_table()
    ref = table["reference"]
    scale = (ref["steps"] / config.generator.steps) * (ref["height"] * ref["width"]) / (
        config.generator.height * config.generator.width)
    n = config.num_samples if num_samples is None else num_samples
    gen_low, gen_high = (rate * scale for rate in table["generation"]["pairs_per_s"])
    ann_low, ann_high = table["annotation"]["pairs_per_s"]
    # GPU-seconds per pair: generation plus annotation (they run on different actors, but both hold GPUs)
    per_pair_best = 1 / gen_high + 1 / ann_high
    per_pair_worst = 1 / gen_low + 1 / ann_low
    measured = table["generation"]["measured"] and table["annotation"]["measured"]
    return {
        "card": ref["card"],
        "samples": n,
        "gpu_hours": [round(n * per_pair_best / 3600, 2), round(n * per_pair_worst / 3600, 2)],
        "pairs_per_gpu_hour": [round(3600 / per_pair_worst), round(3600 / per_pair_best)],
        "basis": "measured" if measured else "estimate (arithmetic, not yet measured on a GPU)",
    }
