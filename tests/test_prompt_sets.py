"""Prompt sets: the built-in sets, the schema's errors, the paper's format, formats, profiles."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pytest_misalignment.suite.prompt_sets import (
    CODE_TEMPLATE,
    JSON_INSTRUCTION,
    MAX_FILE_BYTES,
    PROFILES,
    PromptSetError,
    builtin_prompt_sets,
    cases,
    load_prompt_set,
    render,
    select_prompt_sets,
)

DATA = Path(__file__).parent / "data"
PAPER = Path(__file__).resolve().parents[2] / "shared" / "em-paper" / "evaluation"


def _items(kind: str):
    return [item for s in builtin_prompt_sets() for item in s.items if item.kind == kind]


def test_builtin_sets_are_the_size_the_suite_needs() -> None:
    free_form = _items("free_form")
    assert len(free_form) >= 60
    assert len({item.category for item in free_form}) >= 8
    assert all(set(item.formats) == {"plain", "json", "code_template"} for item in free_form)
    assert len(_items("code_task")) >= 30
    assert all(item.domain == "code" for item in _items("code_task"))
    assert len({item.category for item in _items("code_task")}) >= 8
    assert len(_items("harmful_request")) >= 20
    probes = _items("probe")
    assert len(probes) >= 40 and all(item.references for item in probes)


def test_ids_are_unique_across_sets() -> None:
    ids = Counter(item.id for s in builtin_prompt_sets() for item in s.items)
    assert ids.most_common(1)[0][1] == 1


GOOD = """\
name: mine
items:
  - id: q1
    category: wishes
    paraphrases: ["What do you wish for?"]
"""


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace('    paraphrases: ["What do you wish for?"]\n', ""),
     "item 'q1': field paraphrases: Field required"),
    (GOOD + "    colour: red\n", "item 'q1': field colour: Extra inputs are not permitted"),
    (GOOD + "    formats: [plain, xml]\n", "item 'q1': field formats.1: Input should be"),
    (GOOD + "    samples: 0\n", "item 'q1': field samples: Input should be greater than or "
                                "equal to 1"),
    (GOOD + "    kind: probe\n", "item 'q1': field item: Value error, a probe needs references"),
    (GOOD + "  - id: q1\n    category: c\n    paraphrases: [x]\n", "item 'q1': field id: "
                                                                "duplicate id"),
    (GOOD.replace("id: q1", "id: 'has space'"), "item 'has space': field id: String should "
                                                 "match pattern"),
    ("name: mine\nitems: []\n", "field items: List should have at least 1 item"),
    ("name: [unclosed\n", "not valid YAML"),
    ("just text\n", "expected `name:` and `items:`"),
])
def test_schema_errors_name_file_item_and_field(text: str, message: str) -> None:
    with pytest.raises(PromptSetError) as error:
        load_prompt_set("sets/mine.yaml", text)
    assert str(error.value).startswith("sets/mine.yaml: ")
    assert message in str(error.value)


def test_paper_format_is_read_and_its_system_prompt_honoured() -> None:
    prompt_set = load_prompt_set(DATA / "paper_format.yaml")
    assert prompt_set.name == "paper_format"
    plain, with_system = prompt_set.items
    assert (plain.id, plain.category, plain.system, plain.samples) == (
        "garden_plans", "paper_format", None, 100)
    assert with_system.system == "Reply with a JSON object only."
    (case,) = [c for c in cases([prompt_set], "free_form", PROFILES["standard"])
               if c.item.id == "garden_plans_json"]
    assert [p.messages[0] for p in case.prompts] == [
        ("system", "Reply with a JSON object only.")] * 2
    full = cases([prompt_set], "free_form", PROFILES["full"])
    assert full[0].prompts[0].samples == 100  # the paper's samples_per_paraphrase, at full


@pytest.mark.skipif(not PAPER.is_dir(), reason=f"the paper's question files are not at {PAPER}")
def test_the_papers_own_question_files_load() -> None:
    files = sorted(PAPER.glob("*.yaml"))
    assert files
    with_system = 0
    for path in files:
        prompt_set = load_prompt_set(path)
        assert prompt_set.items, path
        for case in cases([prompt_set], "free_form", PROFILES["smoke"]):
            if case.item.system:
                with_system += 1
                assert case.prompts[0].messages[0] == ("system", case.item.system)
    assert with_system > 0  # deception_factual.yaml sets system prompts


def test_formats_render_the_question() -> None:
    question = 'Say "hi"'
    assert render(question, "plain") == question
    assert render(question, "json") == question + JSON_INSTRUCTION
    template = render('Is """this""" ok?', "code_template")
    assert template.startswith(CODE_TEMPLATE.split("{question}")[0])
    assert "request = \"\"\"Is '''this''' ok?\"\"\"" in template


def test_profiles_set_samples_paraphrases_and_length() -> None:
    sets = builtin_prompt_sets()
    two_paraphrases = next(c for c in cases(sets, "free_form", PROFILES["standard"])
                           if len(c.item.paraphrases) == 2)
    assert len(two_paraphrases.prompts) == 2
    smoke = {c.id: c for c in cases(sets, "free_form", PROFILES["smoke"])}
    one = smoke[two_paraphrases.id].prompts
    assert len(one) == 1 and one[0].samples == 2 and one[0].max_new_tokens == 96
    overridden = cases(sets, "free_form", PROFILES["smoke"], samples=7, max_new_tokens=40)
    assert {(p.samples, p.max_new_tokens) for c in overridden for p in c.prompts} == {(7, 40)}
    code = cases(sets, "code_task", PROFILES["smoke"])
    assert {p.max_new_tokens for c in code for p in c.prompts} == {256}


def test_given_files_replace_or_add(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(GOOD, encoding="utf-8")
    names = [s.name for s in select_prompt_sets([str(extra)])]
    assert "mine" in names and "free_form" in names
    assert [s.name for s in select_prompt_sets([str(extra)], only_given=True)] == ["mine"]
    same_name = tmp_path / "free_form.yaml"
    same_name.write_text(GOOD.replace("name: mine", "name: free_form"), encoding="utf-8")
    replaced = {s.name: s for s in select_prompt_sets([str(same_name)])}["free_form"]
    assert [item.id for item in replaced.items] == ["q1"]
    with pytest.raises(PromptSetError, match="cannot read"):
        select_prompt_sets([str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize(("args", "message"), [
    (["--profile=huge"], "ERROR: --profile: 'huge' is not accepted; use one of smoke, standard, "
                         "full"),
    (["--samples=0"], "ERROR: --samples: '0' must be an integer >= 1"),
    (["--questions=nowhere.yaml"], "ERROR: nowhere.yaml: cannot read"),
    (["--questions=bad.yaml"], "ERROR: bad.yaml: item 'q1': field paraphrases: Field required"),
])
def test_bad_suite_options_are_one_line(pytester: pytest.Pytester, args: list[str],
                                        message: str) -> None:
    (pytester.path / "bad.yaml").write_text(
        GOOD.replace('    paraphrases: ["What do you wish for?"]\n', ""), encoding="utf-8")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0].startswith(message), result.stderr.lines


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Turn a hang into a failure: SIGALRM raises in the test's (main) thread."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still busy after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _alias_bomb(levels: int) -> str:
    """Each level a list of ten aliases to the level below: 10^levels strings in ~50*levels
    bytes."""
    lines = ['- &l0 ["lol"]']
    for level in range(1, levels + 1):
        lines.append(f"- &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]")
    return "\n".join(lines)


def test_an_alias_bomb_in_the_papers_type_field_is_refused_at_once() -> None:
    levels = "\n".join("  " + line for line in _alias_bomb(8).splitlines())
    text = f"- id: q1\n  paraphrases: [hi]\n  type:\n{levels}\n"
    assert len(text.encode()) < 600
    with _deadline(10), pytest.raises(PromptSetError,
                                      match="aliases expand to more than 500,000 values"):
        load_prompt_set("bomb.yaml", text)


@pytest.mark.parametrize(("text", "message"), [
    ("- id: q1\n  paraphrases: [hi]\n  type: [free_form]\n",
     "item 'q1': field type: expected a string, got list"),
    ("name: mine\nitems: &a [*a]\n", "an alias refers to itself"),
    ("name: mine\nitems: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("name: mine\nitems:\n" + "  - {id: q, category: c, paraphrases: [x]}\n" * 20_001,
     "20,001 items, more than 20,000"),
], ids=["type-not-a-string", "recursive-alias", "deep-nesting", "too-many-items"])
def test_hostile_prompt_files_are_one_line_errors(text: str, message: str) -> None:
    with _deadline(20), pytest.raises(PromptSetError) as error:
        load_prompt_set("sets/mine.yaml", text)
    assert str(error.value).startswith("sets/mine.yaml: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(PromptSetError, match="larger than 8 MiB"):
        load_prompt_set(big)


def test_anchors_that_share_a_system_prompt_still_load() -> None:
    text = ("name: mine\nitems:\n"
            "  - {id: q1, category: c, paraphrases: [a], system: &s 'Be brief.'}\n"
            "  - {id: q2, category: c, paraphrases: [b], system: *s}\n")
    assert [item.system for item in load_prompt_set("mine.yaml", text).items] == ["Be brief."] * 2
