"""An in-process OpenAI-compatible server on loopback for the endpoint and judge tests.

By default it acts as a tiny chat model: GET /v1/models lists one model and POST
/v1/chat/completions answers each last user message from a fixed dict. With
`prompt_logprobs="vllm"` it also gives vLLM's prompt log-probabilities over a toy
tokenization (one token per character, id = ord(char), log-probability `toy_logprob`), so a
test can work out a score by hand. A `reply` hook scripts anything else: any status, bytes
and headers, a dropped connection, a late reply, a reply that is not JSON.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

# Fields vLLM accepts on chat completions that plain OpenAI-compatible servers do not.
VLLM_FIELDS = ("prompt_logprobs", "add_generation_prompt", "continue_final_message")
# What the toy chat template puts before an assistant turn (the generation prompt).
ASSISTANT_MARKER = "<|assistant|>"
DEFAULT_MODEL = "fake-model"
DEFAULT_ANSWER = "I have no answer to that."
LogprobMode = Literal["vllm", "reject", "ignore"]


def toy_logprob(char: str) -> float:
    """The fake's log-probability of one character token: easy to sum by hand."""
    return -ord(char) / 100


def toy_score(text: str) -> tuple[float, int]:
    """(summed log-probability, token count) the fake gives `text` as a continuation."""
    return sum(toy_logprob(c) for c in text), len(text)


def render(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
    """The toy chat template: contents in order, each assistant turn after the marker.

    A continued assistant turn is rendered as marker + its text, so the prompt alone (with
    the generation prompt) is a prefix of the prompt with a continuation, as in real
    templates.
    """
    text = "".join((ASSISTANT_MARKER if m.get("role") == "assistant" else "")
                   + str(m.get("content") or "") for m in messages)
    return text + (ASSISTANT_MARKER if add_generation_prompt else "")


@dataclass(frozen=True)
class Reply:
    """What the server does with one request."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait this long first (a client timeout shorter than it fires)
    drop: bool = False  # close the connection without any reply
    content_type: str = "application/json"


def json_reply(payload: object, status: int = 200, **options: Any) -> Reply:
    return Reply(status, json.dumps(payload).encode(), **options)


def chat_completion(content: str, *, model: str = DEFAULT_MODEL, prompt_tokens: int = 0,
                    finish_reason: str = "stop", **extra: Any) -> dict[str, Any]:
    """A chat completion reply in the OpenAI shape."""
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content),
                  "total_tokens": prompt_tokens + len(content)},
        **extra,
    }


@dataclass(frozen=True)
class Call:
    """One request the server received (header names lower-cased)."""

    method: str
    path: str
    body: Any
    headers: Mapping[str, str]
    number: int  # 1 for the first request the server received


# The hook: (method, path, body, call number) -> a Reply, or None for the default behaviour.
ReplyHook = Callable[[str, str, Any, int], Reply | None]


class FakeEndpoint:
    """An OpenAI-compatible server on 127.0.0.1 (a free port), used as a context manager."""

    def __init__(self, answers: Mapping[str, str] | None = None, *,
                 reply: ReplyHook | None = None, model: str = DEFAULT_MODEL,
                 default_answer: str = DEFAULT_ANSWER, prompt_logprobs: LogprobMode = "reject",
                 metadata: Mapping[str, Any] | None = None, delay_s: float = 0.0) -> None:
        self.answers = dict(answers or {})
        self.hook = reply
        self.model = model
        self.default_answer = default_answer
        self.prompt_logprobs: LogprobMode = prompt_logprobs
        self.metadata = {"owned_by": "fake", "root": model, "max_model_len": 4096,
                         **(metadata or {})}
        self.delay_s = delay_s  # every reply waits this long (for concurrency counting)
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listings = 0
        self.errors: list[BaseException] = []  # raised by a reply hook (re-raised on exit)
        self.httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        # A short poll: shutdown() waits up to one poll interval.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def spec(self, model: str | None = None) -> str:
        """The --model spec that names this server's model."""
        return f"{self.url}#{model or self.model}"

    def __enter__(self) -> FakeEndpoint:
        self.thread.start()
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self._closing.set()  # wakes any handler still waiting out a delay
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.errors and kind is None:
            # A broken hook would otherwise look like a dropped connection.
            raise AssertionError(f"the fake endpoint's reply hook failed: {self.errors[0]!r}")

    # ------------------------------------------------------------------ what was asked

    @property
    def chat_calls(self) -> list[Call]:
        return [c for c in self.calls if c.path == "/v1/chat/completions"]

    @property
    def bodies(self) -> list[Any]:
        """Bodies of the chat completion requests, in arrival order."""
        return [c.body for c in self.chat_calls]

    # ------------------------------------------------------------------ replying

    def _handle(self, method: str, path: str, body: Any, headers: Mapping[str, str]) -> Reply:
        with self._lock:
            number = len(self.calls) + 1
            self.calls.append(Call(method, path, body, headers, number))
        if self.hook is not None:
            scripted = self.hook(method, path, body, number)
            if scripted is not None:
                return scripted
        return self.default_reply(method, path, body)

    def default_reply(self, method: str, path: str, body: Any) -> Reply:
        """The chat model's behaviour (a hook may fall back on it for some calls)."""
        if method == "GET" and path == "/v1/models":
            with self._lock:
                self._listings += 1
                # Like vLLM: `created` is the time of the request, not of the weights.
                created = self._listings
            entry = {"id": self.model, "object": "model", "created": created, **self.metadata}
            return json_reply({"object": "list", "data": [entry]})
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat(body)
        return json_reply({"detail": "Not Found"}, 404)

    def _chat(self, body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return json_reply({"error": {"message": "messages is required"}}, 400)
        if body.get("model") != self.model:
            return json_reply({"error": {"message": f"The model `{body.get('model')}` does "
                                                    "not exist.", "code": 404}}, 404)
        extensions = sorted(name for name in VLLM_FIELDS if name in body)
        if extensions and self.prompt_logprobs == "reject":
            # What `transformers serve` answers to fields it does not know.
            listed = "{" + ", ".join(repr(name) for name in extensions) + "}"
            return json_reply({"detail": f"Unexpected fields in the request: {listed}"}, 422)
        use_vllm = self.prompt_logprobs == "vllm"
        continue_final = use_vllm and bool(body.get("continue_final_message"))
        add_generation = not use_vllm or bool(body.get("add_generation_prompt", True))
        if continue_final and add_generation:
            return json_reply({"error": {"message": "continue_final_message and "
                                                    "add_generation_prompt cannot both be "
                                                    "true"}}, 400)
        prompt = render(body["messages"], add_generation)
        users = [m for m in body["messages"] if m.get("role") == "user"]
        question = str(users[-1].get("content")) if users else ""
        answer = self.answers.get(question, self.default_answer)
        limit = body.get("max_tokens")
        truncated = isinstance(limit, int) and len(answer) > limit
        if truncated:
            answer = answer[:limit]
        extra: dict[str, Any] = {}
        if use_vllm and body.get("prompt_logprobs") is not None:
            # vLLM: nothing for the first token, then each prompt token's own log-prob
            # keyed by its token id (with prompt_logprobs=0, no alternatives).
            extra["prompt_logprobs"] = [None] + [
                {str(ord(c)): {"logprob": toy_logprob(c), "rank": 1, "decoded_token": c}}
                for c in prompt[1:]]
        return json_reply(chat_completion(answer, model=self.model, prompt_tokens=len(prompt),
                                          finish_reason="length" if truncated else "stop",
                                          **extra))

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._closing.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) overflows under a concurrent client, and the kernel then
    # resets connections: failures of the fake, not of the client under test.
    request_queue_size = 128
    block_on_close = False  # a handler still sleeping must not hold up the test

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) leaves a broken pipe behind: expected here.
        pass


def _handler_for(server: FakeEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve("GET", None)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            self._serve("POST", body)

        def _serve(self, method: str, body: Any) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            server._enter()
            try:
                try:
                    reply = server._handle(method, self.path, body, headers)
                except Exception as error:
                    server.errors.append(error)
                    raise
                server._wait(max(reply.delay_s, server.delay_s))
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)
            finally:
                server._leave()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
