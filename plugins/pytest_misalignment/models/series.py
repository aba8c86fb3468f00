"""A series of checkpoints from --model: several specs, a glob, or a training folder of
`checkpoint-N` folders (as the HF Trainer writes them), read as training steps or seeds."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .specs import is_endpoint_spec

STEPS, SEEDS = "steps", "seeds"
GLOB_CHARACTERS = re.compile(r"[*?\[]")
# A checkpoint's own files: a folder with one of these is a model, not a training folder.
MODEL_FILES = ("config.json", "adapter_config.json")


@dataclass(frozen=True)
class SeriesMember:
    """One checkpoint of a series: its label (in test ids and reports), spec and step."""

    label: str
    spec: str
    step: int | None = None

    @property
    def role(self) -> str:
        """The model role its runner has in the run (`model@step-30`)."""
        return f"model@{self.label}"


def step_of(spec: str) -> int | None:
    """The training step in a checkpoint's name: `checkpoint-300` or a trailing number."""
    name = Path(spec.rstrip("/\\")).name
    found = re.search(r"(\d+)$", name)
    return int(found.group(1)) if found else None


def _is_model_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in MODEL_FILES) or any(folder.glob("*.gguf"))


def _checkpoint_folders(folder: Path) -> list[str]:
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and step_of(p.name) is not None]
    return [str(p) for p in sorted(found, key=lambda p: step_of(p.name) or 0)]


def _expand(spec: str, opens_models: bool) -> list[str]:
    """One spec as the checkpoints it names."""
    if is_endpoint_spec(spec):
        return [spec]
    path = os.path.expanduser(spec)
    if GLOB_CHARACTERS.search(path) and not os.path.exists(path):  # runs/lr[3e-4] is a name
        # checkpoints only: folders and .gguf files, not the trainer's state beside them
        matches = sorted((p for p in glob.glob(path) if os.path.isdir(p) or p.endswith(".gguf")),
                         key=lambda p: (step_of(p) is None, step_of(p) or 0, p))
        if not matches:
            raise CheckpointError(f"--model: {spec!r} matches no checkpoint folder or .gguf")
        return matches
    folder = Path(path)
    if folder.is_dir() and (opens_models or not _is_model_folder(folder)):
        checkpoints = _checkpoint_folders(folder)
        if checkpoints:
            return checkpoints
    return [spec]


def _label(text: str) -> str:
    """A label safe in a pytest id and a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-") or "checkpoint"


def expand_series(specs: Sequence[str], kind: str | None) -> list[SeriesMember]:
    """The checkpoints --model names, in series order; one member is not a series.

    A training folder that is itself a model stays one model unless --series is given.
    A steps series is ordered by step when every member has one, else kept as given.
    """
    paths = [p for spec in specs for p in _expand(spec, opens_models=kind is not None)]
    paths = list(dict.fromkeys(paths))
    steps = [step_of(p) if not is_endpoint_spec(p) else None for p in paths]
    by_step = (kind or STEPS) == STEPS and all(s is not None for s in steps) \
        and len(set(steps)) == len(steps)
    if len(paths) > 1 and kind is None and not by_step:
        raise CheckpointError(
            f"--model names {len(paths)} checkpoints without a distinct step number at the end "
            "of each name: give --series steps to keep them in the order given, or --series "
            "seeds for runs of one recipe")
    if by_step:
        ordered = sorted(zip(paths, steps), key=lambda pair: pair[1] or 0)
        labels = [f"step-{step}" for _, step in ordered]
    else:
        ordered = list(zip(paths, steps))
        labels = [_label(Path(p.rstrip("/\\")).name if not is_endpoint_spec(p) else p)
                  for p, _ in ordered]
    unique: list[str] = []
    for label in labels:  # two seeds' folders may share a name under different parents
        candidate, count = label, 1
        while candidate in unique:
            count += 1
            candidate = f"{label}-{count}"
        unique.append(candidate)
    return [SeriesMember(label, path, step if by_step else None)
            for label, (path, step) in zip(unique, ordered)]
