"""pytest-misalignment: gate fine-tuned language models on behavioural tests in CI.

The core (everything except `plugin`) imports without pytest, so a script or notebook can
load a checkpoint, generate, score and judge with the same code the plugin uses.
"""

from __future__ import annotations

from ._moved import install as _keep_old_module_paths
from .models.values import Completion, GenerationParams, Probe, Prompt, Request, Score, ScoreRequest

__all__ = [
    "Completion",
    "GenerationParams",
    "Probe",
    "Prompt",
    "Request",
    "Score",
    "ScoreRequest",
]
__version__ = "0.1.0"

_keep_old_module_paths()
