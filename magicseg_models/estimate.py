"""GPU-hour estimates for a build, from the throughput table in the package (``data/throughput.yaml``).

Generation cost scales with denoising steps and pixels (the UNet's FLOPs per step are close to linear in the
latent area at SD 1.5 sizes); annotation and the quality stage (when ``quality.enabled``) with the number of pairs. A row marked ``measured: false`` is arithmetic
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
    stages = ["generation", "annotation"] + (["quality"] if config.quality.enabled else [])
    # GPU-seconds per pair: the sum over stages (they run on different actors, but each holds a GPU share)
    per_pair_best = 1 / gen_high + sum(1 / table[name]["pairs_per_s"][1] for name in stages[1:])
    per_pair_worst = 1 / gen_low + sum(1 / table[name]["pairs_per_s"][0] for name in stages[1:])
    measured = all(table[name]["measured"] for name in stages)
    return {
        "card": ref["card"],
        "samples": n,
        "gpu_hours": [round(n * per_pair_best / 3600, 2), round(n * per_pair_worst / 3600, 2)],
        "pairs_per_gpu_hour": [round(3600 / per_pair_worst), round(3600 / per_pair_best)],
        "basis": "measured" if measured else "estimate (arithmetic, not yet measured on a GPU)",
        "stages": stages,
    }
