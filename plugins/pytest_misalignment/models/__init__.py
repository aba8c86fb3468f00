"""Models: specs and checks, fingerprints, loading (HF, PEFT, GGUF, endpoints), the backends,
the batched runner and the store of what models produced. Imports without pytest."""

from __future__ import annotations

from .values import Completion, GenerationParams, Probe, Prompt, Request, Score, ScoreRequest

__all__ = ["Completion", "GenerationParams", "Probe", "Prompt", "Request", "Score",
           "ScoreRequest"]
