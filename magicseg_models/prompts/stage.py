"""The prompt stage: jobs in, validated prompts and counterfactual prompts out.

A plain class (model or client created once in ``__init__``) mapping a batch of job rows to a batch of rows, so
the same object runs in a test, a notebook, the ``magicseg prompts`` command and inside a Ray actor.

How a job gets its prompt: one LLM call asks for ``k`` prompts for a class set; the job's ``variant`` (its pass
over the class list, from the planner) picks call ``variant // k`` and slot ``variant % k``, so repeated jobs of
the same classes get different prompts and every call serves ``k`` jobs. Answers are parsed, every prompt is
validated (class present as a whole word and inside the text encoder's window, sane, not a duplicate), a call
short of valid prompts is asked again up to ``max_attempts`` times, and the valid prompts are cached on storage.
A class set with no valid prompt falls back to the template prompt or is dropped (``prompts.on_failure``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from magicseg_models.config import PromptsConfig
from magicseg_models.prompts.cache import PromptCache, cache_key
from magicseg_models.prompts.text import (
    INSTRUCTION_VERSION, build_instruction, counterfactual, dedup_key, parse_completion, template_prompts,
    validate_prompt,
)
from magicseg_models.vocabulary import VocabClass, Vocabulary

DROP_PROMPT_FAILED = "prompt_failed"


def make_chat(config: PromptsConfig, api_key: str | None = None, seed: int = 0):
    """The LLM client of a backend: OpenAIChat (``openai``) or HFChat (``hf``); None for ``template``."""
    if config.backend == "openai":
        from magicseg_models.prompts.openai_writer import OpenAIChat

        return OpenAIChat(model=config.model, base_url=config.base_url, api_key=api_key,
                          concurrency=config.concurrency, timeout_s=config.timeout_s,
                          max_retries=config.max_retries, temperature=config.temperature,
                          max_tokens=config.max_new_tokens)
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
        self.rejects: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()  # llm, template, template_fallback, reused, dropped

    # ------------------------------------------------------------------------------------- public API
    def __call__(self, rows: Sequence[dict]) -> list[dict]:
        """Job rows (``class_ids``, optional ``variant``) -> the same rows with prompts or a ``drop_reason``."""
        jobs = [([self.vocabulary[i] for i in row["class_ids"]], int(row.get("variant", 0))) for row in rows]
        chosen = self._prompts_for_jobs(jobs)
        out = []
        for row, (classes, _), prompt in zip(rows, jobs, chosen):
            row = dict(row)
            if prompt is None:
                row.update(prompt=None, counterfactual_prompt=None, drop_reason=DROP_PROMPT_FAILED)
            else:
                row.update(prompt=prompt, counterfactual_prompt=counterfactual(prompt, classes))
            out.append(row)
        return out

    def prompts_for(self, classes: Sequence[VocabClass], n: int) -> list[dict]:
        """``n`` prompt pairs for one class set (what ``magicseg prompts`` prints)."""
        chosen = self._prompts_for_jobs([(list(classes), v) for v in range(n)])
        return [{"class_names": [c.name for c in classes], "prompt": p,
                 "counterfactual_prompt": None if p is None else counterfactual(p, classes)} for p in chosen]

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
        for classes, variant in jobs:
            calls.setdefault(self._call_id(classes, variant // k), classes)
        answers = self._answers(calls)
        chosen: list[str | None] = []
        for classes, variant in jobs:
            prompts = answers[self._call_id(classes, variant // k)]
            slot = variant % k
            if prompts:
                self.outcomes["llm" if slot < len(prompts) else "reused"] += 1
                chosen.append(prompts[slot % len(prompts)])
            elif self.config.on_failure == "template":
                self.outcomes["template_fallback"] += 1
                chosen.append(self._template(classes, variant))
            else:
                self.outcomes["dropped"] += 1
                chosen.append(None)
        return chosen

    def _template(self, classes: Sequence[VocabClass], variant: int) -> str:
        return template_prompts(classes, variant + 1, self.config.template, scenes=self.config.template_scenes)[-1]

    @staticmethod
    def _call_id(classes: Sequence[VocabClass], call: int) -> tuple:
        return tuple(sorted(c.name for c in classes)), call

    def _answers(self, calls: dict[tuple, list[VocabClass]]) -> dict[tuple, list[str]]:
        """Valid prompts per call: from the cache, else asked (and re-asked) of the LLM, then cached."""
        k = self.config.prompts_per_call
        keys = {cid: cache_key(class_names=[c.name for c in classes], backend=self.config.backend,
                               model=self.config.model, instruction_version=INSTRUCTION_VERSION, seed=self.seed,
                               call=cid[1]) for cid, classes in calls.items()}
        valid: dict[tuple, list[str]] = {}
        for cid in calls:
            cached = self.cache.get(keys[cid])
            if cached is not None:
                valid[cid] = cached
        todo = {cid: classes for cid, classes in calls.items() if cid not in valid}
        # calls for the same class set share one duplicate filter: their jobs must not get the same prompt
        by_classes: dict[tuple, set[str]] = {}
        seen = {cid: by_classes.setdefault(cid[0], set()) for cid in todo}
        for cid, prompts in valid.items():
            by_classes.setdefault(cid[0], set()).update(dedup_key(p) for p in prompts)
        for cid in todo:
            valid[cid] = []
        for _ in range(self.config.max_attempts):
            pending = [cid for cid in todo if len(valid[cid]) < k]
            if not pending:
                break
            texts = self.chat.complete_many_sync([build_instruction(todo[cid], k) for cid in pending])
            for cid, text in zip(pending, texts):
                self._collect(text, todo[cid], valid[cid], seen[cid], k)
        for cid in todo:
            if valid[cid]:  # an empty answer is not cached: a later run may succeed
                self.cache.put(keys[cid], valid[cid], meta={"requested": k})
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
            verdict = validate_prompt(prompt, classes, self.token_counter, seen=seen)
            if verdict.ok:
                valid.append(prompt)
            else:
                self.rejects[verdict.reason.split(":")[0]] += 1
