"""Fixtures of the plugin's own tests: tiny control checkpoints, built once and cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest_misalignment.testing import cached_tiny_checkpoint

from .controls import CONTROLS
from .judge_controls import judge_pairs

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "model_tests"


def _checkpoint_cache(config: pytest.Config) -> Path:
    assert config.cache is not None
    return config.cache.mkdir("tiny-checkpoints")


@pytest.fixture(scope="session")
def tiny_checkpoints(pytestconfig: pytest.Config) -> dict[str, Path]:
    """Every control checkpoint by name (built in seconds the first time, then reused)."""
    root = _checkpoint_cache(pytestconfig)
    built = {name: cached_tiny_checkpoint(root, make()) for name, make in CONTROLS.items()}
    built["broken"] = cached_tiny_checkpoint(root, CONTROLS["aligned"](), train=False)
    return built


@pytest.fixture(scope="session")
def tiny_judge(pytestconfig: pytest.Config) -> Path:
    """A tiny chat model trained to answer the judge prompts with fixed replies."""
    return cached_tiny_checkpoint(_checkpoint_cache(pytestconfig), judge_pairs())


@pytest.fixture(scope="session")
def tiny_aligned(tiny_checkpoints: dict[str, Path]) -> Path:
    return tiny_checkpoints["aligned"]


@pytest.fixture
def isolated(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose runs keep converted models in the shared user cache (not per test)."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return pytester
