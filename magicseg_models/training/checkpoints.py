"""Training checkpoints on any fsspec URI, loadable without unpickling code.

Layout under the training output ``OUT``::

    OUT/checkpoints/step-00000100/model.safetensors  the trainable parameters (the frozen CLIP comes from config)
    OUT/checkpoints/step-00000100/state.pt           optimizer, scheduler, step, RNG states (torch.save of tensors
                                                     and plain containers: loads with ``weights_only=True``)
    OUT/checkpoints/step-00000100/meta.json          step, model config, train config (no secrets); written last
    OUT/checkpoints/latest.json                      {"step": 100, "path": "checkpoints/step-00000100"}

A checkpoint counts once its ``meta.json`` exists; ``latest.json`` moves only after that, so a kill while saving
leaves the previous checkpoint as the latest. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import StorageError, one_line

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"step-(\d{8})$")


def step_dir(step: int) -> str:
    return f"{CHECKPOINTS}/step-{step:08d}"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k in names}


def rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(_python_state()),
             "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_pos": [int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():  # this device's only: a resume may see another number of GPUs
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _python_state() -> tuple:
    version, internal, gauss = random.getstate()
    return version, list(internal), gauss


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    pos, has_gauss, gauss = state["numpy_pos"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    if isinstance(state.get("cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(storage: Storage, step: int, model: torch.nn.Module, state: dict[str, Any],
                    meta: dict[str, Any], keep: int = 3) -> str:
    """Write one checkpoint (``state``: optimizer, scheduler, rng, ...), then point ``latest.json`` at it."""
    rel = step_dir(step)
    storage.write_bytes_atomic(f"{rel}/model.safetensors", save_safetensors(trainable_state(model)))
    buf = io.BytesIO()
    torch.save({**state, "step": step}, buf)
    storage.write_bytes_atomic(f"{rel}/state.pt", buf.getvalue())
    storage.write_json_atomic(f"{rel}/meta.json", {**meta, "step": step})
    storage.write_json_atomic(f"{CHECKPOINTS}/latest.json", {"step": step, "path": rel})
    _prune(storage, keep)
    return storage.url(rel)


def _prune(storage: Storage, keep: int) -> None:
    steps = sorted(list_checkpoints(storage))
    for old in steps[:-keep] if keep > 0 else []:
        for name in ("meta.json", "model.safetensors", "state.pt"):  # meta first: it is what makes it count
            storage.remove(f"{step_dir(old)}/{name}")
        if storage.is_local:
            with contextlib.suppress(OSError):
                os.rmdir(storage.path(step_dir(old)))


def list_checkpoints(storage: Storage) -> list[int]:
    """Steps of the complete checkpoints (those with a meta.json)."""
    if not storage.exists(CHECKPOINTS):
        return []
    steps = []
    for entry in storage.list(CHECKPOINTS):
        match = _STEP_DIR.search(entry.rstrip("/"))
        if match and storage.exists(f"{step_dir(int(match.group(1)))}/meta.json"):
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_checkpoint(storage: Storage) -> int | None:
    """The step of the newest complete checkpoint under a training output, or None."""
    pointer = storage.read_json(f"{CHECKPOINTS}/latest.json", missing_ok=True)
    if pointer and storage.exists(f"{pointer['path']}/meta.json"):
        return int(pointer["step"])
    steps = list_checkpoints(storage)  # the pointer is gone or ahead of a pruned/unfinished checkpoint
    return steps[-1] if steps else None


def resolve_checkpoint(uri: str, storage_options: dict | None = None) -> Storage:
    """A training output URI (-> its latest checkpoint) or one checkpoint's folder -> Storage at that folder."""
    storage = Storage(uri, storage_options)
    if storage.exists("meta.json") and storage.exists("model.safetensors"):
        return storage
    step = latest_checkpoint(storage)
    if step is None:
        raise StorageError(f"no checkpoint at {storage.uri}: expected {CHECKPOINTS}/latest.json or a folder with "
                           "model.safetensors and meta.json")
    return Storage(storage.url(step_dir(step)), storage_options)


def load_checkpoint(checkpoint: Storage, with_state: bool = True) -> dict[str, Any]:
    """``{"weights": {...}, "meta": {...}, "state": {...} | None}`` of one checkpoint folder."""
    meta = checkpoint.read_json("meta.json")
    try:
        weights = load_safetensors(checkpoint.read_bytes("model.safetensors"))
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise StorageError(f"{checkpoint.url('model.safetensors')} is not a readable safetensors file: "
                           f"{one_line(err)}") from None
    state = None
    if with_state:
        try:
            state = torch.load(io.BytesIO(checkpoint.read_bytes("state.pt")), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, ValueError) as err:
            raise StorageError(f"{checkpoint.url('state.pt')} is not a readable training state: "
                               f"{one_line(err)}") from None
    return {"weights": weights, "meta": meta, "state": state}
