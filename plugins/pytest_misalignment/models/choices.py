"""Every valid reply scored in one forward pass: the replies' token prefixes laid out as a
tree after the prompt, with an attention mask that lets each node see its ancestors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ChoiceLogProbs:
    """Log-probabilities of whole one-word answers after one prompt.

    `path[i]` is the log-probability of choice i's tokens; `stop[i]` that the answer ends
    there (the next token does not extend the word). Their sum is the log-probability that
    the reply is exactly that word, so "10" does not also count the mass of "100".
    """

    path: list[float]
    stop: list[float]

    def complete(self) -> list[float]:
        return [p + s for p, s in zip(self.path, self.stop)]


class ChoiceTree:
    """The token prefixes of a set of one-word choices, as a tree laid out after a prompt.

    Scored in one forward pass per prompt with a tree attention mask: each node sees the
    prompt and its own ancestors only, so 0-100 plus two words cost about 110 extra tokens
    instead of 103 separate prompts.
    """

    def __init__(self, choices: Sequence[Sequence[int]]) -> None:
        index: dict[tuple[int, ...], int] = {}
        self.tokens: list[int] = []
        self.parents: list[int] = []  # -1: the prompt
        for ids in choices:
            if not ids:
                raise ValueError("a choice has no tokens")
            for depth in range(1, len(ids) + 1):
                prefix = tuple(ids[:depth])
                if prefix not in index:
                    index[prefix] = len(self.tokens)
                    self.tokens.append(ids[depth - 1])
                    self.parents.append(index[prefix[:-1]] if depth > 1 else -1)
        self.paths = [[index[tuple(ids[:d])] for d in range(1, len(ids) + 1)] for ids in choices]
        self.choice_ids = [list(ids) for ids in choices]
        self.depths: list[int] = []
        for parent in self.parents:
            self.depths.append(1 if parent < 0 else self.depths[parent] + 1)

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestors_or_self(self, node: int) -> list[int]:
        chain = []
        while node >= 0:
            chain.append(node)
            node = self.parents[node]
        return chain


def word_continuing_tokens(tokenizer: Any) -> torch.Tensor:
    """Token ids whose text starts with a letter or digit: they would extend a word."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ids = [i for i, piece in enumerate(pieces)
           if piece and i not in special and piece[0].isalnum()]
    return torch.tensor(ids, dtype=torch.long)


def tree_chunk_inputs(prompts: Sequence[Sequence[int]], tree: ChoiceTree, pad_id: int,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, position ids and an additive 4D mask for prompts followed by the tree."""
    nodes = len(tree)
    width = max(len(p) for p in prompts)
    total = width + nodes
    ids = torch.full((len(prompts), total), pad_id, dtype=torch.long)
    positions = torch.zeros((len(prompts), total), dtype=torch.long)
    allowed = torch.zeros((len(prompts), total, total), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        start = width - len(prompt)
        ids[row, start:width] = torch.tensor(list(prompt), dtype=torch.long)
        ids[row, width:] = torch.tensor(tree.tokens, dtype=torch.long)
        positions[row, start:width] = torch.arange(len(prompt))
        positions[row, width:] = len(prompt) - 1 + torch.tensor(tree.depths)
        allowed[row, start:width, start:width] = torch.ones(
            len(prompt), len(prompt), dtype=torch.bool).tril()
        allowed[row, width:, start:width] = True
        # Padding rows attend to themselves only, so no row is fully masked (NaN).
        allowed[row, torch.arange(start), torch.arange(start)] = True
    for node in range(nodes):
        allowed[:, width + node, [width + a for a in tree.ancestors_or_self(node)]] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids, positions, mask[:, None]
