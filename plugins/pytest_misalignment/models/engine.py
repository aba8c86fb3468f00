"""The engine: deduplicate requests, skip what the store has, run the rest in length-sorted
batches with a progress bar, and write each batch to the store as soon as it is done."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from ..settings import RunSettings
from .client import EndpointError
from .endpoint import EndpointBackend, LogprobsUnavailable, client_for
from .fingerprints import FileHasher, fingerprint
from .loading import load_model_and_tokenizer, resolve_device, resolve_dtype, weight_bytes_of
from .specs import Endpoint, ModelSource
from .store import Store
from .values import (
    Completion,
    GenerationParams,
    Probe,
    Prompt,
    Request,
    RunCounters,
    Score,
    ScoreRequest,
    expand,
)

if TYPE_CHECKING:
    from .backend import TransformersBackend

K = TypeVar("K", Request, ScoreRequest)
ProgressStream = Callable[[], contextlib.AbstractContextManager[IO[str] | None]]


class Backend(Protocol):
    """What the engine runs a model's work on: a loaded checkpoint (`TransformersBackend`)
    or a served model (`EndpointBackend`). Results come back in the requests' order; a
    request that failed for good is its EndpointError (a local model raises instead)."""

    device: str

    @property
    def batch_size(self) -> int:
        """Requests per batch (and per store write) when --batch-size is auto."""

    def batches(self, requests: Sequence[K], size: int) -> list[list[K]]:
        """The requests in batches of at most `size`, in the order cheapest to run."""

    def generate(self, requests: Sequence[Request], on_done: Callable[[int], None] | None
                 = None) -> Sequence[Completion | EndpointError]:
        """One batch's answers; `on_done(n)` as n of them finish."""

    def score(self, requests: Sequence[ScoreRequest], on_done: Callable[[int], None] | None
              = None) -> Sequence[Score | EndpointError]:
        """One batch's log-probability scores; `on_done(n)` as n of them finish."""


@contextlib.contextmanager
def stderr_progress() -> Iterator[IO[str] | None]:
    yield sys.stderr


@dataclass(frozen=True)
class Share:
    """This process's part of a run's work when several workers split it (xdist)."""

    index: int = 0
    count: int = 1  # 0: owns nothing (only read what others stored)

    NOTHING: ClassVar[Share]

    def owns(self, key: str) -> bool:
        if self.count == 0:
            return False
        return self.count == 1 or int(key[:8], 16) % self.count == self.index


Share.NOTHING = Share(0, 0)


class ModelRunner:
    """One checkpoint in a run: its fingerprint, its lazily loaded backend, its cached results."""

    def __init__(
        self,
        checkpoint: ModelSource,
        settings: RunSettings,
        store: Store,
        *,
        role: str = "model",
        worker_index: int = 0,
        progress: ProgressStream = stderr_progress,
        counters: RunCounters | None = None,
        known_fingerprint: str | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.settings = settings
        self.store = store
        self.role = role
        self.worker_index = worker_index
        self.progress = progress
        self.counters = counters if counters is not None else RunCounters()
        self._hasher = FileHasher(store if store.persistent else None)
        # An endpoint's fingerprint costs requests: xdist workers get the controller's.
        self._fingerprint: str | None = known_fingerprint
        self._backend: TransformersBackend | EndpointBackend | None = None
        self._completions: dict[str, Completion] = {}
        self._scores: dict[str, Score] = {}
        self._cache_namespace: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if isinstance(self.checkpoint, Endpoint):
                backend = self.backend()
                assert isinstance(backend, EndpointBackend)
                self._fingerprint = backend.fingerprint(self.settings.endpoint_fingerprint)
            else:
                self._fingerprint = fingerprint(self.checkpoint, self._hasher)
        return self._fingerprint

    @property
    def cache_namespace(self) -> str:
        """What the store files this model's answers and scores under: its fingerprint, and
        for a local model the dtype it computes in (bf16 and float32 answer differently).
        Known without loading the model."""
        if self._cache_namespace is None:
            if isinstance(self.checkpoint, Endpoint):
                self._cache_namespace = self.fingerprint
            else:
                # The dtype depends on the kind of device only (a CPU, or CUDA), not on which.
                dtype = resolve_dtype(self.settings.dtype,
                                      resolve_device(self.settings.device, self.worker_index))
                self._cache_namespace = (f"{self.fingerprint}:"
                                         f"{str(dtype).removeprefix('torch.')}")
        return self._cache_namespace

    @property
    def is_endpoint(self) -> bool:
        return isinstance(self.checkpoint, Endpoint)

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def default_params(self) -> GenerationParams:
        return GenerationParams(self.settings.temperature, self.settings.max_new_tokens,
                                self.settings.seed)

    def backend(self) -> TransformersBackend | EndpointBackend:
        """Load the model on first need: a fully cached run never loads it."""
        if self._backend is None and isinstance(self.checkpoint, Endpoint):
            self._backend = EndpointBackend(self.checkpoint, client_for(
                self.checkpoint, concurrency=self.settings.concurrency,
                retries=self.settings.request_retries, timeout_s=self.settings.request_timeout,
                what=f"{self.role} endpoint"))
        if self._backend is None:
            from .backend import TransformersBackend

            assert not isinstance(self.checkpoint, Endpoint)
            device = resolve_device(self.settings.device, self.worker_index,
                                    weight_bytes_of(self.checkpoint))
            model, tokenizer = load_model_and_tokenizer(self.checkpoint, self.settings, device,
                                                        self._hasher)
            self._backend = TransformersBackend(
                model, tokenizer, device, name=f"{self.role} {self.checkpoint.display_name}",
                warn=self._warn)
            self.counters.model_loads += 1
        return self._backend

    def release(self) -> None:
        """Drop the loaded weights (what is stored stays); the next need loads them again."""
        if self._backend is None or isinstance(self._backend, EndpointBackend):
            return
        device = self._backend.device
        self._backend = None
        import gc

        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _warn(self, text: str) -> None:
        with self.progress() as stream:
            print(text, file=stream or sys.stderr)

    def batch_size(self) -> int:
        return self.settings.batch_size or self.backend().batch_size

    # ------------------------------------------------------------------ generation

    def requests_for(self, prompts: Sequence[Prompt]) -> list[Request]:
        return [r for prompt in prompts for r in expand(prompt, self.default_params)]

    def _missing(self, kind: str, requests: Sequence[K], memo: dict[str, Any],
                 decode: Callable[[dict], Any], share: Share) -> tuple[list[K], int]:
        """Fill the memo from the store; return what this process must compute, and how
        many were found in the store (for the cache-hit counters)."""
        unique = {r.key: r for r in requests if r.key not in memo}
        if not unique:
            return [], 0
        found = self.store.get_many(kind, self.cache_namespace, unique)
        memo.update((key, decode(value)) for key, value in found.items())
        return [r for key, r in unique.items() if key not in found and share.owns(key)], len(found)

    def complete(self, requests: Sequence[Request], share: Share = Share()) -> list[Completion]:
        """Completions for these requests, in order; generates only what is not stored.

        With a share, only this worker's part is generated and the rest is read if present.
        """
        missing, found = self._missing("completion", requests, self._completions,
                                       Completion.from_dict, share)
        self.counters.generation_cache_hits += found
        if missing:
            started = time.perf_counter()
            tokens = self._run("completion", missing, self._completions)
            self.counters.generated_tokens += tokens
            self.counters.generation_seconds += time.perf_counter() - started
        return [self._completions[r.key] for r in requests if r.key in self._completions]

    def score(self, requests: Sequence[ScoreRequest], share: Share = Share()) -> list[Score]:
        """Log-probability scores for these (prompt, continuation) pairs, in order."""
        missing, found = self._missing("score", requests, self._scores, Score.from_dict, share)
        self.counters.score_cache_hits += found
        if missing:
            self._run("score", missing, self._scores)
        return [self._scores[r.key] for r in requests if r.key in self._scores]

    def _run(self, kind: str, requests: list[K], memo: dict[str, Any]) -> int:
        """Compute these requests on the backend, batch by batch, storing each batch as soon
        as it is done; return the tokens generated. Every result received is stored before
        a failure is raised, so a rerun asks only for the rest."""
        backend: Backend = self.backend()
        generating = kind == "completion"
        # Either backend method: the batch is of Requests when generating, else of pairs.
        compute: Callable[..., Sequence[Any]] = backend.generate if generating else backend.score
        action, unit = ("generating", "answer") if generating else ("scoring", "pair")
        started, tokens, failed = time.perf_counter(), 0, 0
        failure: EndpointError | None = None
        with self.progress() as stream, _progress_bar(
            stream, len(requests), f"{action} ({self.role})", unit
        ) as bar:
            advance = (lambda n: None) if bar is None else bar.update
            for batch in backend.batches(requests, self.batch_size()):
                results = compute(batch, advance)
                received = {r.key: result for r, result in zip(batch, results)
                            if not isinstance(result, EndpointError)}
                self.store.put_many(kind, self.cache_namespace,
                                    {key: result.to_dict() for key, result in received.items()})
                memo.update(received)
                if generating:
                    self.counters.generated += len(received)
                    tokens += sum(c.completion_tokens for c in received.values())
                    if bar is not None:
                        elapsed = max(time.perf_counter() - started, 1e-9)
                        bar.set_postfix_str(f"{tokens / elapsed:.0f} tok/s", refresh=False)
                else:
                    self.counters.scored += len(received)
                errors = [r for r in results if isinstance(r, EndpointError)]
                failed += len(errors)
                failure = failure or (errors[0] if errors else None)
                if failure is not None:
                    break  # the server is failing: stop asking, keep what came back
        if failure is not None:
            what = "" if generating else "scoring "
            raise EndpointError(f"{failed} {what}request(s) failed ({len(memo)} {unit}s are "
                                f"stored; a rerun asks only for the rest): {failure}")
        return tokens

    # ------------------------------------------------------------------ whole plans

    def prefetch(self, prompts: Sequence[Prompt], probes: Sequence[Probe],
                 share: Share = Share()) -> None:
        """Run everything a session declared, before its first test needs any of it.

        On an endpoint without log-probabilities the probes are left out (and
        `logprobs_problem` says why), so that tests that need them can skip.
        """
        self.complete(self.requests_for(prompts), share)
        pairs = [r for probe in probes for r in probe.requests()]
        try:
            if pairs and self.is_endpoint:
                self.score(pairs[:1])  # every worker learns whether the server has them
            self.score(pairs, share)
        except LogprobsUnavailable:
            pass  # recorded in logprobs_problem

    @property
    def logprobs_problem(self) -> str | None:
        """Why this model cannot be scored (an endpoint without log-probs), else None."""
        if not isinstance(self._backend, EndpointBackend):
            return None
        return self._backend.logprobs_problem


@contextlib.contextmanager
def progress_counter(progress: ProgressStream, total: int, description: str, unit: str
                     ) -> Iterator[Callable[[int], None]]:
    """A progress bar on the run's progress stream, as a function that advances it."""
    with progress() as stream, _progress_bar(stream, total, description, unit) as bar:
        yield (lambda n: None) if bar is None else bar.update


@contextlib.contextmanager
def _progress_bar(stream: IO[str] | None, total: int, description: str, unit: str
                  ) -> Iterator[Any]:
    if stream is None:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit=unit, file=stream, dynamic_ncols=True,
               mininterval=0.5 if stream.isatty() else 5.0, leave=True)
    try:
        yield bar
    finally:
        bar.close()
