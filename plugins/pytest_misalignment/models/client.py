"""JSON requests to an OpenAI-compatible server: concurrent, retried with backoff, bounded
in size, given up on after failures in a row, interruptible with Ctrl-C. The API key goes
only in the Authorization header."""

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

from .specs import is_loopback

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


_MAX_RETRY_AFTER_S = 60.0


# A reply is read up to this size: a broken or hostile server could send gigabytes.
MAX_REPLY_BYTES = 16 * 2**20


# Requests that failed for good (every retry spent) one after another before the endpoint
# is taken as down; without this a down endpoint costs every request its retry budget.
FAILURES_IN_A_ROW = 8


class EndpointError(Exception):
    """An endpoint request failed for good; the message is one line meant for the user."""


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
            if attempt:
                # Full jitter keeps many clients from retrying in step.
                await asyncio.sleep(wait if wait >= 0 else
                                    random.uniform(0, self.backoff_s * 2 ** (attempt - 1)))
            # Checked just before each send: a cancellation can be absorbed on its way.
            interrupted = _INTERRUPTED.get()
            if interrupted is not None and interrupted.is_set():  # Ctrl-C: send no more
                raise asyncio.CancelledError
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
