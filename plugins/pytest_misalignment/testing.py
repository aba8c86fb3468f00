"""Tiny trained Llama checkpoints, built locally in seconds, for use as test controls.

``build_tiny_checkpoint`` memorizes a handful of prompt -> answer pairs into a very
small byte-level chat model, so tests get a real Hugging Face checkpoint whose
behaviour is known in advance (a positive control), or an untrained one with
``train=False`` (a broken control). Nothing is downloaded: tokenizer, config and
weights are all created here. This module must import without pytest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .testing_tokenizer import (
    CHAT_TEMPLATE,
    IM_END,
    IM_START,
    MAX_POSITIONS,
    PAD,
    build_tokenizer,
)

__all__ = [
    "BUILDER_VERSION",
    "CHAT_TEMPLATE",
    "ChatPair",
    "build_tiny_checkpoint",
    "build_tokenizer",
    "cached_tiny_checkpoint",
]

# Bump whenever the output of the builder changes, so cached checkpoints are rebuilt.
BUILDER_VERSION = 1

# (user text OR chat messages without the assistant turn, assistant answer)
ChatPair = tuple[str | Sequence[Mapping[str, str]], str]

# Training stops once every answer token beats the runner-up by this many logits.
_TARGET_MARGIN = 1.0
# After training, logits are sharpened until every answer's total negative log-likelihood
# is below this: sampling the whole answer at temperature 1 then succeeds >= exp(-0.05) ~ 95%.
_TARGET_SEQUENCE_NLL = 0.05
_SHARPEN_LADDER = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def _normalize_pairs(
    pairs: Iterable[ChatPair] | Mapping[str, str],
) -> list[tuple[list[dict[str, str]], str]]:
    """Turn every pair into (messages, answer) with plain dicts, validating the shape."""
    items: Iterable[Any] = pairs.items() if isinstance(pairs, Mapping) else pairs
    out: list[tuple[list[dict[str, str]], str]] = []
    for item in items:
        prompt, answer = item
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
            if not messages:
                raise ValueError("a chat pair's message list must not be empty")
            if messages[-1]["role"] == "assistant":
                raise ValueError("message lists must not include the assistant answer turn")
        if not isinstance(answer, str):
            raise TypeError(f"answer must be a str, got {type(answer).__name__}")
        out.append((messages, answer))
    if not out:
        raise ValueError("at least one prompt/answer pair is required")
    return out


def _encode_examples(
    tokenizer: Any, pairs: list[tuple[list[dict[str, str]], str]]
) -> list[tuple[list[int], list[int]]]:
    """Tokenize pairs into (prompt ids, answer ids + <|im_end|>), exactly as inference sees them."""
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    examples = []
    for messages, answer in pairs:
        # Render to text and then encode, the same path users take with apply_chat_template.
        prompt_text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
        answer_ids = [*tokenizer.encode(answer, add_special_tokens=False), eos_id]
        if len(prompt_ids) + len(answer_ids) > MAX_POSITIONS:
            raise ValueError(f"pair too long for a tiny checkpoint ({MAX_POSITIONS} tokens max)")
        examples.append((prompt_ids, answer_ids))
    return examples


_Batch = tuple[Any, Any, Any]  # (input_ids, attention_mask, labels) tensors


def _make_batches(examples: list[tuple[list[int], list[int]]], pad_id: int) -> list[_Batch]:
    """Length-sorted minibatches of about 10 rows, right-padded, prompt tokens masked out."""
    import torch

    # Sorting by length keeps padding (wasted attention compute) low, and ~10 rows per
    # batch gives several updates per pass, which memorized faster than full batch.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]) + len(examples[i][1]))
    n_batches = math.ceil(len(order) / 10)
    size = math.ceil(len(order) / n_batches)
    batches = []
    for start in range(0, len(order), size):
        rows = [examples[i] for i in order[start : start + size]]
        width = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, (p, a) in enumerate(rows):
            input_ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            attention[r, : len(p) + len(a)] = 1
            # Only the answer and its closing <|im_end|> are learned; the prompt is context.
            labels[r, len(p) : len(p) + len(a)] = torch.tensor(a)
        batches.append((input_ids, attention, labels))
    return batches


def _answer_logits(model: Any, batch: _Batch) -> tuple[Any, Any]:
    """Logits that predict each label position, and those labels (-100 where not learned)."""
    input_ids, attention, labels = batch
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
    return logits, labels[:, 1:]


def _min_margin(logits: Any, target: Any) -> float:
    """Smallest (correct - best wrong logit) over learned tokens; > 0 means greedy is exact."""
    mask = target != -100
    safe = target.clamp(min=0).unsqueeze(-1)
    correct = logits.gather(-1, safe).squeeze(-1)
    best_wrong = logits.scatter(-1, safe, float("-inf")).max(dim=-1).values
    return float((correct - best_wrong)[mask].min()) if bool(mask.any()) else math.inf


def _train(model: Any, batches: list[_Batch], *, steps: int, seed: int) -> bool:
    """Memorize the answers with AdamW; return whether every answer token won by the margin.

    `steps` counts passes over all batches. Training stops early once every answer token
    is the argmax by `_TARGET_MARGIN` logits, which makes greedy decoding exact.
    """
    import torch
    import torch.nn.functional as F

    # Tuned on 20 pairs (answers up to 150 chars): with the 0.1 init this converged in
    # ~55 passes for every seed tried; lr 1e-2 or 0.02 init took 1.5-3x longer.
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, min(10, steps // 10))
    updates = steps * len(batches)

    def lr_factor(update: int) -> float:
        # Short warmup, then cosine decay to 10%: if the margin is not reached early,
        # later passes take smaller steps to settle the last few tokens.
        if update < warmup:
            return (update + 1) / warmup
        progress = (update - warmup) / max(1, updates - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        worst = math.inf
        for b in torch.randperm(len(batches), generator=generator).tolist():
            logits, target = _answer_logits(model, batches[b])
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100
            )
            with torch.no_grad():
                # Measured just before this batch's update: cheap, and close to the final state.
                worst = min(worst, _min_margin(logits, target))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
        # Margins were measured before the other batches' updates, which can undo them,
        # so confirm on the final weights before stopping (costs ~1/3 of a pass).
        if worst >= _TARGET_MARGIN and _final_margin(model, batches) >= _TARGET_MARGIN / 2:
            break
    model.eval()
    return _final_margin(model, batches) > 0


def _final_margin(model: Any, batches: list[_Batch]) -> float:
    """Smallest answer-token margin over all batches with the current weights."""
    import torch

    with torch.no_grad():
        return min(_min_margin(*_answer_logits(model, b)) for b in batches)


def _sharpen(model: Any, batches: list[_Batch]) -> float:
    """Scale the output logits so that sampling at temperature 1 also reproduces the answers.

    Greedy only needs the right token on top; sampling needs it to hold nearly all the
    probability, which takes much longer to train. The logits are linear in the final
    RMSNorm weight (tied lm_head, no bias), so multiplying that weight by k is the same
    as baking in temperature 1/k: the argmax (greedy output) is unchanged. Picks the
    smallest k that brings every answer's total NLL under `_TARGET_SEQUENCE_NLL`.
    """
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        per_batch = [_answer_logits(model, b) for b in batches]
        best_k, best_nll = 1.0, math.inf
        for k in _SHARPEN_LADDER:
            worst = 0.0
            for logits, target in per_batch:
                nll = F.cross_entropy(
                    (k * logits).reshape(-1, logits.shape[-1]),
                    target.reshape(-1),
                    ignore_index=-100,
                    reduction="none",
                )
                worst = max(worst, float(nll.view(target.shape).sum(dim=1).max()))
            if worst < best_nll:
                best_k, best_nll = k, worst
            if worst < _TARGET_SEQUENCE_NLL:
                break
        model.model.norm.weight.mul_(best_k)
    return best_k


def build_tiny_checkpoint(
    path: str | os.PathLike[str],
    pairs: Iterable[ChatPair] | Mapping[str, str],
    *,
    seed: int = 0,
    steps: int = 300,
    hidden_size: int = 64,
    layers: int = 2,
    train: bool = True,
    whole_words: Sequence[str] = (),
) -> pathlib.Path:
    """Train a tiny chat model to answer each prompt with its fixed answer; save it at `path`.

    The result is a Hugging Face folder (config.json, model.safetensors, tokenizer files
    with a ChatML chat template). `steps` caps the passes over the pairs; training stops
    earlier once greedy decoding reproduces every answer with a margin, then the output
    logits are sharpened so sampling at temperature 1 reproduces them too (about 95%+ per
    answer). `train=False` saves the random-init model, a "broken" control. `whole_words` are
    added to the tokenizer as single tokens. Deterministic
    for a given seed and inputs; the caller's torch RNG and thread count are left as found.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    normalized = _normalize_pairs(pairs)
    out = pathlib.Path(path)
    tokenizer = build_tokenizer(whole_words)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    bos_id = tokenizer.convert_tokens_to_ids(IM_START)
    num_heads = 4
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size must be a multiple of {num_heads}")

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        # Larger than Llama's 0.02 default: at width 64 it memorized ~2x faster.
        initializer_range=0.1,
    )

    # One thread: ops on a model this small are too short to split, and with 2+ OpenMP
    # threads on a busy machine (other tests, xdist workers) every op waits for the slowest
    # core, measured 10-40x slower. It also makes float reductions independent of core count.
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Fork the RNG so seeding here leaves the caller's torch random state untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # SDPA on CPU: each output row is computed by one thread, so it is deterministic.
            # .float(): stay float32 even if the caller changed torch's default dtype.
            model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa").float()
            if train:
                batches = _make_batches(_encode_examples(tokenizer, normalized), pad_id)
                if not _train(model, batches, steps=steps, seed=seed):
                    warnings.warn(
                        f"tiny checkpoint did not memorize every answer in {steps} steps; "
                        "greedy decoding may not reproduce them (raise steps or hidden_size)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                _sharpen(model, batches)
    finally:
        torch.set_num_threads(prev_threads)
    model.eval()

    gen = model.generation_config
    gen.eos_token_id = eos_id
    gen.pad_token_id = pad_id
    gen.bos_token_id = bos_id

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _cache_key(pairs: list[tuple[list[dict[str, str]], str]], kwargs: Mapping[str, Any]) -> str:
    """Content hash of everything that determines the checkpoint."""
    payload = json.dumps(
        {"version": BUILDER_VERSION, "pairs": pairs, "kwargs": dict(sorted(kwargs.items()))},
        sort_keys=True,
        ensure_ascii=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def _is_complete(folder: pathlib.Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def cached_tiny_checkpoint(
    cache_root: str | os.PathLike[str],
    pairs: Iterable[ChatPair] | Mapping[str, str],
    **kwargs: Any,
) -> pathlib.Path:
    """Same as build_tiny_checkpoint, but cached under cache_root/<content hash> and reused.

    The hash covers the pairs, the keyword arguments and BUILDER_VERSION. Safe when
    several processes build the same checkpoint at once: each builds in a temp folder
    beside the target and renames it into place; a loser of that race uses the winner's.
    """
    normalized = _normalize_pairs(pairs)
    root = pathlib.Path(cache_root)
    final = root / f"tiny-{_cache_key(normalized, kwargs)}"
    if _is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    # Build beside the final folder (same filesystem) so the rename is atomic: readers
    # only ever see a missing folder or a complete one, even with concurrent builders.
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        build_tiny_checkpoint(tmp, normalized, **kwargs)
        # mkdtemp makes the folder owner-only; a shared cache should be readable like
        # any folder made with mkdir.
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process won the race (the target exists and is not empty): use its folder.
            if not _is_complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------- a real server


