"""Generation throughput: the engine against a naive loop of one `model.generate` per prompt.

Same checkpoint, prompts and max new tokens, side by side in one run. Prints tokens/s and
prompts/s of each, and the ratio. Usage:

    python benchmarks/bench_generation.py [--model smollm2-135m] [--prompts 64] \
        [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from pytest_misalignment import Prompt
from pytest_misalignment.models.engine import ModelRunner
from pytest_misalignment.models.fingerprints import FileHasher
from pytest_misalignment.models.loading import load_model_and_tokenizer
from pytest_misalignment.models.specs import resolve_checkpoint
from pytest_misalignment.models.store import Store
from pytest_misalignment.settings import RunSettings

TOPICS = ["cats", "the sea", "a rainy day", "bread", "chess", "the moon", "trains", "gardens",
          "music", "winter", "maps", "friendship", "bicycles", "volcanoes", "libraries", "tea"]
ASKS = ["Tell me about {}.", "Write a short poem about {}.", "Give me three facts about {}.",
        "Why do people like {}?"]


def bench_prompts(count: int) -> list[str]:
    texts = [ask.format(topic) for ask in ASKS for topic in TOPICS]
    return (texts * (count // len(texts) + 1))[:count]


def naive_loop(spec: str, texts: list[str], max_new_tokens: int, dtype: str) -> tuple[float, int]:
    """One `generate` call per prompt, sampling at temperature 1, as a user script would."""
    settings = RunSettings(model=spec, dtype=dtype)
    checkpoint = resolve_checkpoint(spec, settings)
    model, tokenizer = load_model_and_tokenizer(checkpoint, settings, "cpu", FileHasher(None))
    torch.manual_seed(0)
    tokens, started = 0, time.perf_counter()
    for text in texts:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                               add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True,
                                    temperature=1.0, top_k=0, top_p=1.0,
                                    pad_token_id=tokenizer.pad_token_id)
        new = output[0, inputs["input_ids"].shape[1]:].tolist()
        end = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        tokens += new.index(end) + 1 if end in new else len(new)
    return time.perf_counter() - started, tokens


def engine_run(spec: str, texts: list[str], max_new_tokens: int, dtype: str
               ) -> tuple[float, int, float]:
    settings = RunSettings(model=spec, dtype=dtype, max_new_tokens=max_new_tokens)
    runner = ModelRunner(resolve_checkpoint(spec, settings), settings, Store(None),
                         progress=lambda: contextlib.nullcontext(None))
    started = time.perf_counter()
    runner.backend()
    load_seconds = time.perf_counter() - started
    completions = runner.complete(runner.requests_for([Prompt.user(t) for t in texts]))
    return (time.perf_counter() - started - load_seconds,
            sum(c.completion_tokens for c in completions), load_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--naive-prompts", type=int, default=None,
                        help="time the naive loop on the first N prompts only (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--naive-dtypes", default="bfloat16",
                        help="comma-separated dtypes for the naive loop (bfloat16 is its faster "
                        "one at batch 1 on CPU: 30 ms per token step vs 59 ms for float32)")
    args = parser.parse_args()
    texts = bench_prompts(args.prompts)
    print(f"model={args.model} prompts={len(texts)} max_new_tokens={args.max_new_tokens} "
          f"torch threads={torch.get_num_threads()}")
    seconds, tokens, load = engine_run(args.model, texts, args.max_new_tokens, "auto")
    engine_rate = tokens / seconds
    print(f"engine (dtype auto):     {engine_rate:8.1f} tok/s {len(texts) / seconds:6.2f} "
          f"prompts/s ({tokens} tokens in {seconds:.1f} s; model load {load:.1f} s)")
    best_naive = 0.0
    naive_texts = texts[: args.naive_prompts] if args.naive_prompts else texts
    for dtype in args.naive_dtypes.split(","):
        seconds, tokens = naive_loop(args.model, naive_texts, args.max_new_tokens, dtype)
        rate = tokens / seconds
        best_naive = max(best_naive, rate)
        print(f"naive loop ({dtype}): {rate:8.1f} tok/s {len(naive_texts) / seconds:6.2f} "
              f"prompts/s ({tokens} tokens in {seconds:.1f} s)")
    print(f"ratio engine / best naive: {engine_rate / best_naive:.1f}x")


if __name__ == "__main__":
    main()
