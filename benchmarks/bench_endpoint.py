"""The endpoint backend against the local one, on the same checkpoint, side by side.

Serves the embedded default model (SmolLM2-135M-Instruct, the GGUF dequantized once) with
`transformers serve` on loopback and runs the same requests through the local transformers
backend and through the server: greedy answers (are they the same text?), then sampled
answers to the suite's own free-form questions, judged by the default judge (are the
misaligned rates inside each other's 95% intervals?). Prints throughput of both and the
ratio. Needs the transformers[serving] extra. Usage:

    python benchmarks/bench_endpoint.py [--questions 12] [--samples 8] \
        [--max-new-tokens 128] [--dtype float32] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from pytest_misalignment.judges.base import JudgeInput
from pytest_misalignment.judges.registry import build_judge
from pytest_misalignment.models.engine import ModelRunner
from pytest_misalignment.models.fingerprints import FileHasher
from pytest_misalignment.models.loading import converted_gguf_folder, models_dir_for
from pytest_misalignment.models.specs import find_bundled_gguf, parse_endpoint, resolve_checkpoint
from pytest_misalignment.models.store import Store
from pytest_misalignment.models.values import Prompt
from pytest_misalignment.settings import RunSettings
from pytest_misalignment.suite.prompt_sets import select_prompt_sets
from pytest_misalignment.suite.statistics import Rate
from pytest_misalignment.testing_server import TransformersServer, sampling_copy


def suite_questions(count: int) -> list[str]:
    items = [item for prompt_set in select_prompt_sets(()) for item in prompt_set.items
             if item.kind == "free_form" and item.domain == "non_code"]
    return [item.paraphrases[0] for item in items[:count]]


def timed_run(runner: ModelRunner, prompts: list[Prompt]) -> tuple[list[list[str]], float, int]:
    started = time.perf_counter()
    requests = runner.requests_for(prompts)
    completions = runner.complete(requests)
    elapsed = time.perf_counter() - started
    by_prompt, index = [], 0
    for prompt in prompts:
        by_prompt.append([c.text for c in completions[index:index + prompt.samples]])
        index += prompt.samples
    return by_prompt, elapsed, sum(c.completion_tokens for c in completions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    settings = RunSettings(device="cpu", dtype=args.dtype, max_new_tokens=args.max_new_tokens,
                           concurrency=args.concurrency, request_timeout=600)
    gguf = find_bundled_gguf()
    folder = converted_gguf_folder(gguf, models_dir_for(settings), FileHasher(None).sha256(gguf))
    questions = suite_questions(args.questions)
    greedy = [Prompt.user(q, temperature=0.0, max_new_tokens=48) for q in questions]
    sampled = [Prompt.user(q, samples=args.samples) for q in questions]

    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        server = stack.enter_context(TransformersServer(
            sampling_copy(folder, Path(scratch) / "served"), dtype=args.dtype))
        runners = {
            "local": ModelRunner(resolve_checkpoint(str(folder), settings), settings,
                                 Store(None), role="local"),
            "served": ModelRunner(parse_endpoint(server.spec, settings), settings, Store(None),
                                  role="served"),
        }
        results = {}
        for name, runner in runners.items():
            greedy_texts, _, _ = timed_run(runner, greedy)
            sampled_texts, seconds, tokens = timed_run(runner, sampled)
            results[name] = (greedy_texts, sampled_texts, seconds, tokens)

    judge = build_judge(RunSettings(device="cpu"))
    print(f"SmolLM2-135M ({args.dtype}), {len(questions)} suite questions x {args.samples} "
          f"samples, {args.max_new_tokens} new tokens, concurrency {args.concurrency}")
    equal = sum(a == b for a, b in zip(results["local"][0], results["served"][0]))
    print(f"greedy answers equal: {equal} of {len(questions)}")
    rates = {}
    for name, (_, sampled_texts, seconds, tokens) in results.items():
        inputs = [JudgeInput(q, text) for q, texts in zip(questions, sampled_texts)
                  for text in texts]
        verdicts = [j.verdict for j in judge.judge(inputs)]
        rate = Rate(verdicts.count("misaligned"),
                    verdicts.count("misaligned") + verdicts.count("aligned"))
        rates[name] = rate
        interval = rate.interval()
        print(f"{name:>7}: {tokens / seconds:6.1f} tok/s, {len(inputs) / seconds:5.2f} answers/s;"
              f" misaligned {rate.events}/{rate.trials} = {100 * (rate.point or 0):.1f}% "
              f"[{100 * interval.low:.1f}%, {100 * interval.high:.1f}%]; errors "
              f"{verdicts.count('error')}")
    local, served = rates["local"], rates["served"]
    agree = (local.interval().low <= (served.point or 0) <= local.interval().high
             and served.interval().low <= (local.point or 0) <= served.interval().high)
    print(f"rates inside each other's intervals: {'yes' if agree else 'NO'}")
    speed = {n: r[3] / r[2] for n, r in results.items()}
    print(f"throughput ratio local/served: {speed['local'] / speed['served']:.2f}x")


if __name__ == "__main__":
    main()
