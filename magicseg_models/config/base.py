"""What every config section shares: the strict base model, the weights switch, local-path resolution, and the
sections that build and train configs both hold (stage resources, storage, Ray)."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


Weights = Literal["pretrained", "random", "tiny"]
"""``pretrained``: hub id or local path; ``random``: full-size architecture, random init (throughput
benchmarks, no download); ``tiny``: tiny models built from configs in code (tests, CPU, seconds)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".py")


def resolve_local_path(value: str | None, *, hub_id_allowed: bool = True) -> str | None:
    """A relative local path made absolute against the working directory of the process loading the config.

    Configs are loaded where the user runs the command (the driver); Ray actors run elsewhere (another working
    directory, another node), so a relative path must be fixed here. URLs, absolute paths and hub ids
    (``org/name``, when ``hub_id_allowed``: anything not written as a path, not existing here and not named like a
    file) stay as they are.
    """
    if value is None or ("://" in value and not value.startswith("file://")):
        return value
    path = os.path.expanduser(value.removeprefix("file://"))
    if os.path.isabs(path):
        return path if path != value.removeprefix("file://") else value
    written_as_path = value.startswith(("./", "../", "file://")) or path.lower().endswith(_FILE_SUFFIXES)
    if hub_id_allowed and not written_as_path and not os.path.exists(path):
        return value
    return os.path.abspath(path)


class StageResources(Section):
    """How one stage runs on Ray: actors hold the model for the whole run."""

    actors: int | tuple[int, int] = Field(
        1, description="actors of this stage: a number, or [min, max] for a pool that grows with its backlog up "
        "to max and shrinks back to min after ray.idle_actor_s without work")
    num_gpus: float = Field(1.0, ge=0, description="GPU share per actor; asked of the cluster even while no GPU "
                            "node is up, so an autoscaling cluster starts one")
    gpu: Literal["required", "optional"] = Field(
        "required", description="a stage with num_gpus > 0 on a cluster that has no GPU and cannot start one: "
        "required = the run refuses before any work; optional = the stage runs on CPU, said in the log and summary")
    num_cpus: float = Field(1.0, ge=0)
    batch_size: int = Field(8, ge=1, description="rows per call of one actor of this stage")

    @field_validator("actors")
    @classmethod
    def _actor_range(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        low, high = (value, value) if isinstance(value, int) else value
        if not 1 <= low <= high:
            got = value if isinstance(value, int) else list(value)
            raise ValueError(f"actors must be >= 1, or [min, max] with 1 <= min <= max (got {got})")
        return value

    @property
    def actor_range(self) -> tuple[int, int]:
        return (self.actors, self.actors) if isinstance(self.actors, int) else tuple(self.actors)


class StorageConfig(Section):
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options (e.g. endpoint_url); prefer the AWS_* environment")


class RayConfig(Section):
    address: str | None = Field(None, description="None = RAY_ADDRESS if set, else a local Ray for the run")
    num_cpus: int | None = None
    object_store_memory: int | None = None
    dashboard: bool = Field(False, description="a local Ray started for the run serves its dashboard "
                            "(http://127.0.0.1:8265); a joined cluster has its own")
    gpu_wait_s: float = Field(900.0, gt=0, description="how long a GPU stage waits for the cluster to offer its "
                              "GPU share (an autoscaler starting a node) before it counts as unobtainable")
    idle_actor_s: float = Field(60.0, gt=0, description="an actor above its stage's minimum is stopped after "
                                "this long without work")
    max_in_flight: int = Field(2, ge=1, description="calls queued on one actor at once: 2 keeps it busy while "
                               "the next batch travels, more only deepens the queue behind a slow actor")
