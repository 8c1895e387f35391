"""Async transport to any OpenAI-compatible chat endpoint: retries, backoff, concurrency and accounting.

This module only moves text: it sends chat messages and returns the raw completion texts (or ``None`` for a
call that kept failing). Building the instruction and parsing/checking the answers is another module's job.

Pointing it at an endpoint (the ``prompts`` config section):

* **OpenAI** (default): leave ``prompts.base_url`` unset (``OPENAI_BASE_URL`` is honoured when set) and put the key in ``OPENAI_API_KEY`` (or name a Prefect
  Secret block in ``prompts.api_key_secret``); ``prompts.model`` is e.g. ``gpt-4o-mini``.
* **vLLM** (``vllm serve <model>`` starts an OpenAI-compatible server)::

      magicseg build ... --set prompts.base_url=http://host:8000/v1 --set prompts.model=<served model>

  ``<served model>`` is the name vLLM serves (``--served-model-name``, else the model path); ``GET /v1/models``
  lists it. vLLM accepts any key unless started with ``--api-key``.
* **Ollama**: ``--set prompts.base_url=http://localhost:11434/v1 --set prompts.model=llama3.1`` (a model pulled
  with ``ollama pull``). Ollama ignores the key.

API key: the ``api_key`` argument, else ``OPENAI_API_KEY``, else - only for a server on this machine
(localhost / 127.0.0.1 / ::1) - the placeholder ``"EMPTY"``; otherwise :class:`LLMError`. The key is never put
in an exception message, a log record, ``repr()`` or the stats.

Failure handling (the SDK's own retries are off, ``max_retries=0``; this module retries itself):

* retried with exponential backoff and full jitter, ``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``:
  429 (``rate_limited``), 5xx (``server_error``), 408 / timeouts (``timeout``), 409 (``conflict``), connection
  errors (``connection``), a 200 whose body is not a chat completion (``malformed``) and an empty or missing
  completion content (``empty``). A ``Retry-After`` (seconds or HTTP-date; or ``retry-after-ms``) header on a
  429/5xx is used as the delay instead, capped at ``backoff_max_s``.
* not retried, the call returns ``None``: other 4xx such as 400 / 422 (``bad_request``: e.g. context too long -
  asking again cannot help, but other calls may still succeed). ``max_consecutive_failures`` such refusals in a
  row (no success in between) raise :class:`LLMError` with the server's message: every call is being refused, and
  the build must stop before it spends GPU time on nothing.
* a 400 that names a parameter this client sent is answered by changing the request once per client and asking
  again at once (counted as a retry, error kind ``unsupported_parameter``): ``max_tokens`` <->
  ``max_completion_tokens`` (current OpenAI models take only the latter; older servers only the former) when
  ``token_parameter="auto"``, and ``temperature`` (models that take only their default, 1) is then left out, with a
  warning, since it changes the prompts. ``stats.adjustments`` records both. ``token_parameter="auto"`` starts with
  ``max_completion_tokens`` on api.openai.com and ``max_tokens`` on any other server (vLLM, Ollama, llama.cpp).
  Until a call succeeds, calls go one at a time, so such a server sees one refused request per client, not one
  per call in flight.
* raised as :class:`LLMError` (asking again cannot fix them, and every other call would fail the same way):
  401 / 403 (the key is rejected; counted as ``auth``) and 404 (no such model, or a base URL without ``/v1``;
  ``not_found``). In :meth:`OpenAIChat.complete_many` such an error cancels the other calls.

``stats.calls`` counts :meth:`OpenAIChat.complete` calls, ``stats.retries`` the extra attempts (so the endpoint
saw ``calls + retries`` requests), ``stats.failures`` the calls that returned ``None``, ``stats.errors`` every
failed attempt by kind, and the token counts the endpoint's ``usage`` reports (when it reports them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from magicseg_models.errors import MagicSegError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "EMPTY"  # vLLM and Ollama accept any key
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}

__all__ = ["LLMError", "LLMStats", "OpenAIChat", "resolve_api_key"]


class LLMError(MagicSegError):
    """The LLM endpoint cannot be used at all (no key, key rejected, unknown model): retrying cannot help."""


# ------------------------------------------------------------------------------------------------------
# accounting
# ------------------------------------------------------------------------------------------------------


@dataclass
class LLMStats:
    """What the LLM calls cost and how they went; goes into the build's manifest."""

    calls: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failed attempts by kind
    # requests changed to suit the server ("token_parameter", "temperature" -> what is sent now)
    adjustments: dict[str, str] = field(default_factory=dict)

    _COUNTERS = ("calls", "retries", "failures", "prompt_tokens", "completion_tokens")

    def merge(self, other: LLMStats | Mapping[str, Any]) -> None:
        """Add another worker's stats (an :class:`LLMStats` or its :meth:`as_dict`) into this one."""
        get = other.get if isinstance(other, Mapping) else (lambda k, d=None: getattr(other, k, d))
        for name in self._COUNTERS:
            setattr(self, name, getattr(self, name) + int(get(name, 0) or 0))
        for kind, n in dict(get("errors", None) or {}).items():
            self.errors[kind] = self.errors.get(kind, 0) + int(n)
        self.adjustments.update({str(k): str(v) for k, v in dict(get("adjustments", None) or {}).items()})

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {name: getattr(self, name) for name in self._COUNTERS}
        d["errors"] = dict(sorted(self.errors.items()))
        d["adjustments"] = dict(sorted(self.adjustments.items()))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LLMStats:
        stats = cls()
        stats.merge(d)
        return stats


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------


def _is_local(base_url: str | None) -> bool:
    if not base_url:
        return False
    try:
        host = (urlsplit(base_url).hostname or "").lower()
    except ValueError:
        return False
    if host in _LOCAL_HOSTS or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(api_key: str | None, base_url: str | None) -> str:
    """The key to send: the argument, else ``OPENAI_API_KEY``, else a placeholder for a local server."""
    if api_key:
        return api_key
    env = os.environ.get("OPENAI_API_KEY")
    if env:
        return env
    if _is_local(base_url):
        return LOCAL_PLACEHOLDER_KEY
    raise LLMError("no API key: set OPENAI_API_KEY or prompts.api_key_secret")


def _display_url(base_url: str) -> str:
    """The endpoint for messages: scheme, host, port and path only (no user-info, no query)."""
    try:
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else "<endpoint>"
    except ValueError:
        return "<endpoint>"


def retry_after_seconds(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """The delay a response asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP-date."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
            if value >= 0 and value == value:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if value >= 0 and value == value and value != float("inf") else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _flatten(text: object, limit: int = 200) -> str:
    """A server's whole message on one line (its reason is often past the first line, e.g. in a JSON body)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


@dataclass
class _LoopState:
    client: Any  # openai.AsyncOpenAI
    semaphore: asyncio.Semaphore
    probe: asyncio.Lock  # held by the one call in flight while the server has not yet accepted a request


TOKEN_PARAMETERS = ("max_tokens", "max_completion_tokens")
# OpenAI's error codes for a parameter the model does not take at all (or only at its default value)
_UNSUPPORTED_CODES = ("unsupported_parameter", "unsupported_value")
# how other servers (vLLM, Ollama, llama.cpp, proxies) word the same refusal when they send no code
_UNSUPPORTED_WORDS = re.compile(r"unsupported|not supported|unrecognized|unknown|not allowed|not permitted|extra "
                                r"(fields|inputs)|only the default", re.I)


def _is_openai(base_url: str | None) -> bool:
    try:
        return (urlsplit(base_url or DEFAULT_BASE_URL).hostname or "").lower() == "api.openai.com"
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------------
# the client
# ------------------------------------------------------------------------------------------------------


class OpenAIChat:
    """Chat completions from an OpenAI-compatible endpoint, with retries and a concurrency limit.

    ``await complete(messages)`` returns the completion text or ``None``; ``complete_many`` runs many at
    once (at most ``concurrency`` in flight per event loop); ``complete_many_sync`` does the same from plain
    code. Counters accumulate in ``self.stats`` (an :class:`LLMStats`).
    """

    def __init__(self, *, model: str, base_url: str | None = None, api_key: str | None = None,
                 concurrency: int = 16, timeout_s: float = 60.0, max_retries: int = 5,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0, temperature: float = 1.0,
                 max_tokens: int = 1024, token_parameter: str = "auto", max_consecutive_failures: int = 5) -> None:
        if not model:
            raise LLMError("no LLM model: set prompts.model")
        if concurrency < 1:
            raise LLMError(f"LLM concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise LLMError(f"LLM max_retries must be >= 0, got {max_retries}")
        if timeout_s <= 0:
            raise LLMError(f"LLM timeout_s must be > 0, got {timeout_s}")
        if backoff_base_s < 0 or backoff_max_s < 0:
            raise LLMError("LLM backoff delays must be >= 0")
        if token_parameter not in ("auto", *TOKEN_PARAMETERS):
            raise LLMError(f"LLM token_parameter must be auto, max_tokens or max_completion_tokens, got "
                           f"{token_parameter!r}")
        if max_consecutive_failures < 1:
            raise LLMError(f"LLM max_consecutive_failures must be >= 1, got {max_consecutive_failures}")
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.temperature = temperature
        self.max_tokens = int(max_tokens)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self._auto_tokens = token_parameter == "auto"
        if self._auto_tokens:
            token_parameter = "max_completion_tokens" if _is_openai(self.base_url) else "max_tokens"
        self.token_parameter = token_parameter  # the one sent now
        self.send_temperature = True  # False once the server refused the temperature
        self._accepted = False  # a call succeeded: calls may run concurrently
        self._refused_in_a_row = 0
        self._api_key = resolve_api_key(api_key, self.base_url)
        self.stats = LLMStats()
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    # --- presentation / pickling (the key never shows) ------------------------------------------------
    @property
    def endpoint(self) -> str:
        return _display_url(self.base_url or DEFAULT_BASE_URL)

    def __repr__(self) -> str:
        return (f"OpenAIChat(model={self.model!r}, endpoint={self.endpoint!r}, concurrency={self.concurrency}, "
                f"timeout_s={self.timeout_s}, max_retries={self.max_retries}, api_key='***')")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_loops"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # --- per-event-loop client and semaphore ----------------------------------------------------------
    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            for stale in [lp for lp in self._loops if lp.is_closed()]:
                del self._loops[stale]
            st = self._loops.get(loop)
            if st is None:
                import openai

                client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=0,
                                            timeout=self.timeout_s)
                st = self._loops[loop] = _LoopState(client, asyncio.Semaphore(self.concurrency), asyncio.Lock())
            return st

    async def aclose(self) -> None:
        """Close this event loop's HTTP connections (the client reopens them if used again)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        with self._lock:
            st = self._loops.pop(loop, None)
        if st is not None:
            await st.client.close()

    async def __aenter__(self) -> OpenAIChat:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- accounting -----------------------------------------------------------------------------------
    def _count(self, *, calls: int = 0, retries: int = 0, failures: int = 0, prompt_tokens: int = 0,
               completion_tokens: int = 0, error: str | None = None) -> None:
        with self._lock:
            s = self.stats
            s.calls += calls
            s.retries += retries
            s.failures += failures
            s.prompt_tokens += prompt_tokens
            s.completion_tokens += completion_tokens
            if error:
                s.errors[error] = s.errors.get(error, 0) + 1

    def _redact(self, text: object) -> str:
        s = _flatten(text, limit=10_000)
        if self._api_key and self._api_key != LOCAL_PLACEHOLDER_KEY:
            s = s.replace(self._api_key, "***")
        return _flatten(s)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.backoff_max_s, retry_after)
        return random.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2.0 ** min(attempt, 60)))

    # --- one call -------------------------------------------------------------------------------------
    async def complete(self, messages: list[dict]) -> str | None:
        """One chat completion's text; ``None`` once retries are exhausted (or for a 400-type error).

        Never raises for HTTP or network errors; raises :class:`LLMError` when the key is rejected (401/403)
        or the model is unknown (404).
        """
        st = self._state()
        async with st.semaphore:
            if not self._accepted:
                async with st.probe:  # one at a time until the server accepts a request as we send it
                    if not self._accepted:
                        return await self._complete(st.client, messages)
            return await self._complete(st.client, messages)

    def _request(self, messages: list[dict]) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "messages": messages, self.token_parameter: self.max_tokens}
        if self.send_temperature:
            request["temperature"] = self.temperature
        return request

    def _rejected_parameter(self, exc: Any, request: dict[str, Any]) -> str | None:
        """The parameter of ``request`` a 400 refuses as unsupported (OpenAI's ``param``/``code`` fields, else the
        message), if any. A 400 about a bad *value* ("max_tokens is too large") is not a refusal of the parameter:
        swapping it would hide the real error."""
        code = getattr(exc, "code", None)
        param = getattr(exc, "param", None)
        if isinstance(code, str) and code:
            if code not in _UNSUPPORTED_CODES:
                return None
            if isinstance(param, str) and param:
                return param if param in request else None
        message = str(getattr(exc, "message", "") or "")
        if not _UNSUPPORTED_WORDS.search(message):
            return None
        return next((p for p in (self.token_parameter, "temperature")
                     if p in request and re.search(rf"(?<![\w]){p}(?![\w])", message)), None)

    def _adapt(self, param: str) -> bool:
        """Change the request so the server takes it; False when nothing is left to change for ``param``."""
        with self._lock:
            if param == self.token_parameter and self._auto_tokens and "token_parameter" not in self.stats.adjustments:
                old = self.token_parameter
                self.token_parameter = next(p for p in TOKEN_PARAMETERS if p != old)
                self.stats.adjustments["token_parameter"] = self.token_parameter
                logger.info("LLM endpoint %s refused %s: sending %s instead", self.endpoint, old, self.token_parameter)
                return True
            if param == "temperature" and self.send_temperature:
                self.send_temperature = False
                self.stats.adjustments["temperature"] = f"the model's default (asked {self.temperature:g})"
                logger.warning("LLM endpoint %s (model %s) refuses temperature %g: prompts are now written at the "
                               "model's default temperature", self.endpoint, self.model, self.temperature)
                return True
            return False

    def _refused(self, status: int, message: str) -> LLMError | None:
        """Count a non-retryable refusal; the error to raise once ``max_consecutive_failures`` are in a row."""
        with self._lock:
            self._refused_in_a_row += 1
            if self._refused_in_a_row < self.max_consecutive_failures:
                return None
        return LLMError(f"LLM endpoint {self.endpoint} refused {self._refused_in_a_row} calls in a row ({status}), "
                        f"stopping: {message or 'no message'}")

    async def _complete(self, client: Any, messages: list[dict]) -> str | None:
        import openai

        self._count(calls=1)
        attempts = self.max_retries + 1
        attempt = 0
        while attempt < attempts:
            if attempt:
                self._count(retries=1)
            retry_after: float | None = None
            status: int | None = None
            fatal: LLMError | None = None
            adapted = False
            request = self._request(messages)
            try:
                response = await client.chat.completions.create(**request)
            except openai.APITimeoutError:
                kind = "timeout"
            except openai.APIConnectionError:
                kind = "connection"
            except openai.APIStatusError as exc:
                status = exc.status_code
                # Raised below, outside this handler, so that the SDK's error (whose message may quote the
                # key, as OpenAI's 401 does) is not even attached as __context__.
                if status in (401, 403):
                    kind = "auth"
                    fatal = LLMError(f"LLM endpoint {self.endpoint} rejected the API key ({status}): check "
                                     "OPENAI_API_KEY or prompts.api_key_secret")
                elif status == 404:
                    kind = "not_found"
                    fatal = LLMError(f"LLM endpoint {self.endpoint} has no model {self.model!r} (404): check "
                                     "prompts.model (the served model name) and prompts.base_url (usually "
                                     "ends in /v1)")
                elif status == 429:
                    kind = "rate_limited"
                    retry_after = retry_after_seconds(exc.response.headers)
                elif status >= 500:
                    kind = "server_error"
                    retry_after = retry_after_seconds(exc.response.headers)
                elif status == 408:
                    kind = "timeout"
                elif status == 409:
                    kind = "conflict"
                elif self._adapt(self._rejected_parameter(exc, request) or ""):
                    kind, adapted = "unsupported_parameter", True
                else:  # 400, 413, 422, ...: this request is wrong; asking again cannot help
                    kind = "bad_request"
                    said = self._redact(getattr(exc, "message", ""))
                    logger.warning("LLM call to %s failed with %s (not retried): %s", self.endpoint, status, said)
                    fatal = self._refused(status, said)
            except (openai.APIResponseValidationError, ValueError):  # JSONDecodeError, pydantic errors
                kind = "malformed"
            else:
                usage = getattr(response, "usage", None)
                if usage is not None:
                    self._count(prompt_tokens=_int(getattr(usage, "prompt_tokens", 0)),
                                completion_tokens=_int(getattr(usage, "completion_tokens", 0)))
                choices = getattr(response, "choices", None)
                if not isinstance(choices, list):
                    kind = "malformed"
                else:
                    message = getattr(choices[0], "message", None) if choices else None
                    content = getattr(message, "content", None)
                    if isinstance(content, str) and content.strip():
                        with self._lock:
                            self._accepted, self._refused_in_a_row = True, 0
                        logger.debug("LLM call to %s ok after %d attempt(s) (%s)", self.endpoint, attempt + 1,
                                     _usage_text(usage))
                        return content
                    kind = "empty"

            self._count(error=kind)
            if kind == "bad_request":
                self._count(failures=1)
            if fatal is not None:
                raise fatal
            if kind == "bad_request":
                return None
            if adapted:  # the same call again at once with the changed request; it does not use up a retry
                attempts += 1
                attempt += 1
                continue
            what = f"{kind} ({status})" if status is not None else kind
            if attempt + 1 >= attempts:
                self._count(failures=1)
                logger.warning("LLM call to %s failed after %d attempt(s), last error: %s", self.endpoint,
                               attempts, what)
                return None
            delay = self._backoff(attempt, retry_after)
            logger.debug("LLM call to %s: %s on attempt %d/%d, retrying in %.2fs%s", self.endpoint, what,
                         attempt + 1, attempts, delay, " (Retry-After)" if retry_after is not None else "")
            await asyncio.sleep(delay)
            attempt += 1
        return None  # unreachable (the loop returns), kept for type checkers

    # --- many calls -----------------------------------------------------------------------------------
    async def complete_many(self, batches: Iterable[list[dict]]) -> list[str | None]:
        """One completion per message list, in order; at most ``concurrency`` requests in flight.

        An :class:`LLMError` from any call cancels the others and propagates.
        """
        tasks = [asyncio.ensure_future(self.complete(messages)) for messages in batches]
        if not tasks:
            return []
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def complete_many_sync(self, batches: Iterable[list[dict]]) -> list[str | None]:
        """:meth:`complete_many` from plain code; inside a running event loop it runs in a worker thread."""
        batches = list(batches)

        async def run() -> list[str | None]:
            try:
                return await self.complete_many(batches)
            finally:
                await self.aclose()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run())
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="magicseg-llm") as pool:
            return pool.submit(lambda: asyncio.run(run())).result()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _usage_text(usage: Any) -> str:
    if usage is None:
        return "no usage reported"
    return (f"{_int(getattr(usage, 'prompt_tokens', 0))} prompt + "
            f"{_int(getattr(usage, 'completion_tokens', 0))} completion tokens")
