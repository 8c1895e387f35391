"""The detector's text-feature cache: Grounding DINO's text backbone run once per distinct caption."""

from __future__ import annotations

from collections import OrderedDict

import torch


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
        self.max_entries = max_entries
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def clear(self) -> None:
        self._cache.clear()

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
        missing: dict[tuple, int] = {}
        for b, key in enumerate(keys):
            if key in self._cache:
                self._cache.move_to_end(key)
            elif key not in missing:
                missing[key] = b
        self.hits += batch - len(missing)
        self.misses += len(missing)
        fresh: dict[tuple, torch.Tensor] = {}
        if missing:
            rows = list(missing.values())
            length = max(lengths[b] for b in rows)
            out = self.backbone(input_ids[rows, :length], attention_mask[rows][..., :length, :length],
                                token_type_ids[rows, :length], position_ids[rows, :length], return_dict=True)
            hidden = out.last_hidden_state
            for j, (key, b) in enumerate(missing.items()):
                fresh[key] = hidden[j, :lengths[b]].detach()
        first = next(iter(fresh.values())) if fresh else self._cache[keys[0]]
        features = first.new_zeros((batch, seq, first.shape[-1]))
        for b, key in enumerate(keys):
            features[b, :lengths[b]] = fresh[key] if key in fresh else self._cache[key]
        for key, value in fresh.items():
            self._cache[key] = value
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        if not return_dict:
            return (features,)
        return BaseModelOutput(last_hidden_state=features)
