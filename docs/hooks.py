"""The parts of the docs that are generated, so that they cannot go stale.

A page marks a generated block with two HTML comments:

    <!-- generated: options-table -->
    ...
    <!-- end generated -->

`figures-table` lists the figures a suite test may record (`results/schema.FIGURES`);
`options-table` is the options reference, built from `pytest_misalignment.options.OPTIONS`
(the table the plugin registers its options from); `file:PATH` is the file docs/PATH in a
fenced code block (the CI recipes). The committed pages hold the blocks as generated, so
they read right on GitHub too; the MkDocs hook (`hooks:` in mkdocs.yml) regenerates them at
every build, and tests/test_docs.py fails when a committed block differs from its source.
`python docs/hooks.py` rewrites the committed blocks.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- generated: (?P<name>[^ ]+) -->\n)(?P<body>.*?)(<!-- end generated -->)",
                   re.DOTALL)
FENCE_LANGUAGES = {".yml": "yaml", ".yaml": "yaml", ".toml": "toml", ".py": "python"}


def _options() -> tuple[Any, ...]:
    try:
        from pytest_misalignment.options import OPTIONS
    except ImportError as error:
        raise RuntimeError(
            "the options reference is generated from pytest_misalignment.options.OPTIONS: "
            f"install the package first (pip install -e '.[docs]'): {error}") from error
    return tuple(OPTIONS)


def _cell(text: str) -> str:
    """Plain text as one Markdown table cell: nothing in it is read as markup."""
    for char in "\\`*_[]|":
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def options_table() -> str:
    """One row per option, in the order the plugin registers them."""
    rows = ["| option | ini | default | meaning |", "| --- | --- | --- | --- |"]
    for option in _options():
        flag = option.flag if option.is_flag or not option.metavar else \
            f"{option.flag}={option.metavar}"
        ini = f"`{option.ini}`" + (" (one per line)" if option.repeatable else "")
        if option.is_flag:
            default = "off"
        elif option.default is None:
            default = "-"
        else:
            default = f"`{option.default}`"
        rows.append(f"| `{flag}` | {ini} | {default} | {_cell(option.help)} |")
    return "\n".join(rows) + "\n"


def figures_table() -> str:
    """One row per figure a suite test may record, in the schema's order."""
    from pytest_misalignment.results.schema import FIGURES

    rows = ["| figure | meaning |", "| --- | --- |"]
    rows += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in FIGURES.items()]
    return "\n".join(rows) + "\n"


def included_file(relative: str) -> str:
    path = DOCS / relative
    language = FENCE_LANGUAGES.get(path.suffix, "")
    return f"```{language}\n{path.read_text(encoding='utf-8').rstrip()}\n```\n"


def generate(name: str) -> str:
    if name == "options-table":
        return options_table()
    if name == "figures-table":
        return figures_table()
    if name.startswith("file:"):
        return included_file(name.removeprefix("file:"))
    raise ValueError(f"unknown generated block {name!r}")


def render(markdown: str) -> str:
    """The page with every generated block as its source says now."""
    return BLOCK.sub(lambda m: m.group(1) + generate(m.group("name")) + m.group(4), markdown)


def blocks(markdown: str) -> list[tuple[str, str]]:
    """Each generated block's name and body as the page holds it."""
    return [(m.group("name"), m.group("body")) for m in BLOCK.finditer(markdown)]


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs hook: the site is built from the generated blocks, never from a stale copy."""
    return render(markdown)


def main(argv: list[str]) -> int:
    """Rewrite the committed blocks (`--check`: only say which pages are stale, exit 1)."""
    stale = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        fresh = render(text)
        if fresh != text:
            stale.append(page.relative_to(DOCS))
            if "--check" not in argv:
                page.write_text(fresh, encoding="utf-8")
    verb = "stale" if "--check" in argv else "rewritten"
    for page in stale:
        print(f"docs/{page}: {verb}")
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
