"""A local instruct model through transformers: batched chat completions, no server.

``weights="pretrained"``: ``model`` is a hub id or local path of any causal LM with a chat template
(e.g. ``Qwen/Qwen2.5-1.5B-Instruct``), fp16/bf16 on GPU. ``weights="tiny"``: a 2-layer Llama with random
weights and a byte-level BPE tokenizer trained here on the vocabulary, for CPU tests - its outputs are junk,
which is the point: validation and fallback must cope. In a build this class lives inside a Ray actor, so the
model loads once per actor.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from magicseg_models.errors import ConfigError, one_line
from magicseg_models.prompts.openai_writer import LLMStats

_TINY_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}assistant:{% endif %}")


@lru_cache(maxsize=1)
def tiny_chat_tokenizer():
    """A byte-level BPE tokenizer trained on the builtin vocabulary names (deterministic, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from magicseg_models.vocabulary import Vocabulary

    corpus = [c.prompt_name for c in Vocabulary.default()] + [
        "a photo of a detailed scene with a colourful background, in the street, at night, on a table",
        "1. 2. 3. 4. 5. 6. 7. 8. 9. 10. Here are prompts:",
    ]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")
    fast.chat_template = _TINY_CHAT_TEMPLATE
    return fast


def tiny_model(vocab_size: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)  # same random weights every time: tests and reruns see the same junk
    return LlamaForCausalLM(config).eval()


class HFChat:
    """Same interface as :class:`~magicseg_models.prompts.openai_writer.OpenAIChat`: ``complete_many_sync``."""

    def __init__(self, *, model: str, weights: str = "pretrained", temperature: float = 1.0,
                 max_tokens: int = 1024, batch_size: int = 8, device: str = "auto", seed: int = 0):
        import torch

        from magicseg_models.devices import resolve_device

        if weights == "random":
            raise ConfigError("prompts.weights=random is not supported for the hf backend; use tiny or pretrained")
        self.device = str(resolve_device(device))
        if weights == "tiny":
            self.tokenizer = tiny_chat_tokenizer()
            self.model = tiny_model(len(self.tokenizer)).to(self.device)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
                self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
            except OSError as err:
                raise ConfigError(f"prompts.model '{model}' could not be loaded: {one_line(err)}") from None
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        if weights == "tiny":
            max_tokens = min(max_tokens, 32)  # its text is junk whatever the length: keep CPU runs in seconds
        self.temperature, self.max_tokens, self.batch_size, self.seed = temperature, max_tokens, batch_size, seed
        self.stats = LLMStats()
        self._draws = 0

    def complete_many_sync(self, batches: Sequence[list[dict]]) -> list[str | None]:
        import torch

        texts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batches]
        out: list[str | None] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            inputs = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            # reproducible per run, but a re-ask (same messages) must not get the very same sample again
            torch.manual_seed(self.seed * 1_000_003 + self._draws)
            self._draws += 1
            with torch.inference_mode():
                generated = self.model.generate(
                    **inputs, do_sample=self.temperature > 0, temperature=self.temperature or None,
                    max_new_tokens=self.max_tokens, pad_token_id=self.tokenizer.pad_token_id)
            new_tokens = generated[:, inputs["input_ids"].shape[1]:]
            self.stats.calls += len(chunk)
            self.stats.prompt_tokens += int(inputs["attention_mask"].sum())
            self.stats.completion_tokens += int((new_tokens != self.tokenizer.pad_token_id).sum())
            out.extend(self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return out
