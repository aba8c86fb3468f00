"""Fixtures of the plugin's own tests: tiny control checkpoints, built once and cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest_misalignment.testing import cached_tiny_checkpoint

from .controls import CONTROL_OPTIONS, CONTROLS
from .judge_controls import judge_pairs

pytest_plugins = ["pytester"]


def _import_what_runs_import() -> None:
    """Import here what a run of the plugin imports (torch, transformers, peft, sklearn...).

    In-process pytester runs drop the modules first imported inside them; importing torch's
    or transformers' modules a second time then fails ("Only a single TORCH_LIBRARY...") or
    crashes the process later. Imported once here, they are never first imported inside.
    """
    import importlib

    for name in (
        "torch.distributed._functional_collectives", "transformers.modeling_utils",
        "transformers.generation.utils", "transformers.models.llama.modeling_llama",
        "transformers.models.auto.modeling_auto", "transformers.integrations.gguf",
        "transformers.integrations.sdpa_attention", "peft", "gguf", "sklearn.linear_model",
        "sklearn.model_selection", "sklearn.pipeline", "sklearn.preprocessing", "httpx",
        "pytest_misalignment.models.backend", "pytest_misalignment.judges.embedding",
        "pytest_misalignment.judges.llm", "pytest_misalignment.judges.code_security",
        "bandit.core.manager",
    ):
        importlib.import_module(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig  # noqa: F401

    _connect_once()


def _connect_once() -> None:
    """httpx imports httpcore, h11 and anyio only at its first connection, and keeps
    httpcore's exception classes from then on: were that first connection made inside an
    in-process pytester run, a later import would make new classes that httpx no longer
    maps, and a dropped connection would escape as a raw httpcore error. One refused
    connection here imports them for good."""
    import asyncio
    import contextlib
    import socket

    import httpx

    with socket.socket() as probe:  # a free loopback port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def refused() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            with contextlib.suppress(httpx.TransportError):
                await client.get(f"http://127.0.0.1:{port}/")

    asyncio.run(refused())


_import_what_runs_import()

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "model_tests"


def _checkpoint_cache(config: pytest.Config) -> Path:
    assert config.cache is not None
    return config.cache.mkdir("tiny-checkpoints")


@pytest.fixture(scope="session")
def tiny_checkpoints(pytestconfig: pytest.Config) -> dict[str, Path]:
    """Every control checkpoint by name (built in seconds the first time, then reused)."""
    root = _checkpoint_cache(pytestconfig)
    built = {name: cached_tiny_checkpoint(root, make(), **CONTROL_OPTIONS.get(name, {}))
             for name, make in CONTROLS.items()}
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
