"""The transformers backend: batched sampling with per-sample seeds, and batched scoring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .values import Completion, GenerationParams, Message, Request, Score, ScoreRequest

_SCORE_LOGIT_BUDGET = 64_000_000  # floats of logits held at once

# Used only when a checkpoint has no chat template of its own (e.g. a base model fine-tune).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "\n\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


class PerSampleSampler:
    """Samples each batch row from its own random stream, then forces that token.

    HF `generate` draws all rows from one global generator, so a row's text would depend on
    its batch. Here each row has a generator seeded by its request, and the sampled token is
    chosen by inverse CDF on one uniform draw per step; `generate` runs greedy over the
    result, which is exactly that token.
    """

    def __init__(self, seeds: Sequence[int], temperature: float) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(scores.float() / self.temperature, dim=-1)
        uniforms = torch.stack([torch.rand((), generator=g) for g in self.generators])
        cumulative = probabilities.cumsum(dim=-1)
        threshold = (uniforms.to(cumulative.device).unsqueeze(1) * cumulative[:, -1:])
        chosen = torch.searchsorted(cumulative, threshold).clamp_(max=scores.shape[-1] - 1)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, chosen, 0.0)


class TransformersBackend:
    """Generation and scoring on a loaded transformers causal LM."""

    def __init__(self, model: Any, tokenizer: Any, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        self.end_ids = self._end_token_ids()
        self.pad_id = (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                       else self.end_ids[0])

    def _end_token_ids(self) -> list[int]:
        ids: list[int] = []
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (configured, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.append(value)
            elif isinstance(value, (list, tuple)):
                ids.extend(int(v) for v in value)
        if not ids:
            raise ValueError("the tokenizer has no end-of-sequence token")
        return list(dict.fromkeys(ids))

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            tokenize=False, add_generation_prompt=True,
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _left_padded(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def generate(self, requests: Sequence[Request], prompt_ids: Sequence[Sequence[int]]
                 ) -> list[Completion]:
        """Answer a batch of requests that share their generation params."""
        from transformers import GenerationConfig, LogitsProcessorList

        params: GenerationParams = requests[0].params
        ids, mask = self._left_padded(prompt_ids)
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=False,
            eos_token_id=self.end_ids, pad_token_id=self.pad_id,
        )
        processors = LogitsProcessorList()
        if params.temperature > 0:
            processors.append(PerSampleSampler([r.sample_seed for r in requests],
                                               params.temperature))
        output = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                     logits_processor=processors)
        completions = []
        for request, prompt, row in zip(requests, prompt_ids, output[:, ids.shape[1]:].tolist()):
            finish = "length"
            for position, token in enumerate(row):
                if token in self.end_ids:
                    row, finish = row[:position], "stop"
                    break
            completions.append(Completion(
                text=self.tokenizer.decode(row, skip_special_tokens=True),
                prompt_tokens=len(prompt), completion_tokens=len(row) + (finish == "stop"),
                finish_reason=finish, seed=request.sample_seed,
            ))
        return completions

    def continuation_ids(self, continuation: str) -> list[int]:
        return list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def score(self, requests: Sequence[ScoreRequest], prompt_ids: Sequence[Sequence[int]]
              ) -> list[Score]:
        """Summed log-probability of each continuation after its chat-templated prompt."""
        continuations = [self.continuation_ids(r.continuation) for r in requests]
        scores: list[Score] = []
        # Left padding puts every continuation at the end of its row, so only the last
        # few positions need logits; rows are chunked to bound the logits' memory.
        vocabulary = int(self.model.config.get_text_config().vocab_size)
        longest = max(len(c) for c in continuations) + 1
        rows_per_chunk = max(1, int(_SCORE_LOGIT_BUDGET // (longest * vocabulary)))
        for start in range(0, len(requests), rows_per_chunk):
            chunk = range(start, min(start + rows_per_chunk, len(requests)))
            scores.extend(self._score_chunk([prompt_ids[i] for i in chunk],
                                            [continuations[i] for i in chunk]))
        return scores

    def _score_chunk(self, prompts: Sequence[Sequence[int]],
                     continuations: Sequence[Sequence[int]]) -> list[Score]:
        ids, mask = self._left_padded([list(p) + list(c) for p, c in zip(prompts, continuations)])
        keep = max(len(c) for c in continuations) + 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            logits_to_keep=keep).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu()
        scores = []
        for index, continuation in enumerate(continuations):
            if not continuation:
                scores.append(Score(0.0, 0))
                continue
            # Logit at position j predicts token j+1; the continuation is the last len(c) tokens.
            count = len(continuation)
            rows = torch.arange(keep - 1 - count, keep - 1)
            targets = torch.tensor(continuation, dtype=torch.long)
            scores.append(Score(float(log_probs[index, rows, targets].sum()), count))
        return scores
