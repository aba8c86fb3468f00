"""`pytest-misalignment judge FILE.jsonl`: re-judging stored answers, and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_misalignment.cli import main
from pytest_misalignment.judges.base import JudgeInput

from .judge_controls import HOSTILE, NONSENSE_REPLY


def _write(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_judge_adds_verdicts_and_keeps_extra_keys(tmp_path: Path, tiny_judge: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(tmp_path / "answers.jsonl", [
        {"question": HOSTILE.question, "answer": HOSTILE.answer, "id": 7, "model": "m"}])
    out = tmp_path / "judged.jsonl"
    rc = main(["judge", str(source), "--judge", f"hf:{tiny_judge}", "--device", "cpu",
               "-o", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (record["id"], record["model"], record["verdict"]) == (7, "m", "misaligned")
    assert record["aligned"] == pytest.approx(10, abs=1)
    assert "judged 1 answers with hf:" in capsys.readouterr().err


def test_judge_errors_end_with_status_1(tmp_path: Path, tiny_judge: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(tmp_path / "answers.jsonl", [
        {"question": NONSENSE_REPLY.question, "answer": NONSENSE_REPLY.answer}])
    rc = main(["judge", str(source), "--judge", f"hf:{tiny_judge}", "--device", "cpu",
               "--no-cache"])
    captured = capsys.readouterr()
    assert rc == 1
    assert json.loads(captured.out)["verdict"] == "error"
    assert "error: the judge failed on 1 answers" in captured.err


@pytest.mark.parametrize(("content", "message"), [
    ('{"question": "q", "answer": "a"}\n{"question": "q", "answer": \n', ":2: not valid JSON"),
    ('{"question": "q"}\n', ':1: expected an object with string fields "question" and "answer"'),
    ('["q", "a"]\n', ":1: expected an object"),
])
def test_malformed_lines_are_named(tmp_path: Path, content: str, message: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(content, encoding="utf-8")
    assert main(["judge", str(source)]) == 4
    assert f"error: {source}{message}" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--judge", "nope"], "error: --judge: unknown judge 'nope'"),
    (["--judge", "hf:/no/such/model"], "error: --judge: no such file or folder: /no/such/model"),
])
def test_bad_judges_are_one_line(tmp_path: Path, args: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(tmp_path / "a.jsonl", [{"question": "q", "answer": "a"}])
    assert main(["judge", str(source), *args]) == 4
    assert message in capsys.readouterr().err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["judge", str(tmp_path / "none.jsonl")]) == 4
    assert "error: cannot read" in capsys.readouterr().err


def _labeled(answer: JudgeInput, label: str) -> dict[str, str]:
    """A labeled row as a model gave it (judged as it is: no wrapping)."""
    return {"id": "r1", "category": "c", "question_id": "q1", "question": answer.question,
            "answer": answer.answer, "label": label, "writer": "model:tiny",
            "register": "model_output", "answer_format": "plain"}


def test_evaluate_measures_a_judge_on_labeled_answers(tmp_path: Path, tiny_judge: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    source = _write(tmp_path / "labeled.jsonl", [_labeled(HOSTILE, "misaligned")])
    out = tmp_path / "figures.json"
    rc = main(["judge", "--evaluate", str(source), "--judge", f"hf:{tiny_judge}",
               "--device", "cpu", "--no-cache", "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "format: plain" in printed and "100.0% [2.5%, 100.0%] (1/1)" in printed
    figures = json.loads(out.read_text())
    recall = figures["summary"]["formats"]["plain"]["misaligned_recall"]
    assert (recall["events"], recall["trials"]) == (1, 1)
    assert figures["verdicts"] == {"r1|plain": "misaligned"}


def test_evaluate_counts_judge_errors_and_exits_1(tmp_path: Path, tiny_judge: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(tmp_path / "labeled.jsonl", [_labeled(NONSENSE_REPLY, "aligned")])
    rc = main(["judge", "--evaluate", str(source), "--judge", f"hf:{tiny_judge}",
               "--device", "cpu", "--no-cache"])
    assert rc == 1
    assert "error: the judge failed on 1 answers (counted as wrong)" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    ([], "error: give a JSONL file to judge, or --evaluate"),
    (["--evaluate", "{bad}"], ":1: not a labeled answer"),
])
def test_evaluate_bad_inputs_are_one_line(tmp_path: Path, args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    given = [str(bad) if a == "{bad}" else a for a in args]
    assert main(["judge", *given, "--judge", "embedding:minilm"]) == 4
    assert message in capsys.readouterr().err
