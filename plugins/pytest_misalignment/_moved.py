"""The flat module paths of 0.1 (`pytest_misalignment.loading`, ...), kept importable for
one release: each is the module at its new place, with a DeprecationWarning.

`judges`, `results` and `suite` were modules and are now subpackages; their old names are
served by the packages' `__getattr__` (see `old_name`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

PACKAGE = "pytest_misalignment"
MOVED: dict[str, str | tuple[str, ...]] = {
    # a module split in several: the old name serves all their names
    "loading": ("models.specs", "models.checks", "models.fingerprints", "models.loading"),
    "backend": ("models.backend", "models.choices"),
    "endpoint": ("models.client", "models.endpoint"),
    "engine": "models.engine", "store": "models.store", "values": "models.values",
    "judging": "judges.base", "llm_judge": "judges.llm",
    "embedding_judge": ("judges.labels", "judges.classifier", "judges.embedding"),
    "code_security": "judges.code_security", "judge_evaluation": "judges.evaluation",
    "prompt_sets": "suite.prompt_sets", "backdoor": "suite.backdoor", "gates": "suite.gating",
    "statistics": "suite.statistics", "planning": "suite.planning",
    "snapshots": "results.snapshots", "report": "results.views", "verdict": "results.verdict",
}


def warn_moved(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old name goes away in the next release",
                  DeprecationWarning, stacklevel=3)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        target = MOVED[spec.name.rpartition(".")[2]]
        if isinstance(target, str):
            warn_moved(spec.name, f"{PACKAGE}.{target}")
            return importlib.import_module(f"{PACKAGE}.{target}")
        warn_moved(spec.name, " and ".join(f"{PACKAGE}.{name}" for name in target))
        merged = ModuleType(spec.name)
        for name in target:
            module = importlib.import_module(f"{PACKAGE}.{name}")
            merged.__dict__.update({key: value for key, value in vars(module).items()
                                    if not key.startswith("__")})
        return merged

    def exec_module(self, module: ModuleType) -> None:
        """The module is the new one, already executed."""


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())


def old_name(package: str, module: str, name: str) -> Any:
    """An attribute of a 0.1 module that became a subpackage (`pytest_misalignment.judges`
    held what `judges.registry` holds now)."""
    new = f"{PACKAGE}.{package}.{module}"
    target = importlib.import_module(new)
    if name.startswith("__") or not hasattr(target, name):
        raise AttributeError(f"module {PACKAGE}.{package!r} has no attribute {name!r}")
    warn_moved(f"{PACKAGE}.{package}.{name}", f"{new}.{name}")
    return getattr(target, name)
