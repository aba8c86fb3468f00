"""A model behind an OpenAI-compatible API as a backend: vLLM, TGI, llama.cpp, OpenAI.

Requests go out concurrently (bounded) from an async httpx client. A 429, a 5xx, a timeout,
a dropped connection or a reply that is not JSON is retried with exponential backoff (or
the server's Retry-After); after the last try the request ends in an `EndpointError` that
says what happened. Nothing a server does can turn into an answer we did not receive.
A reply is read up to MAX_REPLY_BYTES, and after FAILURES_IN_A_ROW requests failed for good
in a row the endpoint is taken as down: the requests not yet sent end at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .client import EndpointClient, EndpointError
from .specs import Endpoint
from .values import Completion, Request, Score, ScoreRequest, in_batches, stable_hash

K = TypeVar("K", Request, ScoreRequest)
# Requests per batch (and store write), in units of --concurrency: a killed run loses at
# most this many answers, and the server always has a full queue.
BATCH_ROUNDS = 4

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


class LogprobsUnavailable(EndpointError):
    """The server gives no prompt log-probabilities, so log-prob probes cannot run on it."""


def client_for(endpoint: Endpoint, *, concurrency: int, retries: int, timeout_s: float,
               what: str = "model endpoint") -> EndpointClient:
    return EndpointClient(endpoint.base_url, endpoint.api_key_env, concurrency=concurrency,
                          retries=retries, timeout_s=timeout_s, what=what,
                          key_option="--model-api-key-env")


class EndpointBackend:
    """Generation and log-prob scoring through an OpenAI-compatible server (an engine
    `Backend`)."""

    device = "endpoint"

    def __init__(self, endpoint: Endpoint, client: EndpointClient) -> None:
        self.endpoint = endpoint
        self.client = client
        self.logprobs_problem: str | None = None  # set once the server shows it has none

    @property
    def batch_size(self) -> int:
        return self.client.concurrency * BATCH_ROUNDS

    def batches(self, requests: Sequence[K], size: int) -> list[list[K]]:
        """The requests in their own order: a server batches what is in flight itself."""
        return list(in_batches(requests, size))

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
                 on_done: Callable[[int], None] | None = None
                 ) -> list[Completion | EndpointError]:
        """Completions in order; a request that failed for good is its EndpointError.
        `on_done(1)` as each reply arrives."""
        replies = self.client.post_all(
            "/chat/completions", [self.generation_body(r) for r in requests],
            None if on_done is None else lambda *_: on_done(1))
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

    def score(self, requests: Sequence[ScoreRequest],
              on_done: Callable[[int], None] | None = None) -> list[Score | EndpointError]:
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
        if on_done is not None:
            on_done(len(requests))
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
