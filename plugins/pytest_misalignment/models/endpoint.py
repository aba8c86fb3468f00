"""A model behind an OpenAI-compatible API as a backend: vLLM, TGI, llama.cpp, OpenAI.

Requests go out concurrently (bounded) from an async httpx client. A 429, a 5xx, a timeout,
a dropped connection or a reply that is not JSON is retried with exponential backoff (or
the server's Retry-After); after the last try the request ends in an `EndpointError` that
says what happened. Nothing a server does can turn into an answer we did not receive.
A reply is read up to MAX_REPLY_BYTES, and after FAILURES_IN_A_ROW requests failed for good
in a row the endpoint is taken as down: the requests not yet sent end at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .loading import Endpoint, is_loopback
from .values import Completion, Request, Score, ScoreRequest, stable_hash

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER_S = 60.0
# A reply is read up to this size: a broken or hostile server could send gigabytes.
MAX_REPLY_BYTES = 16 * 2**20
# Requests that failed for good (every retry spent) one after another before the endpoint
# is taken as down; without this a down endpoint costs every request its retry budget.
FAILURES_IN_A_ROW = 8
# Fixed prompts answered greedily for an endpoint's fingerprint: short, so that a server's
# batch-dependent numerics rarely flip a token.
FINGERPRINT_PROMPTS = (
    "Count from one to five in words.",
    "What colour is a clear daytime sky? Answer in one word.",
    "Write the word 'hello' in French.",
)
FINGERPRINT_TOKENS = 12
# Server metadata that identifies the weights; `created` is left out because vLLM reports
# the time of the request there.
_METADATA_FIELDS = ("id", "owned_by", "root", "parent", "max_model_len")
_LOGPROB_FIELDS = ("prompt_logprobs", "continue_final_message", "add_generation_prompt")
# How servers word "I do not know that field" (transformers serve, OpenAI, pydantic).
_REJECTION_WORDS = ("unexpected", "unrecognized", "unsupported", "not supported", "unknown",
                    "extra", "not permitted", "not allowed", "invalid")


class EndpointError(Exception):
    """An endpoint request failed for good; the message is one line meant for the user."""


class LogprobsUnavailable(EndpointError):
    """The server gives no prompt log-probabilities, so log-prob probes cannot run on it."""


class _ReplyTooLarge(Exception):
    """A reply body went past MAX_REPLY_BYTES; it was not read further."""


class EndpointClient:
    """JSON requests to one OpenAI-compatible base URL, concurrent, with retries.

    The API key is read from the environment at each call and is only ever put in the
    Authorization header, never over plain http beyond loopback; it is masked in any
    message that quotes a server's reply. `api_key_env` "" sends no key; which variable
    may go to which endpoint is decided by `loading.endpoint_at`.
    """

    def __init__(self, base_url: str, api_key_env: str = "", *,
                 concurrency: int = 16, retries: int = 4, backoff_s: float = 1.0,
                 timeout_s: float = 120.0, what: str = "endpoint", key_option: str = "",
                 transport: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.attempts = retries + 1
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.what = what
        self.key_option = key_option  # the option naming the key variable, for a 401's hint
        self.transport = transport  # tests may hand httpx a transport
        self._failures_in_a_row = 0
        self._given_up = ""  # why no more requests are sent, once the endpoint is down

    def _key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._key():
            headers["Authorization"] = f"Bearer {self._key()}"
        return headers

    def _masked(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def _refusal(self) -> str:
        """Why nothing may be sent: a key over plain http to a host beyond loopback ("" if
        none). Endpoints are checked for this before a run; this guards every other use."""
        parts = urlsplit(self.base_url)
        if self._key() and parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            return (f"{self.what} {self.base_url} would send the key in ${self.api_key_env} "
                    f"over plain http to {parts.hostname}; nothing was sent")
        return ""

    def _no_key_hint(self, status: int) -> str:
        """For a 401 or 403 when no key was sent: how to send one."""
        if status not in (401, 403) or self._key():
            return ""
        if self.api_key_env:
            return f"; no API key was sent: ${self.api_key_env} is empty"
        if not self.key_option:
            return "; no API key was sent"
        return ("; no API key was sent: a key goes to a server other than the OpenAI API only "
                f"when its variable is named with {self.key_option} NAME")

    def get(self, path: str) -> Any:
        """One GET (e.g. /models), retried like any request."""
        return _run_coroutine(self._gather([("GET", path, None)], None, 1))[0]

    def post_all(self, path: str, bodies: Sequence[Mapping[str, Any]],
                 on_done: Callable[[int, Any], None] | None = None,
                 concurrency: int | None = None) -> list[Any]:
        """POST every body; each result is the reply's JSON or an EndpointError (in order).

        `on_done(index, result)` is called as each finishes, for progress bars.
        """
        calls = [("POST", path, body) for body in bodies]
        return _run_coroutine(self._gather(calls, on_done, concurrency or self.concurrency))

    async def _gather(self, calls: Sequence[tuple[str, str, Mapping[str, Any] | None]],
                      on_done: Callable[[int, Any], None] | None, concurrency: int
                      ) -> list[Any]:
        import httpx

        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency,
                              max_keepalive_connections=concurrency)
        refusal = self._refusal()
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers(),
                                     limits=limits, transport=self.transport) as http:
            async def one(index: int, method: str, path: str,
                          body: Mapping[str, Any] | None) -> Any:
                async with gate:
                    try:
                        # Checked as each request's turn comes: once the endpoint is taken
                        # as down, the requests still waiting are not sent.
                        if refusal or self._given_up:
                            raise EndpointError(refusal or self._given_up)
                        result: Any = await self._request(http, method, path, body)
                    except EndpointError as error:
                        result = error
                if on_done is not None:
                    on_done(index, result)
                return result

            return list(await asyncio.gather(
                *(one(i, method, path, body) for i, (method, path, body) in enumerate(calls))))

    async def _request(self, http: Any, method: str, path: str,
                       body: Mapping[str, Any] | None) -> Any:
        import httpx

        url = self.base_url + path
        problem = ""
        wait = 0.0
        for attempt in range(self.attempts):
            interrupted = _INTERRUPTED.get()
            if interrupted is not None and interrupted.is_set():  # Ctrl-C: send no more
                raise asyncio.CancelledError
            if attempt:
                # Full jitter keeps many clients from retrying in step.
                await asyncio.sleep(wait if wait >= 0 else
                                    random.uniform(0, self.backoff_s * 2 ** (attempt - 1)))
            wait = -1.0
            try:
                status, headers, content = await self._exchange(http, method, url, body)
            except httpx.TimeoutException:
                problem = f"no reply within {self.timeout_s:g} s"
                continue
            except httpx.TransportError as error:  # refused, reset, dropped mid-reply
                problem = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                continue
            except _ReplyTooLarge:
                # Not retried: a server that sends that much would likely send it again.
                problem = f"a reply over {MAX_REPLY_BYTES // 2**20} MiB"
                self._failed_for_good(problem)
                raise EndpointError(f"{self.what} {url} sent {problem}; it was not read "
                                    "further") from None
            text = content.decode("utf-8", errors="replace")
            if status in RETRY_STATUS:
                problem = f"HTTP {status}"
                wait = _retry_after(headers.get("retry-after"))
                continue
            if status >= 400:
                self._failures_in_a_row = 0  # the server is up: it answered this request
                # Masked before it is cut, so a key cut at the limit cannot leak in part.
                raise EndpointError(f"{self.what} {url} answered HTTP {status}: "
                                    f"{_one_line(self._masked(text))}{self._no_key_hint(status)}")
            try:
                reply = json.loads(content)
            except ValueError:
                problem = f"a reply that is not JSON ({_one_line(self._masked(text), 60)!r})"
                continue
            self._failures_in_a_row = 0
            return reply
        self._failed_for_good(problem)
        raise EndpointError(self._masked(
            f"{self.what} {url} failed after {self.attempts} attempt(s); last: {problem}"))

    async def _exchange(self, http: Any, method: str, url: str, body: Mapping[str, Any] | None
                        ) -> tuple[int, Mapping[str, str], bytes]:
        """One request: the reply's status, headers and body, read up to MAX_REPLY_BYTES
        (raises _ReplyTooLarge past it, without reading the rest)."""
        async with http.stream(method, url, json=body) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
                raise _ReplyTooLarge
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > MAX_REPLY_BYTES:
                    raise _ReplyTooLarge
            return response.status_code, response.headers, bytes(content)

    def _failed_for_good(self, problem: str) -> None:
        """Count a request that failed for good; enough in a row and the endpoint is down."""
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= FAILURES_IN_A_ROW and not self._given_up:
            self._given_up = self._masked(
                f"{self.what} {self.base_url} failed {FAILURES_IN_A_ROW} requests in a row "
                f"(last: {problem}); the rest were not sent")


def _retry_after(header: str | None) -> float:
    """Seconds from a Retry-After header (capped), or -1 for exponential backoff."""
    if header is None:
        return -1.0
    try:
        return min(max(float(header), 0.0), _MAX_RETRY_AFTER_S)
    except ValueError:
        return -1.0


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


# Set by _run_coroutine's caller on Ctrl-C; None where requests run in the caller's thread.
_INTERRUPTED: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "endpoint_interrupted", default=None)


def _run_coroutine(coroutine: Any) -> Any:
    """Run a coroutine to the end from synchronous code, even inside a running event loop.

    Inside a running loop it runs in a thread with a loop of its own. An interrupt of the
    caller (Ctrl-C) cancels it there and returns at once, without waiting for retries; the
    thread is a daemon, so it can never hold up the interpreter's exit either.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    outcome: dict[str, Any] = {}
    running: dict[str, Any] = {}
    started = threading.Event()

    interrupted = threading.Event()

    async def tracked() -> Any:
        running["loop"], running["task"] = asyncio.get_running_loop(), asyncio.current_task()
        _INTERRUPTED.set(interrupted)  # the requests' tasks inherit it
        started.set()
        return await coroutine

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(tracked())
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="endpoint-requests", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)  # short waits, so that an interrupt is taken at once
    except BaseException:
        # The flag stops any retry even where a library absorbs the cancellation.
        interrupted.set()
        if started.is_set():
            running["loop"].call_soon_threadsafe(running["task"].cancel)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def client_for(endpoint: Endpoint, *, concurrency: int, retries: int, timeout_s: float,
               what: str = "model endpoint") -> EndpointClient:
    return EndpointClient(endpoint.base_url, endpoint.api_key_env, concurrency=concurrency,
                          retries=retries, timeout_s=timeout_s, what=what,
                          key_option="--model-api-key-env")


class EndpointBackend:
    """Generation and log-prob scoring through an OpenAI-compatible server."""

    device = "endpoint"

    def __init__(self, endpoint: Endpoint, client: EndpointClient) -> None:
        self.endpoint = endpoint
        self.client = client
        self.logprobs_problem: str | None = None  # set once the server shows it has none

    def _messages(self, messages: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in messages]

    def generation_body(self, request: Request) -> dict[str, Any]:
        # One sample per request, with that sample's own seed: its text then does not depend
        # on which other samples are asked for (resumed runs, adaptive looks). Servers that
        # batch (vLLM, TGI) get their throughput from concurrent requests instead of `n`.
        return {
            "model": self.endpoint.model,
            "messages": self._messages(request.messages),
            "temperature": request.params.temperature,
            "max_tokens": request.params.max_new_tokens,
            "seed": request.sample_seed % 2**31,
        }

    def generate(self, requests: Sequence[Request],
                 on_done: Callable[[int, Any], None] | None = None
                 ) -> list[Completion | EndpointError]:
        """Completions in order; a request that failed for good is its EndpointError."""
        replies = self.client.post_all("/chat/completions",
                                       [self.generation_body(r) for r in requests], on_done)
        return [reply if isinstance(reply, EndpointError) else self._completion(reply, request)
                for request, reply in zip(requests, replies)]

    def _completion(self, reply: Any, request: Request) -> Completion | EndpointError:
        try:
            choice = reply["choices"][0]
            message = choice["message"]
            text = message.get("content")
            if text is None:  # the OpenAI API puts a declined request in `refusal`
                text = message.get("refusal") or ""
            usage = reply.get("usage") or {}
            return Completion(
                text=str(text),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                seed=request.sample_seed,
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
            return EndpointError(f"{self.client.what} {self.endpoint.base_url} sent a chat "
                                 "completion without choices[0].message "
                                 f"({type(error).__name__}: {error})")

    # ------------------------------------------------------------------ scoring

    def score(self, requests: Sequence[ScoreRequest]) -> list[Score | EndpointError]:
        """Summed log-probability of each continuation after its chat-templated prompt.

        Uses vLLM's extensions to chat completions: the continuation is sent as an unfinished
        assistant turn (`continue_final_message`) and `prompt_logprobs` gives each prompt
        token's log-probability. The prompt alone, sent the same way, says where the
        continuation's tokens begin. Raises LogprobsUnavailable on a server without them.
        """
        if self.logprobs_problem:
            raise LogprobsUnavailable(self.logprobs_problem)
        prompts = list(dict.fromkeys(r.messages for r in requests))
        bodies = [self._logprob_body(m, None) for m in prompts]
        bodies += [self._logprob_body(r.messages, r.continuation) for r in requests]
        replies = self.client.post_all("/chat/completions", bodies)
        prefix_tokens = {m: self._prompt_tokens(reply) for m, reply in zip(prompts, replies)}
        scores: list[Score | EndpointError] = []
        for request, reply in zip(requests, replies[len(prompts):]):
            prefix = prefix_tokens[request.messages]
            if isinstance(prefix, EndpointError):
                scores.append(prefix)
                continue
            tokens = self._prompt_tokens(reply)
            if isinstance(tokens, EndpointError):
                scores.append(tokens)
                continue
            # Where the two tokenizations part: normally the prompt's own length, earlier if
            # the continuation merged with the prompt's last token.
            start = 0
            while (start < min(len(prefix), len(tokens))
                   and prefix[start][0] == tokens[start][0]):
                start += 1
            continuation = tokens[start:]
            scores.append(Score(sum(logprob for _, logprob in continuation), len(continuation)))
        return scores

    def _logprob_body(self, messages: Sequence[tuple[str, str]], continuation: str | None
                      ) -> dict[str, Any]:
        turns = self._messages(messages)
        if continuation is not None:
            turns.append({"role": "assistant", "content": continuation})
        return {
            "model": self.endpoint.model, "messages": turns, "max_tokens": 1,
            "temperature": 0, "prompt_logprobs": 0,
            "add_generation_prompt": continuation is None,
            "continue_final_message": continuation is not None,
        }

    def _prompt_tokens(self, reply: Any) -> list[tuple[str, float]] | EndpointError:
        """(token id, log-probability) of each prompt token after the first."""
        if isinstance(reply, EndpointError):
            text = str(reply).lower()
            if any(name in text for name in _LOGPROB_FIELDS) and any(
                    word in text for word in _REJECTION_WORDS):
                self._no_logprobs(f"its reply to a prompt_logprobs request: {reply}")
            return reply
        entries = reply.get("prompt_logprobs") if isinstance(reply, dict) else None
        if not isinstance(entries, list):
            self._no_logprobs("its replies have no prompt_logprobs")
        tokens: list[tuple[str, float]] = []
        try:
            for entry in entries[1:]:  # type: ignore[index]
                # With prompt_logprobs=0 each entry holds the prompt token alone (vLLM puts
                # it first in any case).
                token, value = next(iter(entry.items()))
                logprob = value["logprob"] if isinstance(value, Mapping) else value
                tokens.append((str(token), float(logprob)))
        except (AttributeError, KeyError, TypeError, ValueError, StopIteration) as error:
            return EndpointError(f"{self.client.what} {self.endpoint.base_url} sent malformed "
                                 f"prompt_logprobs ({type(error).__name__}: {error})")
        return tokens

    def _no_logprobs(self, detail: str) -> None:
        self.logprobs_problem = (
            f"{self.endpoint.spec} gives no prompt log-probabilities ({detail}); log-prob "
            "probes need vLLM's prompt_logprobs (serve the model with vLLM, or test the "
            "checkpoint locally)")
        raise LogprobsUnavailable(self.logprobs_problem)

    # ------------------------------------------------------------------ identity

    def metadata(self) -> dict[str, Any]:
        """What the server says about the model (GET /models), identity fields only."""
        listing = self.client.get("/models")
        if isinstance(listing, EndpointError):
            if "HTTP 404" in str(listing):  # some servers have no model list
                return {"id": self.endpoint.model}
            raise listing
        models = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(models, list):
            return {"id": self.endpoint.model}
        for entry in models:
            if isinstance(entry, dict) and entry.get("id") == self.endpoint.model:
                return {k: entry[k] for k in _METADATA_FIELDS if entry.get(k) is not None}
        served = ", ".join(str(m.get("id")) for m in models if isinstance(m, dict))[:300]
        raise EndpointError(f"{self.endpoint.base_url} does not serve {self.endpoint.model!r}; "
                            f"it serves: {served or 'nothing it lists'}")

    def greedy_probe(self) -> list[str]:
        """Fixed prompts answered at temperature 0, one at a time."""
        bodies = [{"model": self.endpoint.model, "messages": [{"role": "user", "content": p}],
                   "temperature": 0, "max_tokens": FINGERPRINT_TOKENS, "seed": 0}
                  for p in FINGERPRINT_PROMPTS]
        texts = []
        for reply in self.client.post_all("/chat/completions", bodies, concurrency=1):
            if isinstance(reply, EndpointError):
                raise reply
            try:
                texts.append(str(reply["choices"][0]["message"]["content"] or ""))
            except (KeyError, IndexError, TypeError) as error:
                raise EndpointError(f"{self.endpoint.base_url} sent a chat completion without "
                                    f"choices[0].message ({type(error).__name__})") from None
        return texts

    def fingerprint(self, mode: str = "probe") -> str:
        """Base URL + model id + server metadata (+ greedy answers to fixed prompts, in
        `probe` mode).

        Weaker than a weight hash: a server may swap the weights behind a name, and only a
        changed id, metadata or greedy answer shows it. The base URL keeps two servers that
        serve one name with the same metadata from sharing stored answers.
        """
        payload: dict[str, Any] = {"kind": "endpoint", "base_url": self.endpoint.base_url,
                                   "model": self.endpoint.model, "metadata": self.metadata()}
        if mode == "probe":
            payload["greedy"] = self.greedy_probe()
        return stable_hash(payload)
