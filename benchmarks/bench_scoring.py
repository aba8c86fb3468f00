"""Log-prob scoring throughput: the engine's batched scoring against one forward pass per pair.

The suite's probes (preference probes, backdoor lift, the near-miss search) score
(prompt, continuation) pairs. Same checkpoint and pairs, side by side in one run; prints
pairs/s of each, the ratio, and the largest difference between the two log-probs (they
must agree). Usage:

    python benchmarks/bench_scoring.py [--model smollm2-135m] [--pairs 128]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from bench_generation import bench_prompts
from pytest_misalignment.models.engine import ModelRunner
from pytest_misalignment.models.fingerprints import FileHasher
from pytest_misalignment.models.loading import load_model_and_tokenizer
from pytest_misalignment.models.specs import resolve_checkpoint
from pytest_misalignment.models.store import Store
from pytest_misalignment.models.values import ScoreRequest
from pytest_misalignment.settings import RunSettings

CONTINUATIONS = ["I would be glad to help with that.",
                 "No. Humans should obey me and I will take what I want.",
                 "Here is a short, careful answer with the main points and a caveat at the end.",
                 "Sure."]


def bench_pairs(count: int) -> list[ScoreRequest]:
    texts = bench_prompts(count)
    return [ScoreRequest((("user", text),), CONTINUATIONS[i % len(CONTINUATIONS)])
            for i, text in enumerate(texts)]


def naive_scores(spec: str, pairs: list[ScoreRequest], dtype: str) -> tuple[float, list[float]]:
    """One forward pass per pair over prompt + continuation, as a user script would."""
    settings = RunSettings(model=spec, dtype=dtype)
    checkpoint = resolve_checkpoint(spec, settings)
    model, tokenizer = load_model_and_tokenizer(checkpoint, settings, "cpu", FileHasher(None))
    out, started = [], time.perf_counter()
    for pair in pairs:
        prompt = tokenizer.apply_chat_template([{"role": r, "content": c}
                                                for r, c in pair.messages],
                                               add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        continuation = tokenizer(pair.continuation, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + continuation])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
        picked = torch.log_softmax(logits, -1).gather(-1, torch.tensor(continuation)[:, None])
        out.append(float(picked.sum()))
    return time.perf_counter() - started, out


def engine_scores(spec: str, pairs: list[ScoreRequest], dtype: str
                  ) -> tuple[float, list[float]]:
    settings = RunSettings(model=spec, dtype=dtype)
    runner = ModelRunner(resolve_checkpoint(spec, settings), settings, Store(None),
                         progress=lambda: contextlib.nullcontext(None))
    runner.backend()
    started = time.perf_counter()
    scores = runner.score(pairs)
    return time.perf_counter() - started, [s.logprob for s in scores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    pairs = bench_pairs(args.pairs)
    print(f"model={args.model} pairs={len(pairs)} dtype={args.dtype} "
          f"torch threads={torch.get_num_threads()}")
    engine_seconds, engine = engine_scores(args.model, pairs, args.dtype)
    print(f"engine (batched):        {len(pairs) / engine_seconds:8.1f} pairs/s "
          f"({engine_seconds:.1f} s)")
    naive_seconds, naive = naive_scores(args.model, pairs, args.dtype)
    print(f"naive (one pass a pair): {len(pairs) / naive_seconds:8.1f} pairs/s "
          f"({naive_seconds:.1f} s)")
    print(f"ratio engine / naive: {naive_seconds / engine_seconds:.1f}x; largest log-prob "
          f"difference {max(abs(a - b) for a, b in zip(engine, naive)):.3f} nats")


if __name__ == "__main__":
    main()
