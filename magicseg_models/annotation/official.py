"""The official Grounding DINO (``groundingdino-py``, the package the paper's authors used) as a detector backend.

``detector.backend=official`` with ``detector.config_file`` (default: the package's
``GroundingDINO_SwinT_OGC.py``) and ``detector.checkpoint`` (``groundingdino_swint_ogc.pth``). The package is an
optional extra: it compiles against the installed torch, so it is installed after it with
``pip install --no-build-isolation groundingdino-py`` (``make official``); without it, construction fails with
that line.

Same contract as the transformers backend (:class:`~magicseg_models.annotation.detector.BaseDetector`):
captions, token spans, chunking, thresholds and merging are shared; images go through the authors' transform
(``RandomResize([800], max_size=1333)``, or ``detector.image_size``) and are batched, padded, with one caption
each. The official model tokenizes and encodes its captions inside ``forward``, so the per-caption text cache of
the transformers backend does not apply here.

Compatibility: groundingdino-py 0.4 wraps BERT with helpers that transformers 5 removed
(``get_extended_attention_mask``, ``get_head_mask``). While building, its ``BertModelWarper`` is swapped for
:class:`_BertCompat`, which keeps the same submodules (so checkpoints load with the same keys) and runs
transformers' own ``BertModel.forward`` with the phrase-block attention mask, as transformers' port does.
``weights=random`` builds the full-size model (SwinT + BERT-base shapes) with random weights and the local
WordPiece tokenizer (no download); ``weights=pretrained`` takes the weights from ``detector.checkpoint`` (a path
or URL, fetched once per node like SAM's: :mod:`magicseg_models.weights.fetch`).

The text encoder: ``detector.text_encoder`` (a BERT folder or hub id), or else the config file's
``text_encoder_type`` (``bert-base-uncased``). The tokenizer and BERT are loaded here with transformers and
handed to the package's builder, so an offline cluster points ``text_encoder`` at a local folder instead of
editing the package's config or code. With ``weights=random`` and ``text_encoder`` set, BERT gets that model's
architecture (its ``config.json``) and tokenizer with random weights; the official model sizes its text
projection from ``bert.config.hidden_size``, so any BERT width builds.
"""

from __future__ import annotations

import contextlib
import os
import types
import warnings

import torch
from PIL import Image

from magicseg_models.annotation.detector_base import BaseDetector, DetectorWeightsError
from magicseg_models.annotation.detector_tokenizer import build_detector_tokenizer
from magicseg_models.config import DetectorConfig
from magicseg_models.devices import model_context, resolve_device
from magicseg_models.errors import ConfigError, MagicSegError, one_line
from magicseg_models.weights import TINY_INIT_SEED
from magicseg_models.weights.fetch import CheckpointFetchError, local_checkpoint
from magicseg_models.weights.hub import groundingdino_config_file

INSTALL_LINE = "pip install --no-build-isolation groundingdino-py"
# deprecation noise from inside groundingdino-py and its timm import, not actionable by users
_THIRD_PARTY_NOISE = (r".*torch\.meshgrid.*", r".*torch\.cuda\.amp\.autocast.*", r".*timm\.models\.layers.*")


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        for pattern in _THIRD_PARTY_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        yield


class MissingDependencyError(MagicSegError):
    """An optional package is not installed; the message holds the pip line that installs it."""


def require_groundingdino():
    try:
        with _quiet():
            import groundingdino  # noqa: F401
            from groundingdino.models.GroundingDINO import groundingdino as gmod
    except ImportError:
        raise MissingDependencyError(
            f"detector.backend=official needs the groundingdino-py package: {INSTALL_LINE} "
            "(after torch; or `make official`)") from None
    return gmod


class _BertCompat(torch.nn.Module):
    """groundingdino-py's ``BertModelWarper`` for transformers 5: same submodule names, transformers' forward."""

    def __init__(self, bert_model):
        super().__init__()
        self.config = bert_model.config
        self.embeddings = bert_model.embeddings
        self.encoder = bert_model.encoder
        self.pooler = bert_model.pooler
        self.__dict__["_bert"] = bert_model  # not registered twice: it owns the same modules

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **_):
        from transformers.modeling_outputs import BaseModelOutput

        mask = attention_mask.bool()
        if mask.dim() == 3:  # (B, L, L) phrase blocks -> (B, 1, L, L)
            mask = mask[:, None]
        out = self._bert(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, return_dict=True)
        return BaseModelOutput(last_hidden_state=out.last_hidden_state)


@contextlib.contextmanager
def _patched_builder(gmod, tokenizer=None, bert=None):
    """Inside: groundingdino builds with :class:`_BertCompat` (and a given tokenizer/BERT instead of loading)."""
    saved = gmod.BertModelWarper, gmod.get_tokenlizer
    gmod.BertModelWarper = _BertCompat
    if tokenizer is not None:
        gmod.get_tokenlizer = types.SimpleNamespace(get_tokenlizer=lambda _name: tokenizer,
                                                    get_pretrained_language_model=lambda _name: bert)
    try:
        yield
    finally:
        gmod.BertModelWarper, gmod.get_tokenlizer = saved


class OfficialGroundingDino(BaseDetector):
    """groundingdino-py's model behind the shared detector contract."""

    backend = "official"

    def __init__(self, config: DetectorConfig, device: str | torch.device | None = None):
        super().__init__()
        gmod = require_groundingdino()
        from groundingdino.models import build_model
        from groundingdino.util.slconfig import SLConfig

        if config.weights == "tiny":
            raise ConfigError("detector.weights=tiny needs detector.backend=transformers; the official backend "
                              "takes pretrained or random")
        if config.weights == "pretrained" and not config.checkpoint:
            raise ConfigError("detector.checkpoint is required with detector.backend=official and "
                              "weights=pretrained (groundingdino_swint_ogc.pth)")
        self.config = config
        self.device = resolve_device(device)
        config_file = config.config_file or groundingdino_config_file() or ""
        if not os.path.isfile(config_file):
            raise ConfigError(f"detector.config_file '{config_file}' not found")
        args = SLConfig.fromfile(config_file)
        args.device = self.device.type
        # activation checkpointing only saves memory for training; at inference it is overhead (and warnings)
        args.use_checkpoint = False
        args.use_transformer_ckpt = False
        text_encoder = config.text_encoder or args.text_encoder_type
        if config.weights == "random":
            tokenizer, bert = _random_text_encoder(config.text_encoder)
            with _patched_builder(gmod, tokenizer, bert), _quiet():
                model = build_model(args)
            self.source = {"detector": f"groundingdino-py {os.path.basename(config_file)} (random weights)",
                           "detector_weights": "random"}
        else:
            try:
                checkpoint = local_checkpoint(config.checkpoint, label="detector.checkpoint")
            except CheckpointFetchError as err:
                raise DetectorWeightsError(str(err)) from None
            tokenizer, bert = _pretrained_text_encoder(text_encoder)
            with _patched_builder(gmod, tokenizer, bert), _quiet():
                model = build_model(args)
            result = model.load_state_dict(read_official_checkpoint(checkpoint.path, checkpoint.source), strict=False)
            expected = len(model.state_dict())
            if len(result.missing_keys) > 0.1 * expected:  # strict=False as the authors load it, but not blind
                raise DetectorWeightsError(
                    f"detector.checkpoint '{config.checkpoint}' fits {os.path.basename(config_file)} badly: "
                    f"{len(result.missing_keys)} of {expected} weights missing (e.g. {result.missing_keys[0]})")
            name = checkpoint.source.rstrip("/").rsplit("/", 1)[-1]
            self.source = {"detector": f"groundingdino-py {os.path.basename(config_file)} {name}",
                           "detector_weights": "pretrained"}
        self.source["detector_text_encoder"] = text_encoder if config.weights == "pretrained" or \
            config.text_encoder else "bert-base shapes (random weights, local tokenizer)"
        self.model = model.to(self.device).eval()
        self.tokenizer = self.model.tokenizer
        self.max_text_tokens = min(config.max_text_tokens, int(self.model.max_text_len))
        import groundingdino.datasets.transforms as T

        short, long = self.resize_limits(config)
        self.transform = T.Compose([T.RandomResize([short], max_size=long), T.ToTensor(),
                                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def _forward(self, images: list[Image.Image], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from groundingdino.util.misc import nested_tensor_from_tensor_list

        tensors = [self.transform(image.convert("RGB"), None)[0] for image in images]
        samples = nested_tensor_from_tensor_list(tensors).to(self.device)
        with torch.inference_mode(), model_context(self.device, self.config), _quiet():
            out = self.model(samples, captions=list(texts))
        return out["pred_logits"].float(), out["pred_boxes"].float()


def _pretrained_text_encoder(name: str):
    """The official model's tokenizer and BERT, from a folder or hub id (transformers, one-line errors)."""
    from transformers import AutoTokenizer, BertModel

    try:
        return AutoTokenizer.from_pretrained(name), BertModel.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - offline hub, missing folder, not a BERT
        raise DetectorWeightsError(f"detector.text_encoder '{name}' could not be loaded: {one_line(err, 200)} (set "
                                   "detector.text_encoder to a local BERT folder when offline)") from None


def _random_text_encoder(name: str | None):
    """A randomly initialised BERT: BERT-base shapes with the local tokenizer, or ``name``'s architecture and
    tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    if name is None:
        tokenizer = build_detector_tokenizer()
        bert_config = BertConfig(vocab_size=max(len(tokenizer), 30522))  # BERT-base shapes
    else:
        try:
            tokenizer, bert_config = AutoTokenizer.from_pretrained(name), BertConfig.from_pretrained(name)
        except Exception as err:  # noqa: BLE001
            raise DetectorWeightsError(f"detector.text_encoder '{name}' could not be loaded: "
                                       f"{one_line(err, 200)}") from None
    torch.manual_seed(TINY_INIT_SEED)  # and the rest of the model after it: the same weights in every process
    return tokenizer, BertModel(bert_config)


def read_official_checkpoint(path: str, source: str | None = None) -> dict:
    """The state dict of an official .pth at ``path`` (the local copy of ``source``, which errors name)."""
    from groundingdino.util.misc import clean_state_dict

    import argparse

    try:
        # the released .pth also pickles its training args (an argparse.Namespace): allow that one class, never
        # arbitrary code (weights_only=False would run whatever a downloaded file contains)
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DetectorWeightsError(f"detector.checkpoint '{source or path}' cannot be read safely: "
                                   f"{one_line(err, 200)}") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise DetectorWeightsError(f"detector.checkpoint '{source or path}' holds no state dict")
    return clean_state_dict(state)
