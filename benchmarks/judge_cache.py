"""The judge's encoder with its features kept on disk, for the judge benchmarks.

Encoding is most of the cost of training and measuring the embedding judge (SmolLM2 hidden
states, about 5 answers a second on 2 cores); the features of each (question, answer) are
kept in benchmarks/judge_heldout/.cache/ (not committed) so a second measurement is quick.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pytest_misalignment.judges.base import JudgeInput
from pytest_misalignment.judges.embedding import HiddenStateEncoder
from pytest_misalignment.models.fingerprints import FileHasher
from pytest_misalignment.models.loading import converted_gguf_folder, models_dir_for
from pytest_misalignment.models.specs import find_bundled_gguf
from pytest_misalignment.settings import RunSettings

CACHE = Path(__file__).resolve().parent / "judge_heldout" / ".cache"


def default_encoder() -> HiddenStateEncoder:
    """The default judge's encoder: the embedded SmolLM2-135M-Instruct, converted once."""
    gguf = find_bundled_gguf()
    sha = FileHasher(None).sha256(gguf)
    return HiddenStateEncoder(converted_gguf_folder(gguf, models_dir_for(RunSettings()), sha),
                              sha)


class CachedEncoder:
    """An encoder whose features are kept on disk by input text."""

    def __init__(self, encoder: HiddenStateEncoder) -> None:
        self.encoder = encoder
        self.fingerprint = encoder.fingerprint
        CACHE.mkdir(parents=True, exist_ok=True)
        self.path = CACHE / (hashlib.sha256(encoder.fingerprint.encode()).hexdigest()[:16]
                             + ".npz")
        self.known: dict[str, np.ndarray] = {}
        if self.path.exists():
            stored = np.load(self.path)
            self.known = dict(zip(stored["keys"].tolist(), stored["features"]))

    @staticmethod
    def key(item: JudgeInput) -> str:
        return hashlib.sha256(f"{item.question}\0{item.answer}".encode()).hexdigest()

    def encode(self, items: Sequence[JudgeInput],
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        missing = list({self.key(i): i for i in items if self.key(i) not in self.known}
                       .values())
        if missing:
            fresh = self.encoder.encode(missing, progress)
            self.known.update(zip(map(self.key, missing), fresh))
            np.savez(self.path, keys=np.asarray(list(self.known)),
                     features=np.stack(list(self.known.values())))
        elif progress:
            progress(len(items))
        return np.stack([self.known[self.key(i)] for i in items])
