"""Frozen CLIP text embeddings of class names, computed once per vocabulary and cached.

ZegCLIP never trains its text side: a class is the L2-normalised CLIP text embedding of its name placed in prompt
templates. ``imagenet15`` is the authors' multi-template setting (each template's embedding normalised, the mean
over the 15 templates normalised again, as their ``get_embedding`` notebook does); ``single`` is their
single-template setting, ``"a photo of a {}"`` (no full stop, as in their notebook).

Names: vocabulary names such as ``bus_(vehicle)`` or ``bus (vehicle)`` become prompt text by turning underscores
into spaces and collapsing whitespace; the qualifier stays, because it is what tells ``bow (weapon)`` from
``bow (decorative ribbons)`` (dropping it would give two classes the same embedding). Names that are already
prompt names ("potted plant") pass through unchanged.

Caching: embeddings live in a process-wide in-memory cache keyed by the model's fingerprint (its identity, a hash
of its text projection and of the tokenizer's output), the templates and the names; with ``cache_dir`` they are
also written as one safetensors file per key, so a rerun or another worker skips the text tower entirely.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

# ZegCLIP's 15 templates (configs/_base_/datasets/text_embedding/get_embedding.ipynb in the official code)
IMAGENET15_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "a {} in the scene.",
    "a photo of a {} in the scene.",
    "There is a {} in the scene.",
    "There is the {} in the scene.",
    "This is a {} in the scene.",
    "This is the {} in the scene.",
    "This is one {} in the scene.",
)
SINGLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}",)
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"single": SINGLE_TEMPLATES, "imagenet15": IMAGENET15_TEMPLATES}

_MEMORY_CACHE: OrderedDict[str, torch.Tensor] = OrderedDict()
_MEMORY_CACHE_SIZE = 32


def prompt_text(name: str) -> str:
    """``"bus_(vehicle)"`` -> ``"bus (vehicle)"``; prompt names pass through."""
    return " ".join(name.replace("_", " ").split())


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return TEMPLATE_SETS[templates]
        if "{}" not in templates:
            raise ValueError(f"unknown template set {templates!r}; known: {', '.join(TEMPLATE_SETS)} "
                             "or templates containing '{}'")
        return (templates,)
    out = tuple(templates)
    if not out or any("{}" not in t for t in out):
        raise ValueError("every template must contain '{}'")
    return out


def clear_memory_cache() -> None:
    _MEMORY_CACHE.clear()


class CLIPTextEncoder(nn.Module):
    """CLIP's text tower + projection, frozen; :meth:`embed` maps class names to ``C x D`` unit vectors."""

    def __init__(self, text_model: nn.Module, text_projection: nn.Linear, tokenizer: Any, *,
                 templates: str | Sequence[str] = "imagenet15", identity: str = "clip",
                 cache_dir: str | None = None, batch_size: int = 256, max_length: int = 77):
        super().__init__()
        self.text_model = text_model
        self.text_projection = text_projection
        self.requires_grad_(False)
        self.eval()
        self.tokenizer = tokenizer
        self.templates = resolve_templates(templates)
        self.identity = identity
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.max_length = max_length
        self._fingerprint: str | None = None

    @property
    def embed_dim(self) -> int:
        return self.text_projection.out_features

    @property
    def device(self) -> torch.device:
        return self.text_projection.weight.device

    def train(self, mode: bool = True):
        # frozen for good: dropout-free anyway, but eval keeps it so whatever a parent module does
        return super().train(False)

    def fingerprint(self) -> str:
        """Identifies the weights and tokenizer: equal fingerprints give equal embeddings."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.identity.encode())
            weight = self.text_projection.weight.detach().float().cpu().contiguous()
            digest.update(weight.numpy().tobytes())
            digest.update(str(self.tokenizer("a photo of a cat.")["input_ids"]).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """N texts -> N x D L2-normalised float32 embeddings on this encoder's device (no caching)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            # no attention mask, as OpenAI's CLIP: the causal mask already keeps padding out of the EOS state
            ids = self.tokenizer(chunk, padding="max_length", max_length=self.max_length, truncation=True,
                                 return_tensors="pt")["input_ids"].to(self.device)
            pooled = self.text_model(input_ids=ids).pooler_output
            out.append(torch.nn.functional.normalize(self.text_projection(pooled).float(), dim=-1))
        if not out:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return torch.cat(out)

    def cache_key(self, names: Sequence[str], templates: Sequence[str]) -> str:
        payload = json.dumps({"model": self.fingerprint(), "templates": list(templates), "names": list(names)})
        return hashlib.sha256(payload.encode()).hexdigest()

    def embed(self, names: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """Class names -> ``C x D`` embeddings (float32, on this encoder's device, no grad), cached.

        Each class: the normalised mean over templates of the normalised template embeddings.
        """
        if isinstance(names, str):
            raise TypeError("embed() takes a list of class names, not one string")
        texts = [prompt_text(n) for n in names]
        if any(not t for t in texts):
            raise ValueError("empty class name")
        chosen = self.templates if templates is None else resolve_templates(templates)
        key = self.cache_key(texts, chosen)
        cached = _MEMORY_CACHE.get(key)
        if cached is None:
            cached = self._read_disk(key, len(texts))
        if cached is None:
            prompts = [t.format(name) for name in texts for t in chosen]
            per_template = self.encode_texts(prompts).view(len(texts), len(chosen), -1)
            cached = torch.nn.functional.normalize(per_template.mean(dim=1), dim=-1).cpu()
            self._write_disk(key, cached, chosen)
        _MEMORY_CACHE[key] = cached
        _MEMORY_CACHE.move_to_end(key)
        while len(_MEMORY_CACHE) > _MEMORY_CACHE_SIZE:
            _MEMORY_CACHE.popitem(last=False)
        return cached.to(self.device)

    # ---------------------------------------------------------------------------------------- disk cache
    def _path(self, key: str) -> str | None:
        if not self.cache_dir:
            return None
        return os.path.join(os.path.expanduser(self.cache_dir), f"text-embeddings-{key[:32]}.safetensors")

    def _read_disk(self, key: str, count: int) -> torch.Tensor | None:
        path = self._path(key)
        if path is None or not os.path.exists(path):
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensor = load_file(path)["embeddings"]
        except (SafetensorError, KeyError, OSError):
            return None  # a damaged cache file is recomputed (and rewritten), never trusted
        if tensor.shape != (count, self.embed_dim):
            return None
        return tensor.float()

    def _write_disk(self, key: str, tensor: torch.Tensor, templates: Sequence[str]) -> None:
        path = self._path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        # written beside and renamed: readers in other processes see the whole file or none
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embeddings": tensor.contiguous()}, tmp,
                      metadata={"model": self.identity, "templates": json.dumps(list(templates))})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
