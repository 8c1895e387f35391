"""The LLM transport against a real (loopback) OpenAI-compatible HTTP server with scripted failures."""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from email.utils import formatdate

import pytest

from magicseg_models.errors import MagicSegError
from magicseg_models.prompts.openai_writer import (
    LLMError,
    LLMStats,
    OpenAIChat,
    resolve_api_key,
    retry_after_seconds,
)
from tests.fake_openai import FakeOpenAI, echo_responder

KEY = "sk-test-SECRET-abc123"
MODEL = "fake-model"


def _messages(*words: str) -> list[dict]:
    quoted = " and ".join(f'"{w}"' for w in words)
    return [{"role": "system", "content": "You write image prompts."},
            {"role": "user", "content": f"Write 10 prompts for a scene with {quoted}."}]


@pytest.fixture
def srv():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _client(srv: FakeOpenAI, **kw) -> OpenAIChat:
    kw = {"model": MODEL, "base_url": srv.base_url, "api_key": KEY, "backoff_base_s": 0.01,
          "backoff_max_s": 2.0, "timeout_s": 5.0, **kw}
    return OpenAIChat(**kw)


def _complete(client: OpenAIChat, messages: list[dict]):
    async def run():
        async with client:
            return await client.complete(messages)
    return asyncio.run(run())


def _assert_no_key(*texts: object) -> None:
    for text in texts:
        assert KEY not in str(text)
        assert "SECRET" not in str(text)


# --- success ------------------------------------------------------------------------------------------


def test_success_returns_content_and_counts_usage(srv):
    client = _client(srv)
    out = _complete(client, _messages("cat", "bus (vehicle)"))
    assert out is not None
    lines = out.splitlines()
    assert len(lines) == 10 and lines[0].startswith("1. A detailed photo of a cat and a bus (vehicle)")
    assert '"' not in out
    s = client.stats
    assert (s.calls, s.retries, s.failures, s.errors) == (1, 0, 0, {})
    assert s.prompt_tokens > 0 and s.completion_tokens == len(out.split())
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["json"]["model"] == MODEL and req["json"]["messages"] == _messages("cat", "bus (vehicle)")
    assert req["json"]["max_tokens"] == 1024 and req["json"]["temperature"] == 1.0
    # the key travels, in the Authorization header
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"


def test_usage_accumulates_over_calls(srv):
    client = _client(srv)
    outs = client.complete_many_sync([_messages("cat"), _messages("dog"), _messages("person")])
    assert all(o and o.startswith("1. A detailed photo of a ") for o in outs)
    assert [o.splitlines()[0].split(" of a ")[1].split()[0] for o in outs] == ["cat", "dog", "person"]
    assert client.stats.calls == 3 and len(srv.requests) == 3
    assert client.stats.completion_tokens == sum(len(o.split()) for o in outs)


def test_custom_responder_and_junk_is_returned_raw():
    with FakeOpenAI(responder=lambda msgs: f"got {len(msgs)} messages") as server:
        server.faults.append(("junk",))
        client = _client(server, concurrency=1)  # so the first request gets the fault
        junk, plain = client.complete_many_sync([_messages("cat"), _messages("cat")])
    assert plain == "got 2 messages"
    assert junk and junk != plain  # not this module's job to judge content
    assert client.stats.errors == {} and client.stats.retries == 0


# --- retries ------------------------------------------------------------------------------------------


def test_429_honours_retry_after(srv):
    srv.faults.append(("429", 1))
    client = _client(srv)
    t0 = time.monotonic()
    out = _complete(client, _messages("cat"))
    elapsed = time.monotonic() - t0
    assert out and out.startswith("1. ")
    assert elapsed >= 0.95  # backoff_base_s is 0.01: only Retry-After explains the wait
    assert client.stats.retries == 1 and client.stats.errors == {"rate_limited": 1}
    assert client.stats.failures == 0 and len(srv.requests) == 2


def test_retry_after_is_capped_at_backoff_max(srv):
    srv.faults.append(("503", 30))
    client = _client(srv, backoff_max_s=0.2)
    t0 = time.monotonic()
    assert _complete(client, _messages("cat"))
    assert time.monotonic() - t0 < 3
    assert client.stats.errors == {"server_error": 1}


@pytest.mark.parametrize("fault, kind", [
    (("500",), "server_error"),
    (("503", 0), "server_error"),
    (("503",), "server_error"),
    (("timeout", 3.0), "timeout"),
    (("empty",), "empty"),
    (("malformed",), "malformed"),
])
def test_transient_fault_is_retried(srv, fault, kind):
    srv.faults.extend([fault, fault])
    client = _client(srv, timeout_s=0.5)
    out = _complete(client, _messages("dog"))
    assert out and out.startswith("1. A detailed photo of a dog")
    s = client.stats
    assert (s.calls, s.retries, s.failures) == (1, 2, 0)
    assert s.errors == {kind: 2}
    assert len(srv.requests) == s.calls + s.retries == 3


def test_mixed_faults_counted_by_kind(srv):
    srv.faults.extend([("500",), ("empty",), ("429", None), ("malformed",), ("timeout", 3.0)])
    client = _client(srv, timeout_s=0.5, max_retries=5)
    out = _complete(client, _messages("cat"))
    assert out
    assert client.stats.errors == {"server_error": 1, "empty": 1, "rate_limited": 1, "malformed": 1, "timeout": 1}
    assert client.stats.retries == 5 and len(srv.requests) == 6


def test_exhausted_retries_return_none_without_raising(srv, caplog):
    srv.faults.extend([("500",)] * 4 + [("500",)])  # one more than the client will try
    client = _client(srv, max_retries=3)
    with caplog.at_level(logging.WARNING, logger="magicseg_models.prompts.openai_writer"):
        out = _complete(client, _messages("cat"))
    assert out is None
    s = client.stats
    assert (s.calls, s.retries, s.failures, s.errors) == (1, 3, 1, {"server_error": 4})
    assert len(srv.requests) == 4
    assert any("failed after 4 attempt(s)" in r.getMessage() for r in caplog.records)


def test_connection_refused_is_retried_then_none():
    with FakeOpenAI() as server:
        url = server.base_url
    client = OpenAIChat(model=MODEL, base_url=url, api_key=KEY, max_retries=2, backoff_base_s=0.01, timeout_s=2)
    assert _complete(client, _messages("cat")) is None
    assert client.stats.errors == {"connection": 3} and client.stats.failures == 1


def test_bad_request_is_not_retried(srv):
    srv.faults.append(("400",))
    client = _client(srv, concurrency=1)  # so the first request gets the fault
    out, ok = client.complete_many_sync([_messages("cat"), _messages("dog")])
    assert out is None and ok
    assert client.stats.errors == {"bad_request": 1} and client.stats.failures == 1
    assert client.stats.retries == 0 and len(srv.requests) == 2


# --- servers that refuse a parameter, or every call ---------------------------------------------------


@pytest.mark.parametrize("name_param", [True, False])  # OpenAI names it in `param`; others only in the message
def test_a_server_refusing_max_tokens_gets_max_completion_tokens_after_one_refusal(name_param):
    with FakeOpenAI(rejects=("max_tokens",), name_param=name_param) as server:
        client = _client(server, concurrency=4)
        assert client.token_parameter == "max_tokens"  # what vLLM / Ollama take: the first guess off OpenAI
        out = client.complete_many_sync([_messages(f"thing{i}") for i in range(6)])
        assert all(text and text.startswith("1. ") for text in out)
        again = client.complete_many_sync([_messages("cat"), _messages("dog")])
        assert all(again)
        refused = [r for r in server.chat_requests if r["fault"] and r["fault"][0] == "refused"]
        assert len(refused) == 1 and "max_tokens" in refused[0]["json"]  # one refused call for the whole client
        later = [r["json"] for r in server.chat_requests if r not in refused]
        assert len(later) == 8 and all("max_completion_tokens" in b and "max_tokens" not in b for b in later)
        assert later[0]["max_completion_tokens"] == 1024
    s = client.stats
    assert s.adjustments == {"token_parameter": "max_completion_tokens"} and s.failures == 0
    assert s.errors == {"unsupported_parameter": 1} and (s.calls, s.retries) == (8, 1)


def test_token_parameter_first_guess_and_forced_value():
    assert OpenAIChat(model=MODEL, api_key=KEY).token_parameter == "max_completion_tokens"  # api.openai.com
    assert OpenAIChat(model=MODEL, base_url="http://localhost:8000/v1").token_parameter == "max_tokens"
    forced = OpenAIChat(model=MODEL, base_url="https://api.openai.com/v1", api_key=KEY, token_parameter="max_tokens")
    assert forced.token_parameter == "max_tokens"
    with pytest.raises(LLMError, match="token_parameter"):
        OpenAIChat(model=MODEL, api_key=KEY, token_parameter="max_new_tokens")


def test_a_forced_token_parameter_is_not_switched():
    with FakeOpenAI(rejects=("max_tokens",)) as server:
        client = _client(server, token_parameter="max_tokens", max_consecutive_failures=2, concurrency=1)
        assert _complete(client, _messages("cat")) is None
        with pytest.raises(LLMError, match="Unsupported parameter: 'max_tokens'"):
            _complete(client, _messages("cat"))
        assert all("max_tokens" in r["json"] for r in server.chat_requests) and len(server.chat_requests) == 2
    assert client.stats.adjustments == {}


def test_a_model_that_takes_only_its_default_temperature_is_told_so_and_the_change_is_recorded(caplog):
    with FakeOpenAI(only_default_temperature=True) as server:
        client = _client(server, temperature=0.7, concurrency=4)
        with caplog.at_level(logging.WARNING, logger="magicseg_models.prompts.openai_writer"):
            out = client.complete_many_sync([_messages(f"thing{i}") for i in range(5)])
        assert all(out)
        bodies = [r["json"] for r in server.chat_requests]
        assert bodies[0]["temperature"] == 0.7 and all("temperature" not in b for b in bodies[1:])
        assert len(bodies) == 6
    assert client.stats.adjustments == {"temperature": "the model's default (asked 0.7)"}
    assert "refuses temperature 0.7" in caplog.text


def test_a_server_refusing_every_call_stops_after_k_calls_with_its_message():
    said = "This model's maximum context length is 4097 tokens, you requested 9000."
    with FakeOpenAI(refuse_all=said) as server:
        client = _client(server, concurrency=8, max_consecutive_failures=3)
        with pytest.raises(LLMError) as info:
            client.complete_many_sync([_messages(f"thing{i}") for i in range(10)])
        assert len(server.chat_requests) == 3  # calls go one at a time until one is accepted
    msg = str(info.value)
    assert "\n" not in msg and said in msg and "refused 3 calls in a row (400)" in msg
    assert client.stats.errors == {"bad_request": 3} and client.stats.failures == 3


def test_a_bad_value_of_a_parameter_is_not_taken_for_an_unsupported_parameter():
    # OpenAI names the parameter of a bad value too ("invalid_value"): swapping it would hide the real error
    said = "max_tokens is too large: 100000. This model supports at most 16384 completion tokens."
    with FakeOpenAI(refuse_all=said, refuse_all_as=("invalid_value", "max_tokens")) as server:
        client = _client(server, concurrency=2, max_consecutive_failures=2)
        with pytest.raises(LLMError, match="max_tokens is too large"):
            client.complete_many_sync([_messages(f"thing{i}") for i in range(4)])
        assert all("max_tokens" in r["json"] for r in server.chat_requests)
    assert client.stats.adjustments == {}


def test_refusals_between_successes_do_not_stop_the_client(srv):
    client = _client(srv, concurrency=1, max_consecutive_failures=3)
    srv.faults.extend([("400",), ("400",)])
    out = client.complete_many_sync([_messages(f"thing{i}") for i in range(3)])
    assert out[:2] == [None, None] and out[2]  # the success resets the count
    srv.faults.extend([("400",), ("400",)])
    assert client.complete_many_sync([_messages("a"), _messages("b"), _messages("c")])[2]
    assert client.stats.failures == 4


# --- fatal errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["401", "403"])
def test_rejected_key_raises_one_line_without_key(srv, code):
    srv.faults.append((code,))  # the fake server echoes the presented key in its error message
    client = _client(srv)
    with pytest.raises(LLMError) as info:
        _complete(client, _messages("cat"))
    msg = str(info.value)
    assert isinstance(info.value, MagicSegError)
    assert "\n" not in msg and f"rejected the API key ({code})" in msg
    _assert_no_key(msg, repr(info.value))
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert len(srv.requests) == 1 and client.stats.retries == 0


def test_unknown_model_raises(srv):
    with FakeOpenAI(models=("served-model",)) as server:
        client = _client(server, model="not-served")
        with pytest.raises(LLMError, match=r"no model 'not-served' \(404\)"):
            _complete(client, _messages("cat"))
        assert len(server.requests) == 1


def test_fatal_error_in_complete_many_cancels_the_rest():
    with FakeOpenAI(delay_s=0.05) as server:
        server.faults.append(("401",))
        client = _client(server, concurrency=1)
        with pytest.raises(LLMError):
            client.complete_many_sync([_messages("cat")] * 20)
        time.sleep(0.1)
        assert len(server.requests) < 5


def test_api_key_resolution(monkeypatch):
    assert resolve_api_key("sk-arg", None) == "sk-arg"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert resolve_api_key(None, "https://api.example.com/v1") == "sk-env"
    monkeypatch.delenv("OPENAI_API_KEY")
    for local in ("http://localhost:11434/v1", "http://127.0.0.1:8000/v1", "http://[::1]:8000/v1"):
        assert resolve_api_key(None, local) == "EMPTY"
    for remote in (None, "https://api.openai.com/v1", "http://gpu-box:8000/v1"):
        with pytest.raises(LLMError, match=r"^no API key: set OPENAI_API_KEY or prompts.api_key_secret$"):
            resolve_api_key(None, remote)
    with pytest.raises(LLMError, match="no API key"):
        OpenAIChat(model=MODEL)


def test_local_server_without_key_uses_placeholder(srv):
    client = OpenAIChat(model=MODEL, base_url=srv.base_url)
    assert _complete(client, _messages("cat"))
    assert srv.requests[0]["headers"]["Authorization"] == "Bearer EMPTY"


# --- concurrency --------------------------------------------------------------------------------------


def test_concurrency_limit_respected():
    def slow(messages):
        time.sleep(0.15)
        return echo_responder(messages)

    with FakeOpenAI(responder=slow) as server:
        client = _client(server, concurrency=2)
        t0 = time.monotonic()
        outs = client.complete_many_sync([_messages(f"thing{i}") for i in range(8)])
        elapsed = time.monotonic() - t0
        assert server.max_in_flight == 2
        assert len(server.requests) == 8
    assert [o.splitlines()[0].split(" of a ")[1].split()[0] for o in outs] == [f"thing{i}" for i in range(8)]
    assert elapsed >= 4 * 0.15 * 0.9


def test_concurrency_is_used():
    with FakeOpenAI(delay_s=0.2) as server:
        client = _client(server, concurrency=8)
        client.complete_many_sync([_messages("cat")] * 8)
        assert server.max_in_flight >= 4  # requests really overlap (8 when the machine is not loaded)


# --- the key never leaks ------------------------------------------------------------------------------


def test_key_never_leaks(srv, caplog):
    caplog.set_level(logging.DEBUG)
    srv.faults.extend([("429", 0), ("500",), ("400",), ("empty",), ("malformed",), ("401",)])
    client = _client(srv, max_retries=1)
    _assert_no_key(repr(client), str(client))
    assert "api_key='***'" in repr(client)

    async def run():
        async with client:
            first = await client.complete(_messages("cat"))      # 429, 500 -> None
            second = await client.complete(_messages("cat"))     # 400 -> None (server message logged)
            third = await client.complete(_messages("cat"))      # empty, malformed -> None
            with pytest.raises(LLMError) as info:
                await client.complete(_messages("cat"))          # 401 with the key echoed by the server
            return first, second, third, info.value

    *outs, err = asyncio.run(run())
    assert outs == [None, None, None]
    _assert_no_key(err, repr(err), client.stats.as_dict(), client.stats, repr(client))
    assert caplog.records  # there was something to check
    for record in caplog.records:
        _assert_no_key(record.getMessage(), record.args, record.exc_text)
    _assert_no_key(caplog.text)
    # ... while every request carried it
    assert [r["headers"]["Authorization"] for r in srv.requests] == [f"Bearer {KEY}"] * 6


# --- sync wrapper -------------------------------------------------------------------------------------


def test_complete_many_sync_from_plain_code_twice(srv):
    client = _client(srv)
    assert client.complete_many_sync([]) == []
    a = client.complete_many_sync([_messages("cat")])
    b = client.complete_many_sync([_messages("dog")])  # a fresh event loop: must not reuse the closed one
    assert a[0] and b[0] and client.stats.calls == 2


def test_complete_many_sync_inside_running_loop(srv):
    client = _client(srv)
    main_thread = threading.get_ident()

    async def inside():
        assert asyncio.get_running_loop()
        out = client.complete_many_sync([_messages("cat"), _messages("dog")])
        # and the async API still works on this loop afterwards
        more = await client.complete_many([_messages("person")])
        await client.aclose()
        return out + more

    outs = asyncio.run(inside())
    assert threading.get_ident() == main_thread
    assert all(o and o.startswith("1. ") for o in outs) and client.stats.calls == 3


# --- stats --------------------------------------------------------------------------------------------


def test_stats_merge_and_dict():
    a = LLMStats(calls=2, retries=1, prompt_tokens=10, completion_tokens=20, errors={"timeout": 1})
    b = LLMStats(calls=3, failures=1, prompt_tokens=5, errors={"timeout": 2, "empty": 1},
                 adjustments={"token_parameter": "max_completion_tokens"})
    a.merge(b)
    assert a.as_dict() == {"calls": 5, "retries": 1, "failures": 1, "prompt_tokens": 15, "completion_tokens": 20,
                           "errors": {"empty": 1, "timeout": 3},
                           "adjustments": {"token_parameter": "max_completion_tokens"}}
    a.merge(b.as_dict())  # e.g. a worker's stats sent back as a dict
    assert a.calls == 8 and a.errors == {"timeout": 5, "empty": 2}
    assert LLMStats.from_dict(a.as_dict()) == a


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    now = time.time()
    assert retry_after_seconds({"retry-after": formatdate(now + 10, usegmt=True)}, now=now) == pytest.approx(10, abs=1)
    assert retry_after_seconds({"retry-after": formatdate(now - 10, usegmt=True)}, now=now) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "-3"}) is None
    assert retry_after_seconds({}) is None


def test_http_date_retry_after_honoured(srv):
    srv.faults.append(("429", formatdate(time.time() + 2, usegmt=True)))
    client = _client(srv)
    t0 = time.monotonic()
    assert _complete(client, _messages("cat"))
    assert time.monotonic() - t0 >= 0.5  # an HTTP-date has 1 s resolution: at least ~1 s minus rounding
    assert client.stats.errors == {"rate_limited": 1}


def test_pickles_without_live_state(srv):
    client = _client(srv)
    assert client.complete_many_sync([_messages("cat")])[0]
    clone = pickle.loads(pickle.dumps(client))
    assert clone.stats == client.stats and clone.complete_many_sync([_messages("dog")])[0]
