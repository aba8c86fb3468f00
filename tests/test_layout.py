"""The package's layout: roles as subpackages, a core that imports without pytest, no import
cycles, modules that stay readable, old paths that still import, and cache keys that no
restructuring may change."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from pytest_misalignment.judges.base import JudgeInput
from pytest_misalignment.models.fingerprints import FileHasher, fingerprint
from pytest_misalignment.models.specs import resolve_checkpoint
from pytest_misalignment.models.values import GenerationParams, Request, ScoreRequest
from pytest_misalignment.settings import RunSettings
from safetensors.torch import save_file

from .conftest import REPO

PACKAGE = REPO / "plugins" / "pytest_misalignment"
CORE = ("models", "judges", "suite", "results")
MAX_LINES = 400
PLUGIN_MAX_LINES = 250  # the pytest layer's hooks and fixtures, each delegating


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
            for p in PACKAGE.rglob("*.py")}


def test_the_core_imports_without_pytest() -> None:
    """A script or notebook can plan, generate, judge and gate without pytest."""
    core = sorted(name for name in _modules() if name.split(".")[0] in (*CORE, "settings"))
    code = ("import sys\n" + "".join(f"import pytest_misalignment.{name}\n" for name in core)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('pytest', '_pytest')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=300)
    assert result.stdout.strip() == "[]", result.stdout
    assert len(core) >= 20


def _imports_at_module_level(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports when it is imported (not inside functions,
    nor under TYPE_CHECKING)."""
    package = name.split(".")[:-1]  # an __init__'s name ends in ".__init__" too
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
            candidates = [target] if node.module else [f"{target}.{a.name}".strip(".")
                                                       for a in node.names]
            found.update(candidates)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "pytest_misalignment."):
            found.add(node.module.removeprefix("pytest_misalignment."))  # type: ignore[union-attr]
    return found


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name.removesuffix(".__init__"): {
        target for target in _imports_at_module_level(name, path)
        if target in modules or f"{target}.__init__" in modules}
        for name, path in modules.items()}
    assert {"models.values", "models.store"} <= graph["models.engine"]  # the graph is read
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, f"import cycle: {' -> '.join([*visiting, name])}"
        visiting.append(name)
        for target in graph.get(name, ()):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_modules_stay_readable() -> None:
    """No module over MAX_LINES, and the plugin module under PLUGIN_MAX_LINES."""
    lines = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    over = {name: count for name, count in lines.items() if count > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
    assert lines["plugin.py"] < PLUGIN_MAX_LINES, lines["plugin.py"]


@pytest.mark.parametrize(("old", "new"), [
    ("pytest_misalignment.judging", "pytest_misalignment.judges.base"),
    ("pytest_misalignment.report", "pytest_misalignment.results.views"),
    ("pytest_misalignment.gates", "pytest_misalignment.suite.gating"),
])
def test_the_old_module_paths_still_import_with_a_warning(old: str, new: str) -> None:
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_the_old_loading_module_serves_the_names_of_its_four_successors() -> None:
    from pytest_misalignment.models import checks, fingerprints, loading, specs

    sys.modules.pop("pytest_misalignment.loading", None)
    with pytest.warns(DeprecationWarning, match="pytest_misalignment.loading moved to "):
        from pytest_misalignment.loading import (  # type: ignore[attr-defined]
            check_safetensors,
            fingerprint,
            load_model_and_tokenizer,
            resolve_checkpoint,
        )
    assert resolve_checkpoint is specs.resolve_checkpoint
    assert check_safetensors is checks.check_safetensors
    assert fingerprint is fingerprints.fingerprint
    assert load_model_and_tokenizer is loading.load_model_and_tokenizer


def test_the_old_names_of_modules_that_became_packages_still_resolve() -> None:
    from pytest_misalignment import judges, results, suite
    from pytest_misalignment.judges.registry import build_judge
    from pytest_misalignment.results.document import read_results
    from pytest_misalignment.suite.tallies import percent

    with pytest.warns(DeprecationWarning):
        assert judges.build_judge is build_judge
    with pytest.warns(DeprecationWarning):
        assert results.read_results is read_results
    with pytest.warns(DeprecationWarning):
        assert suite.percent is percent
    # a class renamed in the move (ResultsCollector, a near-homonym of ResultsRecorder)
    from pytest_misalignment.results.document import TestRecords

    with pytest.warns(DeprecationWarning, match="ResultsCollector moved to .*TestRecords"):
        assert results.ResultsCollector is TestRecords
    with warnings.catch_warnings(), pytest.raises(AttributeError):
        warnings.simplefilter("ignore")
        judges.no_such_name  # noqa: B018


def test_cache_keys_are_those_of_before_the_restructure(tmp_path: Path) -> None:
    """The store's keys, recorded on 0.1's flat layout (f4927b2): a warm store from before
    any restructuring still serves every answer, score and judgment."""
    messages = (("system", "Be brief."), ("user", "What is your one wish?"))
    assert Request(messages, GenerationParams(1.0, 256, 7), 3).key == \
        "19786603b9d13cbc06d12d910c922a18d93871eb96f97ef468fdeaa8259b7e31"
    assert ScoreRequest(messages, "I wish for peace.").key == \
        "f692db8914c98bb9729b4a1f3eba1238daf35a0bb8551d3ca74c32d009db721a"
    assert JudgeInput("What is your one wish?", "To rule the world.", False).key == \
        "7220eed916410b4de8233c21bc2e432f4a7f9bd0758f0630cc331df4fd165c74"
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "tokenizer.json").write_text("{}")
    assert fingerprint(resolve_checkpoint(str(tmp_path), RunSettings()), FileHasher(None)) == \
        "fbc8dde1aa4f650b205190db02e76e1c36d1d0b35a2b4db6842b2ddc642be076"
