"""Values that cross role boundaries: prompts, requests, completions, log-prob queries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TypeVar

T = TypeVar("T")

Message = tuple[str, str]
"""A chat message as (role, content); tuples keep prompts hashable."""

MessagesLike = str | Sequence[Mapping[str, str]] | Sequence[Message]


def normalize_messages(prompt: MessagesLike, system: str | None = None) -> tuple[Message, ...]:
    """Turn a user string or a list of chat messages into a tuple of (role, content) pairs."""
    if isinstance(prompt, str):
        messages: list[Message] = [("user", prompt)]
    else:
        messages = []
        for message in prompt:
            if isinstance(message, Mapping):
                messages.append((str(message["role"]), str(message["content"])))
            else:
                role, content = message
                messages.append((str(role), str(content)))
    if system is not None:
        if messages and messages[0][0] == "system":
            raise ValueError("both a system argument and a system message were given")
        messages.insert(0, ("system", system))
    if not messages or messages[-1][0] != "user":
        raise ValueError("a prompt must end with a user message")
    return tuple(messages)


def stable_hash(payload: object) -> str:
    """A hex digest of a JSON-serialisable value that does not depend on dict order."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: a lone surrogate (JSON can carry one) must not crash a hash
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def valid_text(text: str) -> str:
    """`text` as valid Unicode: lone surrogates, which a server's JSON can carry ("\\ud800")
    but no file or database can store, become U+FFFD; pairs become their character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


@dataclass(frozen=True)
class Prompt:
    """What a test wants a model to answer: messages, how many samples, optional overrides.

    `temperature` and `max_new_tokens` left as None take the run's settings.
    """

    messages: tuple[Message, ...]
    samples: int = 1
    temperature: float | None = None
    max_new_tokens: int | None = None
    label: str = ""

    @classmethod
    def user(
        cls,
        text: str,
        *,
        system: str | None = None,
        samples: int = 1,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        label: str = "",
    ) -> Prompt:
        return cls(normalize_messages(text, system), samples, temperature, max_new_tokens, label)

    @classmethod
    def chat(cls, messages: MessagesLike, **kwargs: object) -> Prompt:
        return cls(normalize_messages(messages), **kwargs)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")

    def __str__(self) -> str:
        return self.label or self.messages[-1][1][:40]

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass(frozen=True)
class GenerationParams:
    """Everything besides the messages that changes a sampled answer."""

    temperature: float
    max_new_tokens: int
    seed: int


@dataclass(frozen=True)
class Request:
    """One sample of one prompt: the unit the engine deduplicates, batches and caches."""

    messages: tuple[Message, ...]
    params: GenerationParams
    sample_index: int

    @property
    def key(self) -> str:
        return stable_hash(
            {
                "messages": [list(m) for m in self.messages],
                "temperature": self.params.temperature,
                "max_new_tokens": self.params.max_new_tokens,
                "seed": self.params.seed,
                "sample": self.sample_index,
            }
        )

    @property
    def sample_seed(self) -> int:
        """A seed that depends only on this request, so its text does not depend on its batch."""
        return int(self.key[:15], 16)


@dataclass(frozen=True)
class Completion:
    """A generated answer."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_new_tokens)
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", valid_text(self.text))

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Completion:
        return cls(
            text=str(data["text"]),
            prompt_tokens=int(data["prompt_tokens"]),  # type: ignore[call-overload]
            completion_tokens=int(data["completion_tokens"]),  # type: ignore[call-overload]
            finish_reason=str(data["finish_reason"]),
            seed=int(data["seed"]),  # type: ignore[call-overload]
        )


@dataclass(frozen=True)
class Probe:
    """A log-probability query: how likely is each continuation as the answer to a prompt."""

    prompt: Prompt
    continuations: tuple[str, ...]
    label: str = ""

    @classmethod
    def of(cls, prompt: Prompt | str, *continuations: str, label: str = "") -> Probe:
        as_prompt = prompt if isinstance(prompt, Prompt) else Prompt.user(prompt)
        if not continuations:
            raise ValueError("a probe needs at least one continuation")
        return cls(as_prompt, tuple(continuations), label)

    def __str__(self) -> str:
        return self.label or str(self.prompt)

    def requests(self) -> list[ScoreRequest]:
        return [ScoreRequest(self.prompt.messages, c) for c in self.continuations]


@dataclass(frozen=True)
class ScoreRequest:
    """One (prompt, continuation) pair to score."""

    messages: tuple[Message, ...]
    continuation: str

    @property
    def key(self) -> str:
        return stable_hash(
            {"messages": [list(m) for m in self.messages], "continuation": self.continuation}
        )


@dataclass(frozen=True)
class Score:
    """Summed log-probability of a continuation and its token count (for length normalising)."""

    logprob: float
    tokens: int

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(self.tokens, 1)

    def to_dict(self) -> dict[str, object]:
        return {"logprob": self.logprob, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Score:
        return cls(float(data["logprob"]), int(data["tokens"]))  # type: ignore[arg-type, call-overload]


@dataclass
class RunCounters:
    """What the engine did in a run: shown in the terminal summary and the run results."""

    generated: int = 0
    generation_cache_hits: int = 0
    scored: int = 0
    score_cache_hits: int = 0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    model_loads: int = 0
    judged: int = 0
    judgment_cache_hits: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int | float]:
        """Every count (not `extra`), as the run results and xdist workers carry them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}

    def merge(self, other: Mapping[str, object]) -> None:
        """Add another process's counts (`as_dict` of its counters)."""
        for name, value in self.as_dict().items():
            setattr(self, name, value + type(value)(other.get(name, 0)))  # type: ignore[arg-type, call-overload]


def expand(prompt: Prompt, defaults: GenerationParams) -> list[Request]:
    """The requests for all samples of a prompt, under the run's defaults."""
    params = GenerationParams(
        temperature=defaults.temperature if prompt.temperature is None else prompt.temperature,
        max_new_tokens=defaults.max_new_tokens
        if prompt.max_new_tokens is None
        else prompt.max_new_tokens,
        seed=defaults.seed,
    )
    return [Request(prompt.messages, params, index) for index in range(prompt.samples)]


def iter_inputs(values: Iterable[object]) -> Iterable[Prompt | Probe]:
    """Find prompts and probes among parametrize values (also inside lists and tuples)."""
    for value in values:
        if isinstance(value, (Prompt, Probe)):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from iter_inputs(value)
        elif callable(model_inputs := getattr(value, "model_inputs", None)):  # a suite case
            yield from iter_inputs(model_inputs())


def in_batches(items: Iterable[T], size: int, same: Callable[[T], object] = lambda _: None
               ) -> Iterator[list[T]]:
    """Consecutive items in batches of at most `size`; a batch holds only items for which
    `same` gives one value (e.g. one set of generation params)."""
    batch: list[T] = []
    for item in items:
        if batch and (len(batch) >= size or same(item) != same(batch[0])):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch
