"""Helpers the generator-family tests share (tests never import one another)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from magicseg_models.config import GeneratorConfig, load_config
from magicseg_models.errors import MagicSegError
from magicseg_models.vocabulary import Vocabulary

SIZE, STEPS = 32, 3
PROMPTS = ["a photo of a cat sitting on a red sofa near a window", "a dog running in a green park at noon"]
COUNTERFACTUALS = ["a photo of a nothing sitting on a red sofa near a window",
                   "a nothing running in a green park at noon"]
SEEDS = [1001, 1002]


def tiny_family_config(family: str, **changes) -> GeneratorConfig:
    """The tiny preset's generator with ``family`` at 32x32, 3 steps, PNG (lossless: compare pixels via bytes)."""
    overrides = [f"generator.family={family}", f"generator.height={SIZE}", f"generator.width={SIZE}",
                 f"generator.steps={STEPS}", "generator.image_format=png"]
    overrides += [f"generator.{key}={value}" for key, value in changes.items()]
    return load_config("build", preset="tiny", overrides=overrides).generator


def rows(n: int = 2) -> list[dict]:
    return [{"sample_id": f"t-{i}", "class_ids": [0], "prompt": PROMPTS[i % 2],
             "counterfactual_prompt": COUNTERFACTUALS[i % 2], "seed": SEEDS[i % 2] + 10 * (i // 2)}
            for i in range(n)]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def one_line(err: BaseException) -> str:
    message = str(err)
    assert isinstance(err, MagicSegError), type(err)
    assert message and "\n" not in message, message
    return message


class DenoiserCalls:
    """Counts forward calls of a UNet or transformer and keeps each call's batch input and conditioning."""

    def __init__(self, module):
        self.calls, self.inputs, self.kwargs = 0, [], []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls += 1
        sample = args[0] if args else kwargs["hidden_states"]
        self.inputs.append(sample.detach().clone())
        self.kwargs.append(kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def class_at_token(count, name: str, position: int) -> str:
    """A prompt whose class ``name`` ends exactly at prompt token ``position`` of ``count`` (a tokenizer's count
    without special tokens): one-token filler words before it."""
    for words in range(position + 1):
        text = " ".join(["a"] * words + [name])
        if count(text) >= position:
            assert count(text) == position, (count(text), position)
            return text
    raise AssertionError(f"cannot place {name!r} at token {position}")


def validate(prompt: str, class_name: str, counter):
    from magicseg_models.prompts.text import validate_prompt

    return validate_prompt(prompt, [Vocabulary.default().resolve(class_name)], counter)


def one_thread():
    """Tiny models run fastest on one thread: on a shared CI core several threads mostly wait for each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
