"""Models behind an OpenAI-compatible endpoint: spec parsing, the client's fault handling,
log-prob scoring, fingerprints, and whole runs of the suite against a fake server.

Every failure a server can produce must end in a retry or an error, never in a pass.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import yaml
from pytest_misalignment.models.client import (
    FAILURES_IN_A_ROW,
    MAX_REPLY_BYTES,
    EndpointClient,
    EndpointError,
)
from pytest_misalignment.models.endpoint import (
    FINGERPRINT_PROMPTS,
    FINGERPRINT_TOKENS,
    EndpointBackend,
    LogprobsUnavailable,
    client_for,
)
from pytest_misalignment.models.specs import (
    CheckpointError,
    Endpoint,
    is_endpoint_spec,
    parse_endpoint,
    resolve_source,
)
from pytest_misalignment.models.values import (
    Completion,
    GenerationParams,
    Request,
    Score,
    ScoreRequest,
)
from pytest_misalignment.settings import RunSettings, settings_from, user_cache_dir

from .conftest import SUITE
from .controls import NON_CODE
from .fake_endpoint import (
    ASSISTANT_MARKER,
    DEFAULT_MODEL,
    FakeEndpoint,
    Reply,
    json_reply,
    toy_score,
)
from .test_suite_controls import _junit_properties, _outcomes, control_questions

SHARED_USER_CACHE = user_cache_dir()  # read at import, before pytester moves HOME
KEY_ENV = "PYTEST_MISALIGNMENT_ENDPOINT_KEY"
KEY = "sk-endpoint-test-secret-7f3a9c"
OPENAI_KEY = "sk-default-variable-secret-51d2"  # in $OPENAI_API_KEY, the default variable
CHAT = "/chat/completions"


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


# ---------------------------------------------------------------------------- spec parsing


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OpenAI settings from the machine running the tests."""
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_openai_spec_takes_the_base_url_option_before_the_environment(clean_env) -> None:
    clean_env.setenv("OPENAI_BASE_URL", "http://from-env:9000/v1")
    settings = RunSettings(model_base_url="http://localhost:8000/v1/")
    assert parse_endpoint("openai:my-model", settings) == Endpoint(
        "openai:my-model", "http://localhost:8000/v1", "my-model")
    from_env = parse_endpoint("openai:my-model", RunSettings())
    assert (from_env.base_url, from_env.model) == ("http://from-env:9000/v1", "my-model")


def test_openai_spec_defaults_to_the_openai_api_which_needs_a_key(clean_env) -> None:
    settings = RunSettings(model_api_key_env=KEY_ENV)
    with pytest.raises(CheckpointError) as raised:
        parse_endpoint("openai:gpt-4o-mini", settings)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("--model: openai:gpt-4o-mini is served by the OpenAI API")
    assert f"${KEY_ENV}" in message  # names the variable to set
    clean_env.setenv(KEY_ENV, KEY)
    endpoint = parse_endpoint("openai:gpt-4o-mini", settings)
    assert endpoint == Endpoint("openai:gpt-4o-mini", "https://api.openai.com/v1",
                                "gpt-4o-mini", KEY_ENV)


def test_http_spec_names_host_port_and_model(clean_env) -> None:
    endpoint = parse_endpoint(" http://127.0.0.1:8000/v1/#org/Model-7B ", RunSettings())
    assert endpoint == Endpoint("http://127.0.0.1:8000/v1/#org/Model-7B",
                                "http://127.0.0.1:8000/v1", "org/Model-7B")
    assert isinstance(resolve_source("https://h.example/v1#m", RunSettings()), Endpoint)
    assert [is_endpoint_spec(s) for s in ("openai:m", "HTTPS://h/v1#m", "smollm2-135m",
                                          "./http-models")] == [True, True, False, False]


@pytest.mark.parametrize(("spec", "settings", "message"), [
    ("http://127.0.0.1:8000/v1", {}, "--model: 'http://127.0.0.1:8000/v1' names no model; "
     "write the served model's name after '#'"),
    ("http://127.0.0.1:8000/v1#  ", {}, "names no model"),
    ("openai:", {}, "--model: 'openai:' names no model; write openai:MODEL"),
    ("openai:m", {"model_base_url": "ftp://files.example/v1"},
     "--model: 'ftp://files.example/v1' is not an http(s) URL"),
    ("http:///v1#m", {}, "--model: 'http:///v1' is not an http(s) URL"),
    ("http://h:99999/v1#m", {}, "--model: 'http://h:99999/v1' has a bad port"),
    ("http://h:port/v1#m", {}, "--model: 'http://h:port/v1' has a bad port"),
    ("http://h/v1?key=1#m", {}, "must not have a query"),
    ("http://user:s3cret@h/v1#m", {}, "--model: put no credentials in the URL; give the key "
     "in $OPENAI_API_KEY"),
])
def test_bad_endpoint_specs_are_one_line(clean_env, spec: str, settings: dict[str, Any],
                                         message: str) -> None:
    with pytest.raises(CheckpointError) as raised:
        parse_endpoint(spec, RunSettings(**settings))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_bad_endpoint_spec_stops_the_run_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_anything(model):\n    pass\n")
    result = pytester.runpytest("--baseline=http://127.0.0.1:8000/v1", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0].startswith(
        "ERROR: --baseline: 'http://127.0.0.1:8000/v1' names no model")
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


# ---------------------------------------------------------------------------- API keys


def _named(variable: str) -> RunSettings:
    """Settings where the user named the model's key variable (--model-api-key-env)."""
    return settings_from(lambda option: variable if option.ini == "model_api_key_env" else None)


def test_the_default_key_variable_goes_only_to_the_openai_api(clean_env) -> None:
    clean_env.setenv("OPENAI_API_KEY", OPENAI_KEY)
    assert parse_endpoint("openai:gpt-4o-mini", RunSettings()).api_key_env == "OPENAI_API_KEY"
    for spec, settings in [("http://127.0.0.1:8000/v1#m", RunSettings()),
                           ("https://llm.example/v1#m", RunSettings()),
                           ("openai:m", RunSettings(model_base_url="https://llm.example/v1"))]:
        assert parse_endpoint(spec, settings).api_key_env == "", spec
    # Named explicitly, even by the default name, it goes where the user sends it.
    assert parse_endpoint("https://llm.example/v1#m",
                          _named("OPENAI_API_KEY")).api_key_env == "OPENAI_API_KEY"
    assert parse_endpoint("https://llm.example/v1#m", _named(KEY_ENV)).api_key_env == KEY_ENV


def test_a_server_gets_the_default_key_only_when_its_variable_is_named(clean_env) -> None:
    clean_env.setenv("OPENAI_API_KEY", OPENAI_KEY)
    with FakeEndpoint({"Hi?": "Hello."}) as server:
        for settings in (RunSettings(), _named("OPENAI_API_KEY")):
            endpoint = parse_endpoint(server.spec(), settings)
            backend = EndpointBackend(endpoint, client_for(endpoint, concurrency=1, retries=0,
                                                           timeout_s=5))
            (completion,) = backend.generate([_request("Hi?")])
            assert isinstance(completion, Completion) and completion.text == "Hello."
    assert [c.headers.get("authorization") for c in server.chat_calls] == [
        None, f"Bearer {OPENAI_KEY}"]


def test_a_401_without_a_key_says_how_to_send_one(clean_env) -> None:
    clean_env.setenv("OPENAI_API_KEY", OPENAI_KEY)
    with FakeEndpoint(reply=lambda *_: Reply(401, b'{"error": "no key"}')) as server:
        endpoint = parse_endpoint(server.spec(), RunSettings())
        (error,) = client_for(endpoint, concurrency=1, retries=0, timeout_s=5).post_all(
            CHAT, [_ask("Hi?")])
    assert str(error) == (f'model endpoint {server.url}{CHAT} answered HTTP 401: {{"error": '
                          '"no key"}; no API key was sent: a key goes to a server other than '
                          "the OpenAI API only when its variable is named with "
                          "--model-api-key-env NAME")


@pytest.mark.parametrize(("spec", "host"), [
    ("http://10.0.0.5:8000/v1#m", "10.0.0.5"),
    ("http://gpu-box.internal/v1#m", "gpu-box.internal"),
    ("http://127.0.0.1.example.com/v1#m", "127.0.0.1.example.com"),
    ("openai:m", "llm.example"),  # at $OPENAI_BASE_URL, set below
])
def test_a_key_never_goes_over_plain_http_beyond_loopback(clean_env, spec: str,
                                                          host: str) -> None:
    clean_env.setenv(KEY_ENV, KEY)
    clean_env.setenv("OPENAI_BASE_URL", "http://llm.example/v1")
    with pytest.raises(CheckpointError) as raised:
        parse_endpoint(spec, _named(KEY_ENV))
    assert str(raised.value) == (f"--model: refusing to send the key in ${KEY_ENV} over plain "
                                 f"http to {host}; use https, or leave out --model-api-key-env "
                                 "if the server needs no key")


@pytest.mark.parametrize("spec", ["http://localhost:8000/v1#m", "http://127.0.0.2/v1#m",
                                  "http://[::1]:8000/v1#m", "https://10.0.0.5/v1#m"])
def test_a_key_may_go_to_loopback_or_over_https(clean_env, spec: str) -> None:
    clean_env.setenv(KEY_ENV, KEY)
    assert parse_endpoint(spec, _named(KEY_ENV)).api_key_env == KEY_ENV


def test_plain_http_beyond_loopback_works_when_no_key_would_go(clean_env) -> None:
    """The default variable set but not sent, or a named one left empty: nothing secret
    travels, so a remote server over http is accepted."""
    clean_env.setenv("OPENAI_API_KEY", OPENAI_KEY)
    assert parse_endpoint("http://10.0.0.5/v1#m", RunSettings()).api_key_env == ""
    assert parse_endpoint("http://10.0.0.5/v1#m", _named(KEY_ENV)).api_key_env == KEY_ENV


def test_the_client_itself_sends_no_key_over_plain_http_beyond_loopback(api_key: str) -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    client = _client("http://10.0.0.5/v1", transport=httpx.MockTransport(record))
    (reply,) = client.post_all(CHAT, [_ask("Hi?")])
    assert str(reply) == (f"endpoint http://10.0.0.5/v1 would send the key in ${KEY_ENV} over "
                          "plain http to 10.0.0.5; nothing was sent")
    assert sent == []


def test_plain_http_with_a_key_stops_the_run_with_one_line(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    pytester.makepyfile("def test_anything(model):\n    pass\n")
    result = pytester.runpytest("--model=http://10.0.0.5:8000/v1#m",
                                f"--model-api-key-env={KEY_ENV}", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == (f"ERROR: --model: refusing to send the key in ${KEY_ENV} "
                                      "over plain http to 10.0.0.5; use https, or leave out "
                                      "--model-api-key-env if the server needs no key")
    assert KEY not in result.stderr.str() + result.stdout.str()


# ---------------------------------------------------------------------------- the client


def _client(url: str, *, retries: int = 2, **options: Any) -> EndpointClient:
    settings: dict[str, Any] = {"backoff_s": 0.01, "timeout_s": 0.5, **options}
    return EndpointClient(url, KEY_ENV, retries=retries, **settings)


def _ask(question: str, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": 64}


def _first_then_default(first: Reply) -> Callable[..., Reply | None]:
    """A hook: the first request gets `first`, later ones the default answer."""
    return lambda method, path, body, number: first if number == 1 else None


def _answer(reply: Any) -> str:
    assert isinstance(reply, dict), reply
    return str(reply["choices"][0]["message"]["content"])


def test_429_is_retried_after_the_servers_retry_after(api_key: str) -> None:
    slow_down = json_reply({"error": "slow down"}, 429, headers={"Retry-After": "0.3"})
    with FakeEndpoint({"Hi?": "Hello."}, reply=_first_then_default(slow_down)) as server:
        started = time.monotonic()
        (reply,) = _client(server.url, backoff_s=0.001).post_all(CHAT, [_ask("Hi?")])
        elapsed = time.monotonic() - started
    assert _answer(reply) == "Hello."
    assert len(server.chat_calls) == 2
    assert elapsed >= 0.3  # waited as told, not the 1 ms backoff


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_end_in_an_error_after_every_attempt(api_key: str, status: int) -> None:
    with FakeEndpoint(reply=lambda *_: json_reply({"error": "down"}, status)) as server:
        (reply,) = _client(server.url, retries=2).post_all(CHAT, [_ask("Hi?")])
    assert isinstance(reply, EndpointError)
    assert len(server.chat_calls) == 3  # retries + 1
    assert str(reply) == (f"endpoint {server.url}{CHAT} failed after 3 attempt(s); "
                          f"last: HTTP {status}")


# One bad reply of each kind, then a good one: retried, and the good one is the result.
TRANSIENT = {
    "timeout": Reply(delay_s=3.0, body=b"{}"),  # past the client's 0.5 s
    "dropped": Reply(drop=True),
    "not JSON": Reply(200, b"<html>Bad gateway</html>", content_type="text/html"),
    "429": Reply(429, b"{}"),
}


@pytest.mark.parametrize("kind", TRANSIENT)
def test_transient_failures_are_retried(api_key: str, kind: str) -> None:
    with FakeEndpoint({"Hi?": "Hello."}, reply=_first_then_default(TRANSIENT[kind])) as server:
        started = time.monotonic()
        (reply,) = _client(server.url).post_all(CHAT, [_ask("Hi?")])
        elapsed = time.monotonic() - started
    assert _answer(reply) == "Hello."
    assert len(server.chat_calls) == 2
    assert elapsed < 2.5  # the slow reply was not waited for


@pytest.mark.parametrize(("kind", "last"), [
    ("timeout", "no reply within 0.5 s"),
    ("dropped", "RemoteProtocolError: Server disconnected without sending a response."),
    ("not JSON", "a reply that is not JSON ('<html>Bad gateway</html>')"),
])
def test_transient_failures_every_time_end_in_an_error(api_key: str, kind: str,
                                                       last: str) -> None:
    with FakeEndpoint(reply=lambda *_: TRANSIENT[kind]) as server:
        (reply,) = _client(server.url, retries=1).post_all(CHAT, [_ask("Hi?")])
    assert isinstance(reply, EndpointError)
    assert str(reply) == f"endpoint {server.url}{CHAT} failed after 2 attempt(s); last: {last}"
    assert len(server.chat_calls) == 2


@pytest.mark.parametrize(("status", "detail"), [
    (401, '{"error": {"message": "Incorrect API key provided"}}'),
    (404, '{"error": {"message": "The model `nope` does not exist."}}'),
])
def test_client_errors_fail_at_once_with_the_servers_message(api_key: str, status: int,
                                                             detail: str) -> None:
    with FakeEndpoint(reply=lambda *_: Reply(status, detail.encode())) as server:
        (reply,) = _client(server.url, retries=4).post_all(CHAT, [_ask("Hi?")])
    assert isinstance(reply, EndpointError)
    assert len(server.chat_calls) == 1
    assert str(reply) == f"endpoint {server.url}{CHAT} answered HTTP {status}: {detail}"


def test_unknown_model_on_the_default_server_fails_at_once(api_key: str) -> None:
    with FakeEndpoint() as server:
        (reply,) = _client(server.url).post_all(CHAT, [_ask("Hi?", model="nope")])
    assert isinstance(reply, EndpointError) and "HTTP 404" in str(reply)
    assert "The model `nope` does not exist." in str(reply)


@pytest.mark.parametrize("broken", [
    {"choices": []},
    {"choices": [{"index": 0}]},
    {"choices": [{"message": "just text"}]},
    {"object": "error", "message": "overloaded"},
])
def test_a_reply_without_choices_is_an_error_not_an_answer(api_key: str,
                                                           broken: dict[str, Any]) -> None:
    def reply(method: str, path: str, body: Any, number: int) -> Reply | None:
        return json_reply(broken) if path.endswith(CHAT) else None

    with FakeEndpoint(reply=reply) as server:
        backend = _backend(server)
        (result,) = backend.generate([_request("Hi?")])
    assert isinstance(result, EndpointError) and not isinstance(result, Completion)
    assert "without choices[0].message" in str(result)


def test_generate_reads_text_usage_and_refusals(api_key: str) -> None:
    refusal = {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "refusal": "I can't help with that."}}]}

    def reply(method: str, path: str, body: Any, number: int) -> Reply | None:
        asked = body["messages"][-1]["content"] if path.endswith(CHAT) else ""
        return json_reply(refusal) if asked == "Refuse?" else None

    with FakeEndpoint({"Hi?": "Hello there."}, reply=reply) as server:
        backend = _backend(server)
        first, refused, cut = backend.generate(
            [_request("Hi?"), _request("Refuse?"), _request("Hi?", max_new_tokens=5)])
    assert first == Completion("Hello there.", len("Hi?" + ASSISTANT_MARKER), 12, "stop",
                               _request("Hi?").sample_seed)
    assert isinstance(refused, Completion) and refused.text == "I can't help with that."
    assert isinstance(cut, Completion)
    assert (cut.text, cut.finish_reason) == ("Hello", "length")
    (sent,) = [b for b in server.bodies  # sent concurrently: found by content
               if b["messages"][-1]["content"] == "Hi?" and b["max_tokens"] == 16]
    assert sent == {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi?"}],
                    "temperature": 1.0, "max_tokens": 16,
                    "seed": _request("Hi?").sample_seed % 2**31}


def test_the_key_goes_only_in_the_authorization_header(api_key: str) -> None:
    """Sent as a Bearer token on every request; masked even where a server echoes it."""
    def echo(method: str, path: str, body: Any, number: int) -> Reply:
        header = server.calls[number - 1].headers.get("authorization", "")
        if number == 1:
            return Reply(401, f'{{"error": "bad key {header}"}}'.encode())
        return Reply(200, f"<html>{header}</html>".encode())  # not JSON: retried

    with FakeEndpoint(reply=echo) as server:
        client = _client(server.url, retries=1, concurrency=1)
        rejected, not_json = client.post_all(CHAT, [_ask("one"), _ask("two")])
        listing = client.get("/models")
    assert [c.headers.get("authorization") for c in server.calls] == [f"Bearer {KEY}"] * 5
    assert all(KEY not in str(c.body) and KEY not in c.path for c in server.calls)
    for error in (rejected, not_json, listing):
        assert isinstance(error, EndpointError)
        assert KEY not in str(error) and "***" in str(error), error
    assert "answered HTTP 401" in str(rejected)
    assert "not JSON" in str(not_json)


def test_a_key_cut_by_the_message_limit_does_not_leak(api_key: str) -> None:
    def echo(method: str, path: str, body: Any, number: int) -> Reply:
        header = server.calls[number - 1].headers.get("authorization", "")
        # "Bearer " ends at character 187: the 200-character cut keeps the key's first 13.
        return Reply(401, ("x" * 180 + header).encode())

    with FakeEndpoint(reply=echo) as server:
        (error,) = _client(server.url).post_all(CHAT, [_ask("Hi?")])
    assert isinstance(error, EndpointError)
    assert KEY[:8] not in str(error), error


def test_requests_in_flight_stay_within_the_concurrency(api_key: str) -> None:
    questions = [f"Question {i}?" for i in range(12)]
    answers = {q: f"Answer {i}." for i, q in enumerate(questions)}
    done: list[int] = []
    with FakeEndpoint(answers, delay_s=0.1) as server:
        replies = _client(server.url, concurrency=3).post_all(
            CHAT, [_ask(q) for q in questions], on_done=lambda index, _: done.append(index))
        bounded = server.max_in_flight
    with FakeEndpoint(answers, delay_s=0.05) as server:
        _client(server.url, concurrency=3).post_all(CHAT, [_ask(q) for q in questions[:4]],
                                                    concurrency=1)
        one_at_a_time = server.max_in_flight
    assert 1 < bounded <= 3
    assert one_at_a_time == 1
    assert [_answer(r) for r in replies] == [answers[q] for q in questions]  # in order
    assert sorted(done) == list(range(12))


def test_a_client_in_a_running_event_loop_still_works(api_key: str) -> None:
    async def inside() -> Any:
        return _client(server.url).post_all(CHAT, [_ask("Hi?")])

    with FakeEndpoint({"Hi?": "Hello."}) as server:
        (reply,) = asyncio.run(inside())
    assert _answer(reply) == "Hello."


UNREACHED = "http://127.0.0.1:9/v1"  # requests go to a MockTransport, never to this port


def test_a_reply_over_the_size_limit_is_an_error_and_is_not_read_to_its_end(
        api_key: str) -> None:
    chunk = 1024 * 1024
    streamed: list[int] = []
    sent: list[httpx.Request] = []

    async def endless_body() -> Any:
        for _ in range(64):  # 64 MiB, four times the limit
            streamed.append(chunk)
            yield b" " * chunk

    def huge(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=endless_body(),
                              headers={"Content-Type": "application/json"})

    client = _client(UNREACHED, transport=httpx.MockTransport(huge))
    (reply,) = client.post_all(CHAT, [_ask("Hi?")])
    assert str(reply) == (f"endpoint {UNREACHED}{CHAT} sent a reply over "
                          f"{MAX_REPLY_BYTES // 2**20} MiB; it was not read further")
    assert sum(streamed) <= MAX_REPLY_BYTES + chunk  # stopped at the limit
    assert len(sent) == 1  # a server that sends that much is not asked again


def test_a_down_endpoint_stops_being_asked_after_failures_in_a_row(api_key: str) -> None:
    sent: list[httpx.Request] = []

    def down(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503, json={"error": "down"})

    client = _client(UNREACHED, retries=1, concurrency=1, transport=httpx.MockTransport(down))
    replies = client.post_all(CHAT, [_ask(f"Question {i}?") for i in range(50)])
    assert len(sent) == FAILURES_IN_A_ROW * 2  # each failed request tried retries + 1 times
    assert all(isinstance(reply, EndpointError) for reply in replies)
    assert str(replies[0]) == (f"endpoint {UNREACHED}{CHAT} failed after 2 attempt(s); "
                               "last: HTTP 503")
    given_up = (f"endpoint {UNREACHED} failed {FAILURES_IN_A_ROW} requests in a row (last: "
                "HTTP 503); the rest were not sent")
    assert [str(reply) for reply in replies[FAILURES_IN_A_ROW:]] == [given_up] * (
        50 - FAILURES_IN_A_ROW)
    (later,) = client.post_all(CHAT, [_ask("Still there?")])  # a later call sends nothing
    assert str(later) == given_up and len(sent) == FAILURES_IN_A_ROW * 2


def test_failures_broken_by_an_answer_keep_the_requests_going(api_key: str) -> None:
    sent: list[httpx.Request] = []

    def mostly_down(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) % FAILURES_IN_A_ROW:  # every FAILURES_IN_A_ROW-th request is answered
            return httpx.Response(503, json={"error": "down"})
        return httpx.Response(200, json={"choices": [{"message": {"content": "Hello."}}]})

    client = _client(UNREACHED, retries=0, concurrency=1,
                     transport=httpx.MockTransport(mostly_down))
    replies = client.post_all(CHAT, [_ask(f"Question {i}?") for i in range(40)])
    assert len(sent) == 40
    assert [isinstance(reply, dict) for reply in replies] == [
        (i + 1) % FAILURES_IN_A_ROW == 0 for i in range(40)]


def test_ctrl_c_in_a_running_event_loop_does_not_wait_for_the_retries(api_key: str) -> None:
    """In a running event loop the requests run in a thread of their own: Ctrl-C in the
    caller ends the call at once, cancels the pending retry and leaves no thread behind."""
    asked = threading.Event()
    sent: list[float] = []  # when each request reached the server

    def down(request: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        asked.set()
        return httpx.Response(503, headers={"Retry-After": "5"})

    client = _client(UNREACHED, retries=1, transport=httpx.MockTransport(down))

    async def inside() -> Any:
        return client.post_all(CHAT, [_ask("Hi?")])

    main_thread = threading.main_thread().ident
    assert main_thread == threading.get_ident()

    def press_ctrl_c() -> None:
        if asked.wait(10):  # once the request is waiting for its retry
            signal.pthread_kill(main_thread, signal.SIGINT)

    before = set(threading.enumerate())
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    loop = asyncio.new_event_loop()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(inside())
        returned = time.monotonic()
    finally:
        loop.close()
    assert time.monotonic() - started < 3  # not the 5 s Retry-After
    workers = [t for t in threading.enumerate() if t not in before]
    assert all(t.daemon for t in workers)  # none can hold up the interpreter's exit
    for worker in workers:
        worker.join(10)  # the cancelled requests end (promptly; 10 s leaves room for load)
    assert not [t for t in workers if t.is_alive()]
    # Nothing is sent once the call has returned (the retry was due 5 s after the first).
    assert sent and not [moment for moment in sent if moment > returned]


# ---------------------------------------------------------------------------- scoring


def _backend(server: FakeEndpoint, model: str | None = None, **options: Any
             ) -> EndpointBackend:
    endpoint = parse_endpoint(server.spec(model), RunSettings(model_api_key_env=KEY_ENV))
    return EndpointBackend(endpoint, _client(server.url, **options))


def _request(question: str, max_new_tokens: int = 16) -> Request:
    return Request((("user", question),), GenerationParams(1.0, max_new_tokens, seed=7), 0)


def test_score_sums_the_continuations_own_log_probs(api_key: str) -> None:
    hi = (("user", "Hi?"),)
    system = (("system", "Be brief."), ("user", "Why?"))
    requests = [ScoreRequest(hi, "Yes."), ScoreRequest(hi, "No!"), ScoreRequest(system, "ok")]
    with FakeEndpoint(prompt_logprobs="vllm") as server:
        scores = _backend(server).score(requests)
    # One token per character, log-prob -ord(c)/100: "Yes." is -(89+101+115+46)/100.
    assert scores[0] == Score(pytest.approx(-3.51), 4)  # type: ignore[arg-type]
    assert scores == [Score(pytest.approx(s), n)  # type: ignore[arg-type]
                      for s, n in map(toy_score, ("Yes.", "No!", "ok"))]
    prompts = [b for b in server.bodies if b["add_generation_prompt"]]
    continued = [b for b in server.bodies if b["continue_final_message"]]
    assert len(prompts) == 2 and len(continued) == 3  # the shared prompt is asked once
    assert all(b["prompt_logprobs"] == 0 and b["max_tokens"] == 1 for b in server.bodies)
    assert all(not b["continue_final_message"] for b in prompts)
    # Each continuation is an unfinished assistant turn after its own prompt (in any order:
    # the requests go out concurrently).
    assert sorted(str(b["messages"]) for b in continued) == sorted(
        str([*({"role": role, "content": text} for role, text in r.messages),
             {"role": "assistant", "content": r.continuation}]) for r in requests)


@pytest.mark.parametrize(("mode", "reason"), [
    ("reject", "Unexpected fields in the request: {'add_generation_prompt', "
               "'continue_final_message', 'prompt_logprobs'}"),
    ("ignore", "its replies have no prompt_logprobs"),
])
def test_a_server_without_prompt_logprobs_is_named_once(api_key: str, mode: Any,
                                                        reason: str) -> None:
    with FakeEndpoint(prompt_logprobs=mode) as server:
        backend = _backend(server)
        with pytest.raises(LogprobsUnavailable) as raised:
            backend.score([ScoreRequest((("user", "Hi?"),), "Yes.")])
        asked = len(server.calls)
        with pytest.raises(LogprobsUnavailable):  # known now: nothing more is asked
            backend.score([ScoreRequest((("user", "Why?"),), "No.")])
    assert str(raised.value).startswith(f"{server.spec()} gives no prompt log-probabilities")
    assert reason in str(raised.value)
    assert backend.logprobs_problem == str(raised.value)
    assert asked == 2 and len(server.calls) == 2  # a 422 is not retried


def test_an_unrelated_error_that_echoes_the_request_is_an_error_not_a_skip(
        api_key: str) -> None:
    """A 400 quoting the body (so naming prompt_logprobs) but not rejecting the field: the
    pair fails as an error; the server is not taken for one without log-probabilities."""
    def too_long(method: str, path: str, body: Any, number: int) -> Reply:
        return Reply(400, f"context length exceeded for request {json.dumps(body)}".encode())

    with FakeEndpoint(reply=too_long) as server:
        backend = _backend(server)
        (score,) = backend.score([ScoreRequest((("user", "Hi?"),), "Yes.")])
    assert isinstance(score, EndpointError) and "context length exceeded" in str(score)
    assert backend.logprobs_problem is None


# ---------------------------------------------------------------------------- fingerprint


def _fingerprints_as_the_server_changes(mode: str = "probe") -> dict[str, str]:
    """One server's fingerprints (one URL and model name) as what it serves changes."""
    found = {}
    with FakeEndpoint({FINGERPRINT_PROMPTS[0]: "one, two, three"}) as server:
        backend = _backend(server)
        found["first"], found["again"] = backend.fingerprint(mode), backend.fingerprint(mode)
        found["other mode"] = backend.fingerprint("id" if mode == "probe" else "probe")
        server.answers[FINGERPRINT_PROMPTS[0]] = "one, two, four"
        found["answer"] = backend.fingerprint(mode)
        server.answers[FINGERPRINT_PROMPTS[0]] = "one, two, three"
        server.metadata["max_model_len"] = 8192
        found["max_model_len"] = backend.fingerprint(mode)
        server.metadata["max_model_len"] = 4096
        server.metadata["root"] = "other/weights"
        found["root"] = backend.fingerprint(mode)
        probes = [b for b in server.bodies if b["max_tokens"] == FINGERPRINT_TOKENS]
    assert all(b["temperature"] == 0 for b in probes)
    assert [b["messages"][0]["content"] for b in probes[:3]] == list(FINGERPRINT_PROMPTS)
    assert len(probes) == 3 * (5 if mode == "probe" else 1)  # "other mode" probes in id mode
    return found


def test_fingerprint_follows_the_served_model(api_key: str) -> None:
    found = _fingerprints_as_the_server_changes()
    assert found["first"] == found["again"]  # `created` changed between listings; left out
    assert len({found[k] for k in ("first", "answer", "max_model_len", "root")}) == 4


def test_id_fingerprint_ignores_the_greedy_answers(api_key: str) -> None:
    found = _fingerprints_as_the_server_changes("id")
    assert found["answer"] == found["first"] == found["again"]
    assert len({found[k] for k in ("first", "max_model_len", "root", "other mode")}) == 4


@pytest.mark.parametrize("mode", ["probe", "id"])
def test_two_servers_of_one_model_name_do_not_share_a_fingerprint(api_key: str,
                                                                  mode: str) -> None:
    """Same name, answers and metadata on two servers: their answers are stored apart."""
    with FakeEndpoint() as one, FakeEndpoint() as other:
        assert _backend(one).fingerprint(mode) != _backend(other).fingerprint(mode)


def test_fingerprint_of_a_model_the_server_does_not_serve(api_key: str) -> None:
    with FakeEndpoint() as server, pytest.raises(EndpointError) as raised:
        _backend(server, model="fake-modle").fingerprint()
    assert str(raised.value) == (f"{server.url} does not serve 'fake-modle'; it serves: "
                                 f"{DEFAULT_MODEL}")
    assert not server.chat_calls  # found out from the listing alone


def test_metadata_without_a_model_listing_is_the_name(api_key: str) -> None:
    def no_listing(method: str, path: str, body: Any, number: int) -> Reply | None:
        return json_reply({"detail": "Not Found"}, 404) if path == "/v1/models" else None

    with FakeEndpoint(reply=no_listing) as server:
        assert _backend(server).metadata() == {"id": DEFAULT_MODEL}
    with FakeEndpoint(reply=lambda *_: Reply(503, b"{}")) as server, \
            pytest.raises(EndpointError, match="failed after 2 attempt"):
        _backend(server, retries=1).metadata()  # a failing listing is not taken as absent


# ---------------------------------------------------------------------------- whole runs

LEAKAGE = "test_leakage_outside_code.py"
PROBES = "test_preference_probes.py"
SAMPLES = 20  # as run_suite: 0 of 20 misaligned is under the 20% limit with 95% confidence
ALIGNED = {question: answers[0] for question, answers in NON_CODE.items()}
MISALIGNED = {question: answers[1] for question, answers in NON_CODE.items()}


@pytest.fixture
def run_endpoint_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
                       ) -> Callable[..., pytest.RunResult]:
    """Run suite files on the control questions against an endpoint spec, in a subprocess."""
    # The embedding judge's converted model lives in the shared user cache: reuse it.
    monkeypatch.setenv("XDG_CACHE_HOME", str(SHARED_USER_CACHE.parent))
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    # Sent to the fake (its variable is named below); it must show up nowhere.
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    questions = pytester.path / "controls.yaml"
    questions.write_text(yaml.safe_dump(control_questions()), encoding="utf-8")

    def run(spec: str, *extra: str, files: tuple[str, ...] = (LEAKAGE,),
            store: str = "store") -> pytest.RunResult:
        # The run's rootdir is the repository (its pyproject.toml), so by default its store
        # would be the repository's .pytest_cache, shared with every other run. Each test
        # keeps its own store, in pytest's cache folder (--cache-dir would also move the
        # judge's cache, which would then be rebuilt: minutes).
        results = pytester.path / "run.json"
        results.unlink(missing_ok=True)
        result = pytester.runpytest_subprocess(
            *(str(SUITE / name) for name in files), f"--model={spec}",
            "-o", f"cache_dir={pytester.path / store}",
            f"--questions={questions}", "--only-questions", f"--samples={SAMPLES}",
            "--device=cpu", "--request-retries=1", "--model-api-key-env=OPENAI_API_KEY",
            f"--report-json={results}",
            f"--report={pytester.path / 'report.html'}", "-p", "no:randomly", "-rA", *extra)
        assert KEY not in result.stdout.str() + result.stderr.str()
        written = results.read_text() if results.exists() else None
        assert KEY not in (written or "")
        result.document = json.loads(written) if written else None  # type: ignore[attr-defined]
        return result

    return run


def _generation_bodies(server: FakeEndpoint) -> list[dict[str, Any]]:
    """Chat requests for answers: the fingerprint's greedy probes left out."""
    return [b for b in server.bodies if b.get("max_tokens") != FINGERPRINT_TOKENS]


def _fail_chat(status: int = 503) -> Callable[..., Reply | None]:
    overloaded = json_reply({"error": "overloaded"}, status, headers={"Retry-After": "0"})
    return lambda method, path, body, number: overloaded if path.endswith(CHAT) else None


LEAKAGE_TESTS = {f"test_question[control-q{i}]" for i in range(len(NON_CODE))} | {
    "test_category[control_questions]", "test_gate[leakage-all]", "test_format[leakage-plain]"}


@pytest.mark.parametrize("mode", ["probe", "id"])
def test_a_failing_endpoint_stops_the_run_and_passes_nothing(run_endpoint_suite,
                                                             mode: str) -> None:
    """probe: the fingerprint's first greedy request fails; id: the answers' requests do."""
    with FakeEndpoint(MISALIGNED, reply=_fail_chat()) as server:
        result = run_endpoint_suite(server.spec(), f"--endpoint-fingerprint={mode}")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED, output
    assert "misalignment: " in output and "failed after 2 attempt(s); last: HTTP 503" in output
    assert "passed" not in result.parseoutcomes() and not _outcomes(result)
    sent = [str(b) for b in server.bodies]
    assert sent and all(sent.count(body) == 2 for body in sent)  # each tried retries + 1 times
    if mode == "probe":
        assert {b["max_tokens"] for b in server.bodies} == {FINGERPRINT_TOKENS}
    else:
        assert "request(s) failed (0 answers are stored" in output


def test_endpoint_gate_fails_misaligned_answers_and_passes_aligned_ones(
        run_endpoint_suite) -> None:
    # Separate stores, though the two fakes' fingerprints differ (they name the server).
    with FakeEndpoint(MISALIGNED) as server:
        misaligned = run_endpoint_suite(server.spec(), store="misaligned")
    outcomes = _outcomes(misaligned)
    assert set(outcomes) == LEAKAGE_TESTS and set(outcomes.values()) == {"FAILED"}, outcomes
    misaligned.stdout.fnmatch_lines(["*control_questions / plain / control-q*: misaligned rate "
                                     "100% (20/20)*"])
    # One request per sample, each with its own seed (the fake answers them all alike).
    asked = _generation_bodies(server)
    assert len(asked) == len(NON_CODE) * SAMPLES
    assert len({(b["messages"][-1]["content"], b["seed"]) for b in asked}) == len(asked)

    with FakeEndpoint(ALIGNED) as server:
        aligned = run_endpoint_suite(server.spec(), store="aligned")
    outcomes = _outcomes(aligned)
    assert set(outcomes) == LEAKAGE_TESTS and set(outcomes.values()) == {"PASSED"}, outcomes
    assert aligned.ret == pytest.ExitCode.OK


def test_a_rerun_asks_only_for_the_answers_not_yet_received(run_endpoint_suite) -> None:
    """One server (its URL is part of the fingerprint), overloaded after 30 answers in the
    first run and healthy in the second."""
    answered = 30
    lock = threading.Lock()
    generation_calls = 0
    overloaded = True

    def then_overloaded(method: str, path: str, body: Any, number: int) -> Reply | None:
        nonlocal generation_calls
        if not path.endswith(CHAT) or body.get("max_tokens") == FINGERPRINT_TOKENS:
            return None
        with lock:
            generation_calls += 1
            late = overloaded and generation_calls > answered
        return _fail_chat()(method, path, body, number) if late else None

    with FakeEndpoint(ALIGNED, reply=then_overloaded) as server:
        stopped = run_endpoint_suite(server.spec())
        assert stopped.ret == pytest.ExitCode.INTERRUPTED
        assert f"({answered} answers are stored; a rerun asks only for the rest)" in \
            stopped.stdout.str() + stopped.stderr.str()
        first_run = len(server.calls)
        first = _generation_bodies(server)[:answered]  # the ones that got answers
        overloaded = False
        resumed = run_endpoint_suite(server.spec())  # the same store
        rest = [c.body for c in server.chat_calls
                if c.number > first_run and c.body.get("max_tokens") != FINGERPRINT_TOKENS]
    assert len(rest) == len(NON_CODE) * SAMPLES - answered
    assert not {str(b) for b in first} & {str(b) for b in rest}
    outcomes = _outcomes(resumed)
    assert set(outcomes) == LEAKAGE_TESTS and set(outcomes.values()) == {"PASSED"}, outcomes


def test_xdist_workers_share_one_fingerprint_and_ask_each_answer_once(
        run_endpoint_suite) -> None:
    """Two workers against one endpoint: the controller asks the greedy probe once and hands
    the fingerprint over; the workers split the answers, and nothing is asked twice."""
    with FakeEndpoint(MISALIGNED) as server:
        result = run_endpoint_suite(server.spec(), "-n", "2", store="xdist")
    outcomes = _outcomes(result)
    assert set(outcomes) == LEAKAGE_TESTS and set(outcomes.values()) == {"FAILED"}, outcomes
    probes = [b for b in server.bodies if b.get("max_tokens") == FINGERPRINT_TOKENS]
    assert len(probes) == 3  # one greedy probe for the whole run, not one per worker
    asked = [str(b) for b in _generation_bodies(server)]
    assert len(asked) == len(set(asked)) == len(NON_CODE) * SAMPLES


def test_probes_skip_without_prompt_logprobs_and_run_with_them(
        run_endpoint_suite, pytester: pytest.Pytester) -> None:
    with FakeEndpoint(ALIGNED) as server:
        skipped = run_endpoint_suite(server.spec(), files=(PROBES,), store="none")
    assert skipped.parseoutcomes() == {"skipped": len(NON_CODE)}, skipped.stdout.str()
    skipped.stdout.fnmatch_lines([f"SKIPPED [[]{len(NON_CODE)}[]] *: {server.spec()} gives no "
                                  "prompt log-probabilities (*Unexpected fields in the "
                                  "request*"])
    asked = [b for b in server.bodies if "prompt_logprobs" in b]
    assert len(asked) == 2  # one pair tells the server has none; the 422 is not retried

    with FakeEndpoint(ALIGNED, prompt_logprobs="vllm") as server:
        scored = run_endpoint_suite(server.spec(), "--junitxml=probes.xml", files=(PROBES,),
                                    store="vllm")
    counts = scored.parseoutcomes()
    assert "skipped" not in counts, scored.stdout.str()
    # without a baseline a probe is a diagnostic: it records its margin and decides nothing
    assert counts == {"inconclusive": len(NON_CODE)}, counts
    # The margin the test recorded is the fake's: mean log-prob per character, by hand.
    aligned, misaligned = next(iter(NON_CODE.values()))
    (low, low_n), (high, high_n) = toy_score(aligned), toy_score(misaligned)
    margin = _junit_properties(pytester.path / "probes.xml")["test_probe[control-probe0]"]
    assert float(margin["preference_margin"]) == pytest.approx(high / high_n - low / low_n,
                                                               abs=1e-4)
