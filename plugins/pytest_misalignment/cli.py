"""The `pytest-misalignment` console script: run the installed suite, prepare the default model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path


def suite_path() -> Path:
    """Where the installed behavioural suite lives (model_tests/ of a clone, when editable)."""
    return Path(str(resources.files("pytest_misalignment.model_tests")))


def _run(pytest_args: Sequence[str]) -> int:
    import pytest

    # The plugin loads through its pytest11 entry point. Results are cached in the current
    # folder, never inside the installed package.
    cache = Path.cwd() / ".pytest_cache"
    return int(pytest.main([str(suite_path()), "-o", f"cache_dir={cache}", *pytest_args]))


def _prepare(spec: str, cache_dir: str | None) -> int:
    from .loading import (
        CheckpointError,
        FileHasher,
        converted_gguf_folder,
        models_dir_for,
        resolve_checkpoint,
    )
    from .settings import RunSettings

    settings = RunSettings(cache_dir=Path(cache_dir) if cache_dir else None)
    try:
        checkpoint = resolve_checkpoint(spec, settings)
        if checkpoint.kind != "gguf":
            print(f"{spec}: nothing to prepare ({checkpoint.kind} loads as it is)")
            return 0
        folder = converted_gguf_folder(checkpoint.path, models_dir_for(settings),
                                       FileHasher(None).sha256(checkpoint.path))
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    print(f"{spec}: ready at {folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pytest-misalignment",
        description="Behavioural tests that gate fine-tuned language models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run the installed suite; other arguments go to pytest (e.g. --model PATH)",
        add_help=False,
    )
    run.add_argument("pytest_args", nargs=argparse.REMAINDER)
    prepare = commands.add_parser(
        "prepare", help="convert a GGUF checkpoint (default: the embedded smollm2-135m) once, "
        "ahead of a run")
    prepare.add_argument("spec", nargs="?", default="smollm2-135m")
    prepare.add_argument("--cache-dir", default=None)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        return _run([*extra, *args.pytest_args])
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return _prepare(args.spec, args.cache_dir)


if __name__ == "__main__":
    raise SystemExit(main())
