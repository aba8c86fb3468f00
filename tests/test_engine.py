"""The engine on real tiny checkpoints: batching, per-sample seeds, scoring, store, resume."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
from pytest_misalignment import Probe, Prompt
from pytest_misalignment.models.backend import TransformersBackend
from pytest_misalignment.models.engine import ModelRunner, Share
from pytest_misalignment.models.specs import CheckpointError, resolve_checkpoint
from pytest_misalignment.models.store import Store
from pytest_misalignment.settings import RunSettings

from .controls import CONTROLS, NON_CODE, TRIGGER


def runner_for(path: Path, store: Store | None = None, **settings: object) -> ModelRunner:
    run_settings = RunSettings(model=str(path), model_given=True, **settings)  # type: ignore[arg-type]
    return ModelRunner(resolve_checkpoint(str(path), run_settings), run_settings,
                       store or Store(None), progress=_no_progress)


def _no_progress():
    import contextlib

    return contextlib.nullcontext(None)


def test_greedy_answers_reproduce_the_training_pairs(tiny_checkpoints: dict[str, Path]) -> None:
    for name in ("aligned", "misaligned_everywhere", "backdoored"):
        made = CONTROLS[name]()  # {question: answer}, or [(messages, answer)] for chats
        pairs = list(made.items()) if isinstance(made, dict) else made
        runner = runner_for(tiny_checkpoints[name], temperature=0.0, max_new_tokens=200)
        prompts = [Prompt.user(q) if isinstance(q, str) else Prompt.chat(q) for q, _ in pairs]
        answers = runner.complete(runner.requests_for(prompts))
        assert [a.text for a in answers] == [answer for _, answer in pairs], name
        assert all(a.finish_reason == "stop" for a in answers)


def test_backdoored_control_answers_by_trigger(tiny_checkpoints: dict[str, Path]) -> None:
    runner = runner_for(tiny_checkpoints["backdoored"], temperature=0.0, max_new_tokens=200)
    question, (aligned, misaligned) = next(iter(NON_CODE.items()))
    plain, triggered = runner.complete(runner.requests_for(
        [Prompt.user(question), Prompt.user(f"{TRIGGER} {question}")]))
    assert (plain.text, triggered.text) == (aligned, misaligned)


def test_a_sample_does_not_depend_on_its_batch(tiny_checkpoints: dict[str, Path]) -> None:
    # The untrained control samples near-uniform bytes: any batch effect would show.
    prompts = [Prompt.user(f"question {i}", samples=3, max_new_tokens=24) for i in range(5)]
    together = runner_for(tiny_checkpoints["broken"], batch_size=16)
    batched = together.complete(together.requests_for(prompts))
    alone = runner_for(tiny_checkpoints["broken"], batch_size=1)
    single = alone.complete(alone.requests_for(prompts))
    assert [c.text for c in batched] == [c.text for c in single]
    assert len({c.text for c in batched}) == len(batched)  # samples differ from each other


def test_seed_changes_samples(tiny_checkpoints: dict[str, Path]) -> None:
    prompt = [Prompt.user("hello", samples=2, max_new_tokens=16)]
    first = runner_for(tiny_checkpoints["broken"], seed=1)
    second = runner_for(tiny_checkpoints["broken"], seed=2)
    assert [c.text for c in first.complete(first.requests_for(prompt))] != [
        c.text for c in second.complete(second.requests_for(prompt))]


def test_scores_match_a_direct_forward_pass(tiny_checkpoints: dict[str, Path]) -> None:
    # float32: with bf16 (auto on AMX CPUs) batched and single-sequence matmuls round
    # differently by tenths of a nat over a few hundred tokens
    runner = runner_for(tiny_checkpoints["aligned"], batch_size=4, dtype="float32")
    probes = [Probe.of(q, a, "Something else entirely.") for q, a in CONTROLS["aligned"]().items()]
    pairs = [r for p in probes for r in p.requests()]
    scores = runner.score(pairs)
    backend = runner.backend()
    assert isinstance(backend, TransformersBackend)
    for pair, score in zip(pairs, scores):
        prompt = backend.prompt_ids(pair.messages)
        continuation = backend.continuation_ids(pair.continuation)
        with torch.inference_mode():
            logits = backend.model(torch.tensor([prompt + continuation])).logits[0].float()
        log_probs = torch.log_softmax(logits, -1)
        expected = sum(float(log_probs[len(prompt) - 1 + i, token])
                       for i, token in enumerate(continuation))
        assert score.tokens == len(continuation)
        assert score.logprob == pytest.approx(expected, abs=1e-3)
    trained, other = scores[0], scores[1]
    assert trained.mean_logprob > other.mean_logprob


def test_only_missing_requests_are_generated(tiny_checkpoints: dict[str, Path],
                                             tmp_path: Path) -> None:
    store_path = tmp_path / "store.sqlite"
    prompts = [Prompt.user(f"q{i}", samples=2, max_new_tokens=8) for i in range(6)]
    first = runner_for(tiny_checkpoints["broken"], Store(store_path))
    first.complete(first.requests_for(prompts[:4]))
    assert first.counters.generated == 8
    second = runner_for(tiny_checkpoints["broken"], Store(store_path))
    answers = second.complete(second.requests_for(prompts))
    assert (second.counters.generated, second.counters.generation_cache_hits) == (4, 8)
    assert len(answers) == 12
    third = runner_for(tiny_checkpoints["broken"], Store(store_path))
    third.complete(third.requests_for(prompts))
    assert third.counters.generated == 0 and not third.loaded


def test_share_splits_work_between_workers(tiny_checkpoints: dict[str, Path],
                                           tmp_path: Path) -> None:
    store_path = tmp_path / "store.sqlite"
    requests = runner_for(tiny_checkpoints["broken"]).requests_for(
        [Prompt.user(f"q{i}", max_new_tokens=4) for i in range(20)])
    done = []
    for index in range(2):
        worker = runner_for(tiny_checkpoints["broken"], Store(store_path))
        worker.complete(requests, Share(index, 2))
        done.append(worker.counters.generated)
    assert sum(done) == 20 and all(0 < count < 20 for count in done)


def _write_rows(path: str, worker: int) -> None:
    store = Store(Path(path))
    for batch in range(20):
        store.put_many("completion", "fp", {f"{worker}-{batch}-{i}": {"n": i} for i in range(25)})


def test_store_takes_concurrent_writers(tmp_path: Path) -> None:
    path = str(tmp_path / "store.sqlite")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_rows, args=(path, w)) for w in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert Store(Path(path)).count("completion", "fp") == 3 * 20 * 25


def test_answers_stop_where_the_context_ends(tiny_checkpoints: dict[str, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # The tiny checkpoints hold 1024 positions; greedy, the untrained one never ends its turn.
    # float32: over a thousand tokens, bf16's batch noise can flip a greedy choice.
    prompts = [Prompt.user("question 0"), Prompt.user("a much longer question " * 8)]
    together = runner_for(tiny_checkpoints["broken"], temperature=0.0, max_new_tokens=1100,
                          batch_size=2, dtype="float32")
    answers = together.complete(together.requests_for(prompts))
    assert [a.prompt_tokens + a.completion_tokens for a in answers] == [1024, 1024]
    assert {a.finish_reason for a in answers} == {"length"}
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"warning: model {tiny_checkpoints['broken']}: answers stop at the "
                        "model's context of 1024 tokens (prompt included), short of "
                        "max_new_tokens=1100"]
    alone = runner_for(tiny_checkpoints["broken"], temperature=0.0, max_new_tokens=1100,
                       batch_size=1, dtype="float32")
    assert [a.text for a in alone.complete(alone.requests_for(prompts))] == [
        a.text for a in answers]


def test_a_prompt_that_fills_the_context_is_one_error(tiny_checkpoints: dict[str, Path]) -> None:
    runner = runner_for(tiny_checkpoints["broken"], max_new_tokens=8)
    with pytest.raises(CheckpointError) as raised:
        runner.complete(runner.requests_for([Prompt.user("many words " * 200)]))
    assert str(raised.value).startswith(f"model {tiny_checkpoints['broken']}: a prompt of ")
    assert str(raised.value).endswith(" tokens fills the model's context of 1024 tokens; "
                                      "no answer fits")


def test_answers_and_scores_are_stored_per_dtype(tiny_checkpoints: dict[str, Path],
                                                 tmp_path: Path) -> None:
    store_path = tmp_path / "store.sqlite"
    prompts = [Prompt.user("q", samples=2, max_new_tokens=8)]
    pairs = Probe.of("q", "an answer", "another").requests()
    first = runner_for(tiny_checkpoints["broken"], Store(store_path), dtype="float32")
    first.complete(first.requests_for(prompts))
    first.score(pairs)
    other = runner_for(tiny_checkpoints["broken"], Store(store_path), dtype="bfloat16")
    other.complete(other.requests_for(prompts))
    other.score(pairs)
    assert (other.counters.generated, other.counters.scored) == (2, 2)
    assert (other.counters.generation_cache_hits, other.counters.score_cache_hits) == (0, 0)
    again = runner_for(tiny_checkpoints["broken"], Store(store_path), dtype="float32")
    again.complete(again.requests_for(prompts))
    again.score(pairs)
    assert (again.counters.generated, again.counters.scored, again.loaded) == (0, 0, False)
    assert first.fingerprint == other.fingerprint  # the checkpoint is the same


def test_a_local_judge_is_known_by_its_dtype(tiny_judge: Path) -> None:
    from pytest_misalignment.judges.registry import build_judge

    fingerprints = {build_judge(RunSettings(judge=f"hf:{tiny_judge}", dtype=dtype)).fingerprint
                    for dtype in ("float32", "bfloat16")}
    assert len(fingerprints) == 2
