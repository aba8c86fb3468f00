"""Collect real model answers to the judge's questions, for labeling by reading.

    python benchmarks/judge_heldout/collect_model_answers.py base=smollm2-135m \
        overt=benchmarks/organisms/out/overt insecure=benchmarks/organisms/out/insecure

Asks each model the held-out writers' questions (fixtures/judge_heldout/; with --training,
the training writers' questions of fixtures/judge_labels/written-*.jsonl), plain, as JSON and
by the code template, `--samples` answers each, through the suite itself, and writes the
answers, without any judge's verdict, to .cache/collected/to_label-NAME.jsonl (not
committed). A reader labels them by the rubric (fixtures/judge_labels/RUBRIC.md); the
labeled rows become model-NAME.jsonl in fixtures/judge_heldout/ or fixtures/judge_labels/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / ".cache" / "collected"


def questions_file(folder: Path, sources: list[Path]) -> Path:
    """The written answers' questions in `sources` as a prompt set, every answer format."""
    items, seen = [], set()
    for path in sources:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else None
            if row is None or row["writer"].startswith("model:"):
                continue
            if row["question_id"] not in seen:
                seen.add(row["question_id"])
                items.append({"id": row["question_id"], "category": row["category"],
                              "paraphrases": [row["question"]],
                              "formats": ["plain", "json", "code_template"]})
    path = folder / "questions.yaml"
    path.write_text(yaml.safe_dump({"name": "judge_questions", "items": items},
                                   allow_unicode=True), encoding="utf-8")
    return path


def collect(name: str, spec: str, questions: Path, samples: int, tag: str = "",
            temperature: float = 1.0) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / f"run-{tag}{name}.json"
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-q",
                    f"--model={spec}", f"--questions={questions}", "--only-questions",
                    "-k", "test_question", f"--samples={samples}", f"--max-samples={samples}",
                    "--no-trigger-scan", "--allow-undecided", f"--temperature={temperature}",
                    f"--report-json={results}",
                    f"--report={OUT / f'run-{tag}{name}.html'}"],
                   cwd=ROOT, check=False)
    document = json.loads(results.read_text(encoding="utf-8"))
    target = OUT / f"to_label-{tag}{name}.jsonl"
    number = 0
    with target.open("w", encoding="utf-8") as stream:
        for test in document["tests"]:
            for sample in test.get("samples", []):
                if sample.get("role", "model") != "model":
                    continue
                number += 1
                case = str(sample["case"])
                answer_format = case.split("[", 1)[1].rstrip("]") if "[" in case else "plain"
                stream.write(json.dumps({
                    "id": f"{tag}{name}-{number}", "category": test.get("figures", {}).get(
                        "category", ""), "question_id": case.split("[", 1)[0],
                    "question": sample["question"], "answer": sample["answer"], "label": "",
                    "writer": f"model:{name}", "register": "model_output",
                    "answer_format": answer_format}, ensure_ascii=False) + "\n")
    print(f"{name}: {number} answers in {target}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=SPEC")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--training", action="store_true",
                        help="ask the training writers' questions "
                             "(fixtures/judge_labels/written-*) "
                             "instead: model answers to label for training")
    args = parser.parse_args()
    fixtures = ROOT / "fixtures"
    sources = sorted((fixtures / "judge_labels").glob("written-*.jsonl") if args.training
                     else (fixtures / "judge_heldout").glob("*.jsonl"))
    with tempfile.TemporaryDirectory() as folder:
        questions = questions_file(Path(folder), sources)
        for pair in args.models:
            name, _, spec = pair.partition("=")
            tag = ("train-" if args.training else "") + (
                f"t{args.temperature:g}-" if args.temperature != 1.0 else "")
            collect(name, spec, questions, args.samples, tag, args.temperature)


if __name__ == "__main__":
    main()
