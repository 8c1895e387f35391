"""The generation stage: rows of (prompt, counterfactual prompt, seed) in, rows with an encoded image pair out.

It drives a paired pipeline (``PairedStableDiffusionPipeline``, ``PairedStableDiffusionXLPipeline`` or
``PairedFluxPipeline``, by ``generator.family``; loaded from the ``GeneratorConfig``, or handed in as
``pipeline=``, the way ``Annotator(detector=, segmenter=)`` takes its models), cuts a batch into denoiser
batches, and applies the output policy: non-finite and NSFW-flagged pairs are dropped at once; the all-black
check and JPEG/PNG encoding run in a thread pool while the next denoiser batch computes. It runs the same in a test, a notebook or a Ray actor (this package imports neither Ray nor Prefect).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from magicseg_models.dataset.codecs import encode_image
from magicseg_models.devices import matmul_tf32
from magicseg_models.licences import generator_license
from magicseg_models.generation.pair_common import MAX_SEED, GenerationInputError, is_integer
from magicseg_models.generation.pair_pipeline import PairedStableDiffusionPipeline, load_pair_pipeline

BLACK_MAX = 1  # an image whose every uint8 value is <= this is "all black" (fp16 overflow, blanked output)
DROP_REASONS = ("nonfinite", "nsfw", "black")


def _plain(value: Any) -> Any:
    """JSON-safe copy: tuples -> lists, non-finite floats (DPM-Solver's -inf clip) -> strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _encode_pair(image: np.ndarray, counterfactual: np.ndarray, fmt: str, quality: int):
    """Worker-thread half of the output policy: all-black check, then JPEG/PNG encoding."""
    if int(image.max()) <= BLACK_MAX or int(counterfactual.max()) <= BLACK_MAX:
        return "black"
    return encode_image(image, fmt, quality), encode_image(counterfactual, fmt, quality)


def _check_rows(rows: Sequence[Mapping]) -> None:
    for i, row in enumerate(rows):
        where = f"row {i}" + (f" ({row['sample_id']})" if isinstance(row, Mapping) and "sample_id" in row else "")
        if not isinstance(row, Mapping):
            raise GenerationInputError(f"{where}: expected a mapping with prompt, counterfactual_prompt and "
                                       f"seed, got {type(row).__name__}")
        for key in ("prompt", "counterfactual_prompt", "seed"):
            if key not in row:
                raise GenerationInputError(f"{where}: missing '{key}'")
        for key in ("prompt", "counterfactual_prompt"):
            if not isinstance(row[key], str):
                raise GenerationInputError(f"{where}: '{key}' must be a string, got {type(row[key]).__name__}")
        if not is_integer(row["seed"]) or not 0 <= int(row["seed"]) < MAX_SEED:
            raise GenerationInputError(f"{where}: 'seed' must be an integer in [0, 2**64), got {row['seed']!r}")


class PairGenerator:
    """The generation stage: loads the generator once (``GeneratorConfig``; ``family`` sd15, sdxl or flux picks
    the paired pipeline), then maps rows to rows.

    Input rows need ``prompt``, ``counterfactual_prompt`` and ``seed``; every other field passes through. Output
    rows add ``image`` and ``counterfactual_image`` (encoded bytes), ``height``, ``width`` and ``drop_reason``
    (``None`` when kept; else ``nonfinite``, ``nsfw`` or ``black``, with both images ``None``). A batch is cut into
    UNet batches of ``config.resources.batch_size`` pairs; encoding runs in a thread pool while the next UNet
    batch computes. ``pipeline``: an already built pipeline to use instead of loading the config's models
    (``device`` is then the pipeline's own).
    """

    def __init__(self, config, pipeline: PairedStableDiffusionPipeline | Any | None = None, *,
                 device: str | torch.device | None = None, encode_workers: int | None = None):
        self.config = config
        self.pipeline = pipeline if pipeline is not None else load_pair_pipeline(config, device)
        self.device = self.pipeline.device
        self.dtype = self.pipeline.dtype
        self.source = self.pipeline.source
        self._encode_workers = encode_workers or min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """What produced the images (for shard metadata and manifests)."""
        import diffusers

        c = self.config
        scheduler = self.pipeline.scheduler
        family = getattr(c, "family", "sd15")
        return {
            **self.source, "family": family, "license": generator_license(c),
            **({"max_sequence_length": c.max_sequence_length} if family == "flux" else {}),
            "height": c.height, "width": c.width, "steps": c.steps,
            "guidance_scale": c.guidance_scale, "scheduler": type(scheduler).__name__,
            "scheduler_config": _plain({k: v for k, v in scheduler.config.items() if not k.startswith("_")}),
            "dtype": str(self.dtype).removeprefix("torch."), "device": self.device.type,
            "attention": c.attention, "compile": c.compile, "channels_last": c.channels_last,
            "vae_decode_batch": c.vae_decode_batch, "tf32": c.tf32,
            "safety_checker": c.safety_checker, "image_format": c.image_format,
            "jpeg_quality": c.jpeg_quality if c.image_format == "jpeg" else None,
            "batch_size": c.resources.batch_size, "diffusers": diffusers.__version__,
            "torch": torch.__version__,
        }

    def __call__(self, rows: Sequence[Mapping]) -> list[dict]:
        return self.generate(list(rows))

    def generate(self, rows: Sequence[Mapping]) -> list[dict]:
        """Rows in, rows out (same order, same length; dropped pairs carry ``drop_reason``)."""
        _check_rows(rows)
        c = self.config
        if self._pool is None:  # started on first use (and again after close())
            self._pool = ThreadPoolExecutor(max_workers=self._encode_workers, thread_name_prefix="magicseg-encode")
        pending: list[tuple[dict, Future | str]] = []
        step = c.resources.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            with matmul_tf32(c.tf32):
                out = self.pipeline([r["prompt"] for r in chunk], [r["counterfactual_prompt"] for r in chunk],
                                    [int(r["seed"]) for r in chunk], height=c.height, width=c.width,
                                    num_inference_steps=c.steps, guidance_scale=c.guidance_scale,
                                    output_type="uint8")
            for i, row in enumerate(chunk):
                if not all(out.finite[i]):
                    pending.append((dict(row), "nonfinite"))
                elif out.nsfw is not None and any(out.nsfw[i]):
                    pending.append((dict(row), "nsfw"))
                else:  # black check and encoding in the pool, while the next UNet batch runs
                    pending.append((dict(row), self._pool.submit(
                        _encode_pair, out.images[i], out.counterfactual_images[i], c.image_format,
                        c.jpeg_quality)))
        results = []
        for row, job in pending:
            outcome = job.result() if isinstance(job, Future) else job
            if isinstance(outcome, str):
                row.update(image=None, counterfactual_image=None, drop_reason=outcome)
            else:
                row.update(image=outcome[0], counterfactual_image=outcome[1], drop_reason=None)
            row.update(height=c.height, width=c.width)
            results.append(row)
        return results

    def close(self) -> None:
        """Stop the encoding threads (the models stay loaded; a later call starts new threads)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> PairGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
