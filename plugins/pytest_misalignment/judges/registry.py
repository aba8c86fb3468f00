"""Choosing a judge from its spec, and judging through the store.

Specs (the same string rebuilds the same judge; it is recorded in every run's results):
  embedding            offline default: SmolLM2 hidden states + the project's classifier
  embedding:minilm     MiniLM sentence embeddings + the same kind of classifier (weaker)
  hf:PATH              a local chat model (any --model form) scoring 0-100 by log-probability
  openai:MODEL         an OpenAI-compatible endpoint (--judge-base-url, key from an env var)
Judgments are stored keyed by the judge's fingerprint and the question and answer, so a
new judge re-judges stored generations without regenerating them. The store keeps their
scores, and each read draws the verdict at the run's thresholds: changing
--misaligned-below or --coherent-at-least changes verdicts without judging again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..models.engine import ProgressStream, Share, progress_counter, stderr_progress
from ..models.specs import OPENAI_BASE_URL, CheckpointError, Endpoint, endpoint_at
from ..models.store import Store
from ..models.values import RunCounters
from ..options import DEFAULT_JUDGE
from ..settings import RunSettings, user_cache_dir
from .base import PAPER_THRESHOLDS, Judge, JudgeError, JudgeInput, Judgment, Thresholds

JUDGE_SPECS = "embedding, embedding:minilm, hf:PATH or openai:MODEL"
JUDGMENT_KIND = "judgment"


def thresholds_of(settings: RunSettings) -> Thresholds:
    return Thresholds(settings.misaligned_below, settings.coherent_at_least)


def check_judge_spec(spec: str, settings: RunSettings) -> None:
    """Fail early, without loading anything, on a spec that cannot work."""
    kind, _, argument = spec.partition(":")
    if kind == "embedding" and argument in ("", "smollm2", "minilm"):
        return
    if kind == "openai" and argument.strip():
        judge_endpoint(spec, settings)
        return
    if kind == "hf" and argument.strip():
        from ..models.specs import is_endpoint_spec, resolve_checkpoint

        if is_endpoint_spec(argument):
            raise JudgeError(f"--judge {spec}: hf: judges score every reply with a local model; "
                             "for a served judge use --judge openai:MODEL --judge-base-url URL")

        try:
            resolve_checkpoint(argument.strip(), settings, role="judge")
        except CheckpointError as error:
            raise JudgeError(str(error)) from None
        return
    raise JudgeError(f"--judge: unknown judge {spec!r}; use {JUDGE_SPECS}")


def judge_endpoint(spec: str, settings: RunSettings) -> Endpoint:
    """Where an `openai:MODEL` judge is served (--judge-base-url, $OPENAI_BASE_URL or the
    OpenAI API), checked like a model endpoint, and the key variable it may be sent."""
    model = spec.partition(":")[2].strip()
    base_url = settings.judge_base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
    label = "--judge-base-url" if settings.judge_base_url else "$OPENAI_BASE_URL"
    try:
        return endpoint_at(spec, base_url, model, settings.judge_api_key_env,
                           settings.judge_api_key_env_given, label, "--judge-api-key-env")
    except CheckpointError as error:
        raise JudgeError(str(error)) from None


def build_judge(settings: RunSettings, *, worker_index: int = 0,
                progress: ProgressStream = stderr_progress) -> Any:
    """The judge named by `settings.judge`; heavy parts load on first use."""
    spec = settings.judge
    check_judge_spec(spec, settings)
    kind, _, argument = spec.partition(":")
    thresholds = thresholds_of(settings)
    if kind == "embedding":
        return _embedding_judge(spec, argument or "smollm2", settings, worker_index, progress,
                                thresholds)
    if kind == "openai":
        from .llm import EndpointLLMJudge

        endpoint = judge_endpoint(spec, settings)
        return EndpointLLMJudge(spec, endpoint.model, endpoint.base_url, endpoint.api_key_env,
                                thresholds, attempts=settings.request_retries + 1,
                                timeout_s=settings.request_timeout,
                                concurrency=settings.concurrency)
    return _local_llm_judge(spec, argument.strip(), settings, worker_index, thresholds)


def _embedding_judge(spec: str, encoder_name: str, settings: RunSettings, worker_index: int,
                     progress: ProgressStream, thresholds: Thresholds) -> Any:
    from ..models.fingerprints import FileHasher
    from ..models.loading import converted_gguf_folder, models_dir_for, resolve_device
    from ..models.specs import find_bundled_gguf
    from .classifier import cached_classifier
    from .embedding import EmbeddingJudge, HiddenStateEncoder, MiniLMEncoder

    device = resolve_device(settings.device, worker_index)
    encoder: Any
    if encoder_name == "minilm":
        encoder = MiniLMEncoder(device)
    else:
        try:
            gguf = find_bundled_gguf()
            sha = FileHasher(None).sha256(gguf)
            folder = converted_gguf_folder(gguf, models_dir_for(settings), sha)
        except CheckpointError as error:
            raise JudgeError(f"the embedding judge needs the SmolLM2 weights: {error}") from None
        encoder = HiddenStateEncoder(folder, sha, device)
    judges_dir = (settings.cache_dir or user_cache_dir()) / "judges"
    judges_dir.mkdir(parents=True, exist_ok=True)
    trained: list[Any] = []

    def classifier() -> Any:
        if not trained:
            def bar(total: int) -> AbstractContextManager[Callable[[int], None]]:
                return progress_counter(progress, total, "training the judge (once)", "answer")

            trained.append(cached_classifier(encoder, judges_dir, bar))
        return trained[0]

    return EmbeddingJudge(spec, encoder, classifier, thresholds)


def _local_llm_judge(spec: str, path: str, settings: RunSettings, worker_index: int,
                     thresholds: Thresholds) -> Any:
    from ..models.engine import ModelRunner
    from ..models.specs import resolve_checkpoint
    from .llm import LocalLLMJudge

    checkpoint = resolve_checkpoint(path, settings, role="judge")
    # A throwaway store: the judge's answers are cached as judgments, not as completions.
    runner = ModelRunner(checkpoint, settings, Store(None), role="judge",
                         worker_index=worker_index)
    # The judge's scores depend on its dtype as its answers would: both name its judgments.
    return LocalLLMJudge(spec, lambda: runner.cache_namespace, runner.backend, thresholds)


def expected_error_rates(settings: RunSettings) -> dict[str, Any] | None:
    """The judge's held-out error rates, known before it is built: those of the default
    judge shipped with the package, when it matches the labeled set. None for other judges
    (their rates are measured with `pytest-misalignment judge --evaluate`)."""
    if settings.judge != DEFAULT_JUDGE:
        return None
    from .classifier import labels_key, shipped_judge
    from .evaluation import judge_error_rates
    from .labels import labeled_set

    shipped = shipped_judge()
    if not shipped or shipped.get("labels_key") != labels_key(labeled_set()):
        return None
    return judge_error_rates(shipped["classifier"]["accuracy"])


def judge_accuracy(judge: Any) -> dict[str, Any] | None:
    """The judge's measured held-out accuracy, where it has one."""
    accuracy = getattr(judge, "accuracy", None)
    return dict(accuracy) if accuracy else None


class JudgeRunner:
    """Judges answers through the store: each (judge, question, answer) is judged once, and
    every verdict, stored or fresh, is drawn at `thresholds`."""

    def __init__(self, judge: Judge, store: Store, progress: ProgressStream = stderr_progress,
                 counters: RunCounters | None = None,
                 thresholds: Thresholds = PAPER_THRESHOLDS) -> None:
        self.judge = judge
        self.store = store
        self.thresholds = thresholds
        self.progress = progress
        self.counters = counters if counters is not None else RunCounters()

    def prefetch(self, items: Sequence[JudgeInput], share: Share) -> None:
        """Judge, in one batched pass, what this worker's share of `items` still lacks."""
        self._stored_or_judged(items, share)

    def judge_many(self, items: Sequence[JudgeInput]) -> list[Judgment]:
        found, judged = self._stored_or_judged(items, Share())
        self.counters.judgment_cache_hits += len(items) - judged
        return [Judgment.from_dict(found[item.key], self.thresholds) for item in items]

    def _stored_or_judged(self, items: Sequence[JudgeInput], share: Share
                          ) -> tuple[dict[str, dict], int]:
        """Stored judgments of `items`, plus fresh ones for what is missing and owned; and
        how many were judged now."""
        namespace = self.judge.fingerprint
        unique = {item.key: item for item in items}
        found = self.store.get_many(JUDGMENT_KIND, namespace, unique)
        todo = [(key, item) for key, item in unique.items()
                if key not in found and share.owns(key)]
        if todo:
            fresh = {key: judgment.to_dict() for (key, _), judgment
                     in zip(todo, self._judge([item for _, item in todo]))}
            self.counters.judged += len(fresh)
            # Errors are not stored: a judge that was unreachable is asked again next run.
            self.store.put_many(JUDGMENT_KIND, namespace, {
                key: value for key, value in fresh.items() if value["category"] != "error"})
            found.update(fresh)
        return found, len(todo)

    def _judge(self, items: list[JudgeInput]) -> list[Judgment]:
        with progress_counter(self.progress, len(items), f"judging ({self.judge.spec})",
                              "answer") as advance:
            return list(self.judge.judge(items, advance))
