"""ZegCLIP in plain PyTorch: a deep-prompted, frozen CLIP ViT, a relationship descriptor and a cross-attention decoder.

The architecture of ZegCLIP (Zhou et al., CVPR 2023; the official code is mmseg 0.24), rebuilt around
transformers' CLIP modules so that the pretrained weights load unchanged:

- **Image encoder** (:class:`PromptedCLIPVisionEncoder`): CLIP's patch embedding, position embedding (resized from
  the pretrained grid to the ``image_size`` grid, then to the actual input grid at run time), ``pre_layrnorm`` and
  encoder layers, all frozen. Deep visual prompt tuning: ``prompt_tokens`` learned tokens per layer, inserted after
  CLS before layer 0 and *replaced* before each later layer by that layer's own tokens. Every prompt passes one
  Linear(width, width) **shared by all layers** + Dropout: the published trainable count (13,821,184 for ViT-B/16,
  10 tokens) is only reached with a single shared Linear; one per layer would add 11 x 590,592. The final hidden
  states go through a trainable LayerNorm(eps 1e-6), then CLIP's frozen ``post_layernorm`` and visual projection.
  Outputs: L2-normalised patch embeddings ``B x D x h x w`` and the L2-normalised CLS embedding ``B x D``.
- **Relationship descriptor**: class queries ``q = Linear(2D, D)(concat(text * cls, text))``, ``B x C x D``.
- **Decoder** (:class:`ZegCLIPDecoder`): ``decoder_layers`` post-norm layers with cross-attention only
  (queries = class queries, keys/values = patch embeddings) and a ReLU FFN. The mask logits are the head-averaged
  *pre-softmax* attention logits of the last layer, ``B x C x h x w``, bilinearly upsampled to the input size.

Two deliberate choices, both with the official behaviour one switch away:

- The official decoder layer subclasses ``nn.TransformerDecoderLayer`` and so builds a self-attention (and its
  LayerNorm) it never calls: 1,051,648 parameters per layer, 3,154,944 for 3 layers at d = 512. We do not build
  it. ViT-B/16 with 10 prompt tokens then has **10,666,240** trainable parameters (11,495,680 with 100 tokens);
  ``ZegCLIPConfig.original_unused_self_attn=True`` builds the dead block too and gives the published
  **13,821,184** (14,650,624 with 100 tokens). The count: prompts 12 x 10 x 768 = 92,160; shared prompt Linear
  590,592; prompt LayerNorm 1,536; relationship Linear(1024, 512) 524,800; per decoder layer q/k/v/out
  projections 4 x 262,656, FFN 1,050,624 + 1,049,088, two LayerNorms 2,048 = 3,152,384 (x 3).
- Only the last layer's attention *logits* reach the loss, so that layer's value/output projections, FFN and
  norms never get a gradient (true of the official code as well, which computes them anyway). We skip computing
  them; they are still built so that checkpoints and the parameter count match. Distributed data parallel needs
  ``find_unused_parameters=True`` or to leave them out (:meth:`ZegCLIP.parameters_without_gradient`).

Two quirks of the official code are options of :class:`~magicseg_models.config.ZegCLIPConfig`: the position
embedding is resized bilinearly (``pos_interpolation``; transformers' own CLIP uses bicubic) and the CLS token
gets CLIP's class embedding twice (``double_class_embedding``; on by default, as the official code computes it,
off in the ``zegclip-vitb16-plus`` preset). The official backbone declares a
drop-path rate but its blocks never apply it, so there is none here.

The image encoder is exposed on its own (:meth:`ZegCLIP.encode_image`) so that a counterfactual image goes through
the same prompted encoder; :meth:`ZegCLIP.decode` is the rest of the forward pass. A training step can therefore
encode the image and its counterfactual in one batch and decode only the images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from magicseg_models.errors import MagicSegError

CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


class ZegCLIPError(MagicSegError):
    """The ZegCLIP model cannot be built or loaded as asked (mismatched sizes, weights, checkpoint)."""


def _normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    return F.normalize(x, dim=dim, eps=1e-12)


class PromptedCLIPVisionEncoder(nn.Module):
    """CLIP's vision tower with deep prompts; only the prompts, their Linear and the final LayerNorm train.

    ``vision_model`` is a transformers ``CLIPVisionModel`` (``embeddings``, ``pre_layrnorm``, ``encoder.layers``,
    ``post_layernorm``) and ``visual_projection`` CLIP's ``Linear(width, D, bias=False)``; both are frozen here.
    """

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Linear, *, image_size: int,
                 prompt_tokens: int, prompt_dropout: float, pos_interpolation: str = "bilinear",
                 double_class_embedding: bool = True):
        super().__init__()
        self.clip = vision_model
        self.visual_projection = visual_projection
        for p in [*self.clip.parameters(), *self.visual_projection.parameters()]:
            p.requires_grad_(False)
        embeddings = self.clip.embeddings
        self.width = embeddings.embed_dim
        self.patch_size = embeddings.patch_size
        self.num_layers = len(self.clip.encoder.layers)
        self.output_dim = visual_projection.out_features
        self.pretrained_grid = int(round(math.sqrt(embeddings.position_embedding.weight.shape[0] - 1)))
        self.base_grid = image_size // self.patch_size
        self.pos_interpolation = pos_interpolation
        self.double_class_embedding = double_class_embedding
        self.num_prompts = prompt_tokens

        if prompt_tokens > 0:
            # one row of tokens per layer: row 0 is inserted before layer 0, row i replaces them before layer i
            self.prompt_embeddings = nn.Parameter(torch.zeros(self.num_layers, prompt_tokens, self.width))
            # ZegCLIP/VPT init: xavier-uniform bound computed as if the prompt were a patch
            bound = math.sqrt(6.0 / float(3 * self.patch_size * self.patch_size + self.width))
            nn.init.uniform_(self.prompt_embeddings, -bound, bound)
            self.prompt_proj = nn.Linear(self.width, self.width)
            nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
            self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.prompt_norm = nn.LayerNorm(self.width, eps=1e-6)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """``1 x (1 + height*width) x width``: CLS position, then the grid resized like the official code.

        The pretrained grid (14 x 14 for ViT-B/16 at 224) is first resized to the ``image_size`` grid (32 x 32 at
        512), which is what the official code stores at load time, then to the actual grid when that differs.
        """
        weight = self.clip.embeddings.position_embedding.weight
        cls_pos = weight[:1]
        g = self.pretrained_grid
        grid = weight[1:].reshape(1, g, g, self.width).permute(0, 3, 1, 2)
        # resizing in float32: bicubic/bilinear in half precision is unsupported on some CPUs and lossy anyway
        grid = grid.float()
        if self.base_grid != g:
            grid = F.interpolate(grid, size=(self.base_grid, self.base_grid), mode=self.pos_interpolation,
                                 align_corners=False)
        if (height, width) != tuple(grid.shape[-2:]):
            grid = F.interpolate(grid, size=(height, width), mode=self.pos_interpolation, align_corners=False)
        grid = grid.to(weight.dtype).flatten(2).transpose(1, 2)
        return torch.cat([cls_pos[None], grid], dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` B x 3 x H x W (CLIP-normalised) -> (patch B x D x h x w, cls B x D), both L2-normalised.

        The grid is ``H // patch x W // patch`` (a remainder is cut, as the strided convolution does).
        """
        embeddings = self.clip.embeddings
        b = images.shape[0]
        x = embeddings.patch_embedding(images.to(embeddings.patch_embedding.weight.dtype))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = embeddings.class_embedding.to(x.dtype).expand(b, 1, -1)
        if self.double_class_embedding:
            cls = cls * 2
        x = torch.cat([cls, x], dim=1) + self.position_embedding(h, w)
        x = self.clip.pre_layrnorm(x)

        n = self.num_prompts
        if n:
            # expanded before dropout: every image draws its own dropout mask, as in the official code
            prompts = self.prompt_proj(self.prompt_embeddings).to(x.dtype)
            prompts = self.prompt_dropout(prompts.unsqueeze(0).expand(b, -1, -1, -1))
        for i, layer in enumerate(self.clip.encoder.layers):
            if n:
                rest = x[:, 1:] if i == 0 else x[:, 1 + n:]
                x = torch.cat([x[:, :1], prompts[:, i], rest], dim=1)
            x = layer(x, None)
        x = self.prompt_norm(x)
        x = self.clip.post_layernorm(x)
        x = self.visual_projection(x)
        cls_out = _normalize(x[:, 0], dim=-1)
        patch = x[:, -(h * w):].transpose(1, 2).reshape(b, -1, h, w)
        return _normalize(patch, dim=1), cls_out


class CrossAttention(nn.Module):
    """Multi-head cross-attention that can also return its head-averaged pre-softmax logits."""

    def __init__(self, dim: int, heads: int, attn_dropout: float):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.attn_dropout = attn_dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def mean_logits(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """B x Nq x Nk: the mean over heads of ``q_h . k_h * scale``.

        The sum over heads of per-head dot products is the full-width dot product, so the mean is one matmul of
        the full projections divided by the head count: the same numbers as averaging per-head logits.
        """
        return torch.matmul(self.q(queries), self.k(memory).transpose(1, 2)) * (self.scale / self.heads)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, nq, d = queries.shape
        nk = memory.shape[1]
        q = self.q(queries).view(b, nq, self.heads, -1).transpose(1, 2)
        k = self.k(memory).view(b, nk, self.heads, -1).transpose(1, 2)
        v = self.v(memory).view(b, nk, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0,
                                             scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class DecoderLayer(nn.Module):
    """Post-norm layer: cross-attention -> add & norm -> ReLU FFN -> add & norm (``nn.TransformerDecoderLayer``
    defaults: dropout 0.1, LayerNorm eps 1e-5), without the self-attention."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, unused_self_attn: bool = False):
        super().__init__()
        self.cross_attn = CrossAttention(dim, heads, attn_dropout=dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        if unused_self_attn:
            # built, never called: reproduces the official parameter count and nothing else
            self.unused_self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
            self.unused_norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.norm_attn(queries + self.dropout(self.cross_attn(queries, memory)))
        y = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm_ffn(x + self.dropout(y))


class ZegCLIPDecoder(nn.Module):
    """Relationship descriptor + cross-attention layers -> mask logits at the patch grid."""

    def __init__(self, dim: int, heads: int, ffn: int, layers: int, dropout: float,
                 unused_self_attn: bool = False):
        super().__init__()
        self.q_proj = nn.Linear(2 * dim, dim)
        self.layers = nn.ModuleList(
            [DecoderLayer(dim, heads, ffn, dropout, unused_self_attn) for _ in range(layers)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the official head's init_weights: truncated normal (std 0.02) Linears with zero bias, unit LayerNorms
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def class_queries(self, text: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """``text`` C x D or B x C x D, ``cls`` B x D -> B x C x D."""
        if text.dim() == 2:
            text = text.unsqueeze(0).expand(cls.shape[0], -1, -1)
        text = text.to(cls.dtype)
        return self.q_proj(torch.cat([text * cls.unsqueeze(1), text], dim=-1))

    def forward(self, text: torch.Tensor, cls: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """-> mask logits B x C x h x w at the patch grid."""
        b, d, h, w = patch.shape
        memory = patch.flatten(2).transpose(1, 2)
        q = self.class_queries(text, cls)
        for layer in self.layers[:-1]:
            q = layer(q, memory)
        # the last layer contributes only its attention logits: the rest of it would be computed for nothing
        logits = self.layers[-1].cross_attn.mean_logits(q, memory)
        return logits.transpose(1, 2).reshape(b, h, w, -1).permute(0, 3, 1, 2)


class ZegCLIP(nn.Module):
    """The whole model: ``forward(images, class_embeddings)`` -> dict(mask_logits, cls, patch).

    ``class_embeddings`` are L2-normalised text embeddings, ``C x D`` (one class list for the batch) or
    ``B x C x D`` (a different sampled subset per image).
    """

    def __init__(self, encoder: PromptedCLIPVisionEncoder, decoder: ZegCLIPDecoder, info: dict[str, Any] | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.info = dict(info or {})

    @property
    def embed_dim(self) -> int:
        return self.encoder.output_dim

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch B x D x h x w, cls B x D), both L2-normalised, through the prompted encoder."""
        return self.encoder(images)

    def decode(self, patch: torch.Tensor, cls: torch.Tensor, class_embeddings: torch.Tensor,
               output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Mask logits B x C x H x W from encoder outputs; ``output_size`` None = the patch grid."""
        logits = self.decoder(class_embeddings, cls, patch)
        if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
            logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
        return logits

    def forward(self, images: torch.Tensor, class_embeddings: torch.Tensor,
                output_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """``output_size`` None = the input's H x W (the official head upsamples to the input size)."""
        if class_embeddings.dim() == 3 and class_embeddings.shape[0] != images.shape[0]:
            raise ValueError(f"class_embeddings for {class_embeddings.shape[0]} images, got {images.shape[0]} images")
        patch, cls = self.encode_image(images)
        size = tuple(images.shape[-2:]) if output_size is None else output_size
        return {"mask_logits": self.decode(patch, cls, class_embeddings, size), "cls": cls, "patch": patch}

    # ------------------------------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameters_without_gradient(self) -> list[str]:
        """Trainable parameters that no loss can reach (see the module docstring), by name."""
        last = f"decoder.layers.{len(self.decoder.layers) - 1}."
        reached = (f"{last}cross_attn.q.", f"{last}cross_attn.k.")
        return [name for name, p in self.named_parameters() if p.requires_grad and (
            ".unused_" in name or (name.startswith(last) and not name.startswith(reached)))]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (prompts, final LayerNorm, decoder): a checkpoint without the frozen CLIP."""
        names = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ZegCLIPError(f"checkpoint does not match the model ({self.info.get('name', 'ZegCLIP')}): "
                               f"{len(missing)} missing (e.g. {sorted(missing)[:2]}), "
                               f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})")
        self.load_state_dict(state, strict=False)
