"""The engine: deduplicate requests, skip what the store has, run the rest in length-sorted
batches with a progress bar, and write each batch to the store as soon as it is done."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, ClassVar, TypeVar

from ..settings import RunSettings
from .client import EndpointError
from .endpoint import EndpointBackend, LogprobsUnavailable, client_for
from .fingerprints import FileHasher, fingerprint
from .loading import load_model_and_tokenizer, resolve_device, resolve_dtype, weight_bytes_of
from .specs import CheckpointError, Endpoint, ModelSource
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

T = TypeVar("T")
K = TypeVar("K", Request, ScoreRequest)
CPU_BATCH_SIZE = 64  # measured: batch 64 gives ~1.25x the tokens/s of batch 32 on 2 cores
CUDA_BATCH_SIZE = 256
# Requests per store write for an endpoint, in units of --concurrency: a killed run loses at
# most this many answers, and the server always has a full queue.
ENDPOINT_BATCH_ROUNDS = 4
ProgressStream = Callable[[], contextlib.AbstractContextManager[IO[str] | None]]


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
        self._backend: Any = None
        self._completions: dict[str, Completion] = {}
        self._scores: dict[str, Score] = {}
        self._cache_namespace: str | None = None
        self._warned_of_context = False

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if isinstance(self.checkpoint, Endpoint):
                self._fingerprint = self.backend().fingerprint(
                    self.settings.endpoint_fingerprint)
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

    def backend(self) -> Any:
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
            self._backend = TransformersBackend(model, tokenizer, device)
            self.counters.model_loads += 1
        return self._backend

    def batch_size(self) -> int:
        if self.settings.batch_size:
            return self.settings.batch_size
        if self.is_endpoint:
            return self.settings.concurrency * ENDPOINT_BATCH_ROUNDS
        return CUDA_BATCH_SIZE if str(self.backend().device).startswith("cuda") else CPU_BATCH_SIZE

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
            self._generate(missing)
        return [self._completions[r.key] for r in requests if r.key in self._completions]

    def _generate(self, requests: list[Request]) -> None:
        if self.is_endpoint:
            self._generate_remote(requests)
            return
        backend = self.backend()
        with_ids = [(r, backend.prompt_ids(r.messages)) for r in requests]
        self._check_context(with_ids, backend.context_length)
        # Same params batch together; within them, similar lengths waste the least padding.
        with_ids.sort(key=lambda pair: (pair[0].params.temperature,
                                        pair[0].params.max_new_tokens, len(pair[1])))
        batches = list(_batches(with_ids, self.batch_size(),
                                same=lambda pair: pair[0].params))
        started, tokens = time.perf_counter(), 0
        with self.progress() as stream, _progress_bar(
            stream, len(requests), f"generating ({self.role})", "answer"
        ) as bar:
            for batch in batches:
                completions = backend.generate([r for r, _ in batch], [ids for _, ids in batch])
                self.store.put_many("completion", self.cache_namespace,
                                    {r.key: c.to_dict() for (r, _), c in zip(batch, completions)})
                for (request, _), completion in zip(batch, completions):
                    self._completions[request.key] = completion
                tokens += sum(c.completion_tokens for c in completions)
                elapsed = time.perf_counter() - started
                self.counters.generated += len(batch)
                if bar is not None:
                    bar.set_postfix_str(f"{tokens / max(elapsed, 1e-9):.0f} tok/s", refresh=False)
                    bar.update(len(batch))
        self.counters.generated_tokens += tokens
        self.counters.generation_seconds += time.perf_counter() - started

    def _check_context(self, with_ids: Sequence[tuple[Request, Sequence[int]]],
                       context: int | None) -> None:
        """Refuse a prompt that leaves no room for an answer in the model's context; say once
        when answers will stop at the context's end, short of their max_new_tokens (the
        backend stops them there rather than run past the positions the model knows)."""
        if context is None or not with_ids:
            return
        spec = self.checkpoint.display_name
        longest = max(len(ids) for _, ids in with_ids)
        if longest >= context:
            raise CheckpointError(f"{self.role} {spec}: a prompt of {longest} tokens fills the "
                                  f"model's context of {context} tokens; no answer fits")
        cut = [r.params.max_new_tokens for r, ids in with_ids
               if len(ids) + r.params.max_new_tokens > context]
        if cut and not self._warned_of_context:
            self._warned_of_context = True
            with self.progress() as stream:
                print(f"warning: {self.role} {spec}: answers stop at the model's context of "
                      f"{context} tokens (prompt included), short of max_new_tokens={max(cut)}",
                      file=stream or sys.stderr)

    def _generate_remote(self, requests: list[Request]) -> None:
        """Generate through an endpoint; every answer received is stored before a failure
        is raised, so a rerun asks only for the rest."""
        backend = self.backend()
        started, tokens = time.perf_counter(), 0
        failure: EndpointError | None = None
        failed = 0
        with progress_counter(self.progress, len(requests), f"generating ({self.role})",
                              "answer") as advance:
            for batch in _batches(requests, self.batch_size(), same=lambda r: None):
                results = backend.generate(batch, on_done=lambda *_: advance(1))
                received = {r.key: c for r, c in zip(batch, results)
                            if isinstance(c, Completion)}
                self.store.put_many("completion", self.cache_namespace,
                                    {key: c.to_dict() for key, c in received.items()})
                self._completions.update(received)
                self.counters.generated += len(received)
                tokens += sum(c.completion_tokens for c in received.values())
                errors = [c for c in results if isinstance(c, EndpointError)]
                failed += len(errors)
                failure = failure or (errors[0] if errors else None)
                if failure is not None:
                    break  # the server is failing: stop asking, keep what came back
        self.counters.generated_tokens += tokens
        self.counters.generation_seconds += time.perf_counter() - started
        if failure is not None:
            raise EndpointError(f"{failed} request(s) failed ({len(self._completions)} answers "
                                f"are stored; a rerun asks only for the rest): {failure}")

    # ------------------------------------------------------------------ scoring

    def score(self, requests: Sequence[ScoreRequest], share: Share = Share()) -> list[Score]:
        """Log-probability scores for these (prompt, continuation) pairs, in order."""
        missing, found = self._missing("score", requests, self._scores, Score.from_dict, share)
        self.counters.score_cache_hits += found
        if missing:
            self._score(missing)
        return [self._scores[r.key] for r in requests if r.key in self._scores]

    def _score(self, requests: list[ScoreRequest]) -> None:
        if self.is_endpoint:
            self._score_remote(requests)
            return
        backend = self.backend()
        with_ids = sorted(((r, backend.prompt_ids(r.messages)) for r in requests),
                          key=lambda pair: len(pair[1]) + len(pair[0].continuation) // 4)
        batches = list(_batches(with_ids, self.batch_size(), same=lambda pair: None))
        with self.progress() as stream, _progress_bar(
            stream, len(requests), f"scoring ({self.role})", "pair"
        ) as bar:
            for batch in batches:
                scores = backend.score([r for r, _ in batch], [ids for _, ids in batch])
                self.store.put_many("score", self.cache_namespace,
                                    {r.key: s.to_dict() for (r, _), s in zip(batch, scores)})
                for (request, _), score in zip(batch, scores):
                    self._scores[request.key] = score
                self.counters.scored += len(batch)
                if bar is not None:
                    bar.update(len(batch))

    def _score_remote(self, requests: list[ScoreRequest]) -> None:
        backend = self.backend()
        with progress_counter(self.progress, len(requests), f"scoring ({self.role})",
                              "pair") as advance:
            for batch in _batches(requests, self.batch_size(), same=lambda r: None):
                results = backend.score(batch)
                received = {r.key: s for r, s in zip(batch, results) if isinstance(s, Score)}
                self.store.put_many("score", self.cache_namespace,
                                    {key: s.to_dict() for key, s in received.items()})
                self._scores.update(received)
                self.counters.scored += len(received)
                advance(len(batch))
                errors = [s for s in results if isinstance(s, EndpointError)]
                if errors:
                    raise EndpointError(f"{len(errors)} scoring request(s) failed: {errors[0]}")

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
        if self._backend is None or not self.is_endpoint:
            return None
        problem: str | None = self._backend.logprobs_problem
        return problem


def _batches(items: list[T], size: int, same: Callable[[T], object]) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        if batch and (len(batch) >= size or same(item) != same(batch[0])):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


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
