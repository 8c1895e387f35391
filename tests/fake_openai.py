"""A small OpenAI-compatible chat server on 127.0.0.1 for tests: real HTTP, scripted failures.

Standard library only (``http.server.ThreadingHTTPServer`` in a thread). It serves
``POST /v1/chat/completions`` and ``GET /v1/models``. Each chat request first consumes one scripted
fault from ``srv.faults`` (a deque, FIFO); when none is left, the default responder answers::

    with FakeOpenAI() as srv:
        srv.faults.extend([("429", 1), ("500",), ("timeout", 2.0)])
        client = OpenAIChat(model="fake-model", base_url=srv.base_url, api_key="sk-test")
        ...
        assert len(srv.requests) == 4

Faults:
    ``("429", retry_after)``   429 with a ``Retry-After`` header (seconds, or an HTTP-date string; None = no header)
    ``("500",)``               500 server error
    ``("503", retry_after)``   503 with an optional ``Retry-After`` header
    ``("timeout", seconds)``   sleeps ``seconds`` (longer than the client's timeout), then answers normally
    ``("empty",)``             200 with content ``""``
    ``("malformed",)``         200 whose body is not JSON
    ``("junk",)``              200 whose content is random (seeded) unicode garbage
    ``("401",)``               401 whose error message echoes the presented key, as careless servers do
    ``("403",)``, ``("404",)``, ``("400",)``   the other client errors (404 = model not found)

Request checks, as picky servers make them (before any fault): ``rejects`` - parameters answered with a 400 that
names them, as OpenAI answers ``max_tokens`` for its newer models (``name_param=False``: the name is only in the
message, as vLLM words it); ``only_default_temperature`` - a temperature other than 1 is a 400 (OpenAI's
reasoning models); ``refuse_all`` - every chat request is a 400 with this message.

The default responder is a callable ``(messages) -> str``; the built-in one echoes 10 numbered prompts
mentioning the words it finds in double quotes in the last user message. Every request is recorded in
``srv.requests`` (method, path, headers - case-insensitive ``srv.requests[i]["headers"]["Authorization"]`` -,
parsed JSON body, the fault applied), and ``srv.max_in_flight``
is the largest number of chat requests the server was handling at once.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Responder = Callable[[list[dict]], str]

_PLACES = ("on a sunny street", "in a cozy living room", "at the beach at dusk", "in a snowy park",
           "on a wooden table", "in a busy market", "under soft studio light", "in a green meadow",
           "next to a window on a rainy day", "in a quiet library")


def echo_responder(messages: list[dict]) -> str:
    """10 numbered prompts naming the double-quoted words of the last user message (deterministic)."""
    last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    if not isinstance(last_user, str):  # content parts: keep the text ones
        last_user = " ".join(p.get("text", "") for p in last_user if isinstance(p, dict))
    words = re.findall(r'"([^"]+)"', last_user) or ["object"]
    subject = " and a ".join(words)
    return "\n".join(f"{i}. A detailed photo of a {subject} {place}." for i, place in enumerate(_PLACES, 1))


def _count_tokens(text: str) -> int:
    return len(text.split())


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.0"  # one request per connection: simple and robust to client timeouts

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    # --- plumbing ------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass  # the client gave up (timeout): nothing to do

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, type_: str, code: str | None = None,
               param: str | None = None, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": type_, "param": param, "code": code}},
                        headers)

    def _record(self, body: Any, fault: tuple | None) -> None:
        fake = self.server.fake
        with fake._lock:
            fake.requests.append({"method": self.command, "path": self.path, "headers": self.headers,
                                  "json": body, "fault": fault})

    # --- routes --------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._record(None, None)
        if self.path.rstrip("/") == "/v1/models":
            fake = self.server.fake
            models = fake.models or ("fake-model",)
            self._send_json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in models]})
        else:
            self._error(404, f"no route {self.path}", "invalid_request_error")

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._record(body, None)
            self._error(404, f"no route {self.path}", "invalid_request_error")
            return
        refusal = self._refusal(body if isinstance(body, dict) else {})
        if refusal is not None:
            self._record(body, ("refused", refusal[0]))
            self._error(400, *refusal)
            return
        with fake._lock:
            fault = fake.faults.popleft() if fake.faults else None
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        self._record(body, fault)
        try:
            self._chat(body if isinstance(body, dict) else {}, fault)
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _refusal(self, body: dict) -> tuple[str, str, str | None, str | None] | None:
        """(message, type, code, param) of the 400 a picky server sends for this request, or None."""
        fake = self.server.fake
        if fake.refuse_all is not None:
            return (fake.refuse_all, "invalid_request_error", *fake.refuse_all_as)
        for name in fake.rejects:
            if name in body:
                other = "max_completion_tokens" if name == "max_tokens" else "max_tokens"
                return (f"Unsupported parameter: '{name}' is not supported with this model. Use '{other}' instead.",
                        "invalid_request_error", "unsupported_parameter", name if fake.name_param else None)
        temperature = body.get("temperature")
        if fake.only_default_temperature and temperature is not None and temperature != 1:
            return (f"Unsupported value: 'temperature' does not support {temperature} with this model. Only the "
                    "default (1) value is supported.", "invalid_request_error", "unsupported_value", "temperature")
        return None

    def _chat(self, body: dict, fault: tuple | None) -> None:
        fake = self.server.fake
        messages = body.get("messages") or []
        model = body.get("model") or "fake-model"
        kind = fault[0] if fault else None

        if kind == "timeout":
            fake._stop.wait(float(fault[1]))  # interruptible, so close() is quick
        elif fake.delay_s:
            fake._stop.wait(fake.delay_s)

        if kind == "429":
            retry_after = fault[1] if len(fault) > 1 else None
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            self._error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", headers=headers)
            return
        if kind == "500":
            self._error(500, "The server had an error while processing your request.", "server_error")
            return
        if kind == "503":
            retry_after = fault[1] if len(fault) > 1 else None
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            self._error(503, "The engine is currently overloaded.", "server_error", None, headers=headers)
            return
        if kind in ("401", "403"):
            auth = self.headers.get("Authorization", "")
            presented = auth.split(" ", 1)[1] if " " in auth else auth
            status = int(kind)
            self._error(status, f"Incorrect API key provided: {presented}.", "invalid_request_error",
                        "invalid_api_key")
            return
        if kind == "404" or (fake.models is not None and model not in fake.models):
            self._error(404, f"The model `{model}` does not exist or you do not have access to it.",
                        "invalid_request_error", "model_not_found")
            return
        if kind == "400":
            self._error(400, "This model's maximum context length is exceeded.", "invalid_request_error",
                        "context_length_exceeded")
            return
        if kind == "malformed":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [ {"message": ')
            return

        if kind == "empty":
            content = ""
        elif kind == "junk":
            content = fake._junk()
        else:
            content = fake.responder(messages)

        prompt_tokens = sum(_count_tokens(m.get("content") or "") for m in messages
                            if isinstance(m.get("content"), str))
        completion_tokens = _count_tokens(content or "")
        with fake._lock:
            fake._counter += 1
            n = fake._counter
        self._send_json(200, {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # many clients connect at once (the default backlog of 5 drops SYNs)
    fake: "FakeOpenAI"


class FakeOpenAI:
    """The server; start it with ``with FakeOpenAI() as srv`` (or ``start()``/``close()``)."""

    def __init__(self, responder: Responder | None = None, *, models: tuple[str, ...] | None = None,
                 delay_s: float = 0.0, seed: int = 0, rejects: tuple[str, ...] = (), name_param: bool = True,
                 only_default_temperature: bool = False, refuse_all: str | None = None,
                 refuse_all_as: tuple[str | None, str | None] = (None, None)) -> None:
        self.responder: Responder = responder or echo_responder
        self.rejects = tuple(rejects)
        self.name_param = name_param
        self.only_default_temperature = only_default_temperature
        self.refuse_all = refuse_all
        self.refuse_all_as = refuse_all_as  # (code, param) of every refusal, as OpenAI's error body carries them
        self.models = models  # None = any model name is served
        self.delay_s = delay_s  # sleep before every answer (to test concurrency limits)
        self.faults: deque[tuple] = deque()
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._rng = random.Random(seed)
        self._counter = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "FakeOpenAI":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- info ----------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"].rstrip("/").endswith("/completions")]

    def _junk(self) -> str:
        with self._lock:
            n = self._rng.randint(20, 200)
            chars = []
            while len(chars) < n:
                cp = self._rng.choice((self._rng.randint(0x20, 0x7E), self._rng.randint(0xA0, 0x2FFF),
                                       self._rng.randint(0x1F300, 0x1FAFF), self._rng.randint(0, 0x1F)))
                if not 0xD800 <= cp <= 0xDFFF:
                    chars.append(chr(cp))
        return "".join(chars)
