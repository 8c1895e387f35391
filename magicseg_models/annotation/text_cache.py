"""The detectors' text caches: each distinct caption (Grounding DINO) or query (OWLv2) goes through the text
tower once."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Iterable

import torch


class LruStore:
    """A bounded least-recently-used store of computed values that counts hits and misses.

    A call asks :meth:`missing` for the keys it must compute (each once, in first-seen order; the others are
    hits and become most recent), reads every value before :meth:`add` stores the new ones, so an eviction can
    never take a value that same call still needs.
    """

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __getitem__(self, key: Hashable) -> Any:
        return self._items[key]

    def clear(self) -> None:
        self._items.clear()

    def missing(self, keys: Iterable[Hashable]) -> list[Hashable]:
        keys = list(keys)
        absent: dict[Hashable, None] = {}
        for key in keys:
            if key in self._items:
                self._items.move_to_end(key)
            else:
                absent[key] = None
        self.hits += len(keys) - len(absent)
        self.misses += len(absent)
        return list(absent)

    def add(self, fresh: dict[Hashable, Any]) -> None:
        for key, value in fresh.items():
            self._items[key] = value
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


class TextFeatureCache(torch.nn.Module):
    """Stands in for Grounding DINO's text backbone (BERT): runs it once per distinct caption.

    Keyed by the caption's token ids (padding stripped). Grounding DINO's phrase-block attention masks and
    position ids are functions of the token ids, and no real token attends to padding, so a caption's features
    do not depend on the batch it comes in; padded positions are returned as zeros (the model masks them
    everywhere downstream). Bounded LRU; bypassed while gradients are enabled.
    """

    def __init__(self, backbone: torch.nn.Module, pad_token_id: int = 0, max_entries: int = 512):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.pad_token_id = pad_token_id
        self.enabled = True
        self.store = LruStore(max_entries)

    hits = property(lambda self: self.store.hits)
    misses = property(lambda self: self.store.misses)

    def clear(self) -> None:
        self.store.clear()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, return_dict=True,
                **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        if not self.enabled or torch.is_grad_enabled() or attention_mask is None:
            return self.backbone(input_ids, attention_mask, token_type_ids, position_ids, return_dict=return_dict,
                                 **kwargs)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:  # not what Grounding DINO passes; keep the plain behaviour
            return self.backbone(input_ids, attention_mask, token_type_ids, position_ids, return_dict=return_dict,
                                 **kwargs)
        batch, seq = input_ids.shape
        real = (input_ids != self.pad_token_id).to(torch.long)
        lengths = (real * torch.arange(1, seq + 1, device=input_ids.device)).max(dim=1).values.tolist()
        ids_cpu, tt_cpu = input_ids.cpu(), token_type_ids.cpu()
        keys = [(tuple(ids_cpu[b, :n].tolist()), tuple(tt_cpu[b, :n].tolist())) for b, n in enumerate(lengths)]
        missing = {key: keys.index(key) for key in self.store.missing(keys)}  # key -> its first row
        fresh: dict[tuple, torch.Tensor] = {}
        if missing:
            rows = list(missing.values())
            length = max(lengths[b] for b in rows)
            out = self.backbone(input_ids[rows, :length], attention_mask[rows][..., :length, :length],
                                token_type_ids[rows, :length], position_ids[rows, :length], return_dict=True)
            hidden = out.last_hidden_state
            for j, (key, b) in enumerate(missing.items()):
                fresh[key] = hidden[j, :lengths[b]].detach()
        first = next(iter(fresh.values())) if fresh else self.store[keys[0]]
        features = first.new_zeros((batch, seq, first.shape[-1]))
        for b, key in enumerate(keys):
            features[b, :lengths[b]] = fresh[key] if key in fresh else self.store[key]
        self.store.add(fresh)
        if not return_dict:
            return (features,)
        return BaseModelOutput(last_hidden_state=features)
