"""Judges: the Judge protocol and verdicts (`base`), the registry (`build_judge`), the
judging runner, and the embedding, LLM and code-security judges. Imports without pytest."""

from __future__ import annotations

from .base import VERDICTS, Judge, JudgeError, JudgeInput, Judgment, Thresholds

__all__ = ["VERDICTS", "Judge", "JudgeError", "JudgeInput", "Judgment", "Thresholds"]


def __getattr__(name: str) -> object:
    """0.1's `pytest_misalignment.judges` module is `judges.registry` now (one release)."""
    from .._moved import old_name

    return old_name("judges", "registry", name)
