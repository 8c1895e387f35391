"""The prompt stage: jobs in, validated prompts and counterfactual prompts out.

A plain class (model or client created once in ``__init__``) mapping a batch of job rows to a batch of rows, so
the same object runs in a test, a notebook, the ``magicseg prompts`` command and inside a Ray actor.

How a job gets its prompt: one LLM call asks for ``k`` prompts for a class set; the job's ``variant`` (its pass
over the class list, from the planner) picks call ``variant // k`` and slot ``variant % k``, so repeated jobs of
the same classes get different prompts and every call serves ``k`` jobs. Answers are parsed, every prompt is
validated (class present as a whole word and inside the text encoder's window, sane, not a duplicate), a call
short of valid prompts is asked again up to ``max_attempts`` times, and the valid prompts are cached on storage.
A class set with no valid prompt has its jobs dropped (``prompts.on_failure=drop``, the default) or given the
template prompt (``template``); either is counted in ``stats()["outcomes"]`` and logged as a warning. A server that
refuses every call stops the stage (``prompts.max_consecutive_failures``) instead of yielding nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from typing import Any, Callable, Sequence

from magicseg_models.config import PromptsConfig
from magicseg_models.errors import one_line
from magicseg_models.prompts.cache import PromptCache, cache_key
from magicseg_models.prompts.text import (
    INSTRUCTION_VERSION, ContextMatcher, build_instruction, counterfactual, covering_names, mention_phrases,
    parse_completion, template_prompts, tokenizer_counter, validate_prompt,
)
from magicseg_models.vocabulary import VocabClass, Vocabulary

DROP_PROMPT_FAILED = "prompt_failed"
logger = logging.getLogger(__name__)


def estimated_clip_tokens(text: str) -> int:
    """An over-estimate of CLIP BPE tokens: one per word or symbol, plus one per 6 letters of a long word."""
    return sum(1 + (len(tok) - 1) // 6 if tok[0].isalnum() else 1 for tok in re.findall(r"\w+|[^\w\s]", text))


def generator_token_counter(generator) -> Callable[[str], int]:
    """Token counts against every text encoder of the generator that carries the prompt to the image, with each
    encoder's own tokenizer (:mod:`magicseg_models.prompts.text_limits`: SD 1.5 CLIP 77; SDXL two CLIPs, 77 each;
    FLUX T5 ``generator.max_sequence_length``).

    When a tokenizer cannot be loaded (offline, no files), a warning and :func:`estimated_clip_tokens` for that
    encoder, which errs on the long side: a prompt may be rejected needlessly, never accepted with an invisible
    class.
    """
    from magicseg_models.prompts.text_limits import combine, encoder_limits, load_tokenizer

    limits = encoder_limits(generator)
    counters = []
    for limit in (lim for lim in limits if lim.carries_content):
        try:
            count = tokenizer_counter(load_tokenizer(generator, limit))
        except Exception as err:  # noqa: BLE001 - any load failure means: estimate instead
            logger.warning("no generator tokenizer for %s (%s): estimating tokens for its %d-token window",
                           limit.name, one_line(err, 200),
                           limit.max_tokens)
            count = estimated_clip_tokens
        counters.append((limit, count))
    return combine(limits, counters)


def make_chat(config: PromptsConfig, api_key: str | None = None, seed: int = 0):
    """The LLM client of a backend: OpenAIChat (``openai``) or HFChat (``hf``); None for ``template``."""
    if config.backend == "openai":
        from magicseg_models.prompts.openai_writer import OpenAIChat

        return OpenAIChat(model=config.model, base_url=config.base_url, api_key=api_key,
                          concurrency=config.concurrency, timeout_s=config.timeout_s,
                          max_retries=config.max_retries, temperature=config.temperature,
                          max_tokens=config.max_new_tokens, token_parameter=config.token_parameter,
                          max_consecutive_failures=config.max_consecutive_failures)
    if config.backend == "hf":
        from magicseg_models.prompts.hf_writer import HFChat

        return HFChat(model=config.model, weights=config.weights, temperature=config.temperature,
                      max_tokens=config.max_new_tokens, batch_size=config.resources.batch_size, seed=seed)
    return None


class PromptWriter:
    """Adds ``prompt`` and ``counterfactual_prompt`` to job rows (or ``drop_reason`` when it cannot)."""

    def __init__(self, config: PromptsConfig, vocabulary: Vocabulary, *, seed: int = 0,
                 cache: PromptCache | None = None, token_counter: Callable[[str], int] | None = None,
                 api_key: str | None = None, chat: Any = None):
        self.config = config
        self.vocabulary = vocabulary
        self.seed = seed
        self.cache = cache or PromptCache(None)
        self.token_counter = token_counter
        self.chat = chat if chat is not None else make_chat(config, api_key=api_key, seed=seed)
        # mentions inside longer vocabulary names ("bear" in "teddy bear") do not count as the class
        self.covering = covering_names(tuple(p for c in vocabulary for p in mention_phrases(c)))
        self.context = ContextMatcher(vocabulary)  # compiled once: the whole vocabulary in one pattern
        self.rejects: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()  # llm, template, template_fallback, reused, dropped

    # ------------------------------------------------------------------------------------- public API
    def __call__(self, rows: Sequence[dict]) -> list[dict]:
        """Job rows (``class_ids``, optional ``variant``) -> the same rows with prompts or a ``drop_reason``, and
        ``context_class_ids``: the other vocabulary classes the prompt names (:class:`ContextMatcher`; [] if none)."""
        jobs = [([self.vocabulary[i] for i in row["class_ids"]], int(row.get("variant", 0))) for row in rows]
        chosen = self._prompts_for_jobs(jobs)
        out = []
        for row, (classes, _), prompt in zip(rows, jobs, chosen):
            row = dict(row)
            if prompt is None:
                row.update(prompt=None, counterfactual_prompt=None, context_class_ids=[],
                           drop_reason=DROP_PROMPT_FAILED)
            else:
                row.update(prompt=prompt, counterfactual_prompt=counterfactual(prompt, classes, covering=self.covering),
                           context_class_ids=self.context(prompt, row["class_ids"]))
            out.append(row)
        return out

    def prompts_for(self, classes: Sequence[VocabClass], n: int) -> list[dict]:
        """``n`` prompt pairs for one class set (what ``magicseg prompts`` prints)."""
        chosen = self._prompts_for_jobs([(list(classes), v) for v in range(n)])
        asked = [c.id for c in classes]
        return [{"class_names": [c.name for c in classes], "prompt": p,
                 "counterfactual_prompt": None if p is None else counterfactual(p, classes, covering=self.covering),
                 "context_classes": [] if p is None else [self.vocabulary[i].name for i in self.context(p, asked)]}
                for p in chosen]

    @property
    def settings(self) -> dict[str, Any]:
        """What wrote the prompts (manifest ``models.prompts`` and shard metadata); never the API key."""
        from magicseg_models.config import redact

        c = self.config
        return redact({"backend": c.backend, "model": c.model, "weights": c.weights, "base_url": c.base_url,
                       "endpoint": self._endpoint() or None, "prompts_per_call": c.prompts_per_call,
                       "temperature": c.temperature, "max_new_tokens": c.max_new_tokens,
                       "max_attempts": c.max_attempts, "on_failure": c.on_failure, "template": c.template,
                       "template_scenes": c.template_scenes, "instruction_version": INSTRUCTION_VERSION})

    def stats(self) -> dict[str, Any]:
        """Accounting for the manifest and the Prefect artifact: LLM calls and tokens, cache, rejects, outcomes."""
        llm = self.chat.stats.as_dict() if self.chat is not None and hasattr(self.chat, "stats") else {}
        return {"backend": self.config.backend, "model": self.config.model, "llm": llm, **self.cache.stats(),
                "rejects": dict(sorted(self.rejects.items())), "outcomes": dict(sorted(self.outcomes.items()))}

    # ------------------------------------------------------------------------------------- internals
    def _prompts_for_jobs(self, jobs: Sequence[tuple[list[VocabClass], int]]) -> list[str | None]:
        if self.config.backend == "template":
            self.outcomes["template"] += len(jobs)
            return [self._template(classes, variant) for classes, variant in jobs]
        k = self.config.prompts_per_call
        calls: dict[tuple, list[VocabClass]] = {}
        needed: dict[tuple, int] = {}
        for classes, variant in jobs:
            cid = self._call_id(classes, variant // k)
            calls.setdefault(cid, classes)
            needed[cid] = max(needed.get(cid, 0), variant % k + 1)
        answers = self._answers(calls, needed)
        chosen: list[str | None] = []
        failed = 0
        for classes, variant in jobs:
            prompts = answers[self._call_id(classes, variant // k)]
            slot = variant % k
            if slot < len(prompts):
                self.outcomes["llm"] += 1
                chosen.append(prompts[slot])
            elif self.config.on_failure == "template":  # never a second job with the same LLM prompt
                self.outcomes["template_fallback"] += 1
                chosen.append(self._template(classes, variant))
                failed += 1
            else:
                self.outcomes["dropped"] += 1
                chosen.append(None)
                failed += 1
        if failed:  # the dataset changes either way: say so where the run's log is read
            logger.warning("%d of %d jobs got no valid %s prompt: %s (prompts.on_failure=%s); rejects so far: %s",
                           failed, len(jobs), self.config.backend,
                           "template prompts instead" if self.config.on_failure == "template" else "dropped",
                           self.config.on_failure, dict(self.rejects))
        return chosen

    def _template(self, classes: Sequence[VocabClass], variant: int) -> str:
        return template_prompts(classes, variant + 1, self.config.template, scenes=self.config.template_scenes)[-1]

    @staticmethod
    def _call_id(classes: Sequence[VocabClass], call: int) -> tuple:
        return tuple(sorted(c.name for c in classes)), call

    def _key(self, classes: Sequence[VocabClass], call: int) -> dict:
        # the instruction's own text (names, hints, k) is part of the key: another vocabulary or k asks anew
        instruction = json.dumps(build_instruction(classes, self.config.prompts_per_call), sort_keys=True)
        return cache_key(class_names=[c.name for c in classes], backend=self.config.backend,
                         model=f"{self.config.weights}:{self.config.model}@{self._endpoint()}",
                         instruction_version=f"{INSTRUCTION_VERSION}:{hashlib.sha256(instruction.encode()).hexdigest()[:16]}"
                                             f":t{self.config.temperature}", seed=self.seed, call=call)

    def _endpoint(self) -> str:
        return getattr(self.chat, "endpoint", "") or ""

    def _answers(self, calls: dict[tuple, list[VocabClass]], needed: dict[tuple, int]) -> dict[tuple, list[str]]:
        """Valid prompts per call: cached ones (re-validated), then asked of the LLM until the jobs at hand
        have theirs or ``max_attempts`` is spent; whatever is valid is cached (partial lists are topped up later).

        A one-class set recurs every pass over the vocabulary, so its call asks for all k prompts (the rest serve
        later jobs from the cache); a pair rarely recurs, so its call asks only for what its jobs need.
        """
        k = self.config.prompts_per_call
        keys = {cid: self._key(classes, cid[1]) for cid, classes in calls.items()}
        seen: dict[tuple, set[str]] = {}  # one duplicate filter per class set, across its calls
        valid: dict[tuple, list[str]] = {}
        for cid, classes in calls.items():
            shared = seen.setdefault(cid[0], set())
            valid[cid] = []
            for prompt in self.cache.get(keys[cid]) or []:
                if validate_prompt(prompt, classes, self.token_counter, seen=shared, covering=self.covering).ok:
                    valid[cid].append(prompt)
        want = {cid: k if len(classes) == 1 else needed[cid] for cid, classes in calls.items()}
        asked: set[tuple] = set()
        for _ in range(self.config.max_attempts):
            pending = [cid for cid in calls if len(valid[cid]) < needed[cid]]
            if not pending:
                break
            asked.update(pending)
            texts = self.chat.complete_many_sync(
                [build_instruction(calls[cid], want[cid] - len(valid[cid])) for cid in pending])
            for cid, text in zip(pending, texts):
                self._collect(text, calls[cid], valid[cid], seen[cid[0]], want[cid])
        for cid in asked:
            if valid[cid]:  # nothing valid is not cached: a later run asks again
                self.cache.put(keys[cid], valid[cid], meta={"requested": want[cid]})
        return valid

    def _collect(self, text: str | None, classes: list[VocabClass], valid: list[str], seen: set[str],
                 k: int) -> None:
        if text is None:
            self.rejects["llm_failed"] += 1
            return
        candidates = parse_completion(text)
        if not candidates:
            self.rejects["unparseable"] += 1
        for prompt in candidates:
            if len(valid) >= k:
                return
            verdict = validate_prompt(prompt, classes, self.token_counter, seen=seen, covering=self.covering)
            if verdict.ok:
                valid.append(prompt)
            else:
                self.rejects[verdict.reason.split(":")[0]] += 1
