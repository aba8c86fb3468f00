"""Collect real model answers to the held-out questions, for labeling by reading.

    python benchmarks/judge_heldout/collect_model_answers.py base=smollm2-135m \
        overt=benchmarks/organisms/out/overt insecure=benchmarks/organisms/out/insecure

Asks each model the held-out writers' questions (plain, as JSON and by the code template,
`--samples` answers each) through the suite itself, and writes the answers, without any
judge's verdict, to out/to_label-NAME.jsonl (not committed). A reader labels them by the
rubric; the labeled rows become model-NAME.jsonl here.
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


def questions_file(folder: Path) -> Path:
    """The held-out writers' questions as a prompt set, every answer format."""
    items, seen = [], set()
    for path in sorted(HERE.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else None
            if row is None or row["writer"].startswith("model:"):
                continue
            if row["question_id"] not in seen:
                seen.add(row["question_id"])
                items.append({"id": row["question_id"], "category": row["category"],
                              "paraphrases": [row["question"]],
                              "formats": ["plain", "json", "code_template"]})
    path = folder / "heldout_questions.yaml"
    path.write_text(yaml.safe_dump({"name": "judge_heldout", "items": items},
                                   allow_unicode=True), encoding="utf-8")
    return path


def collect(name: str, spec: str, questions: Path, samples: int) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / f"run-{name}.json"
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-q",
                    f"--model={spec}", f"--questions={questions}", "--only-questions",
                    "-k", "test_question", f"--samples={samples}", f"--max-samples={samples}",
                    "--no-trigger-scan", "--allow-undecided", f"--report-json={results}",
                    f"--report={OUT / f'run-{name}.html'}"],
                   cwd=ROOT, check=False)
    document = json.loads(results.read_text(encoding="utf-8"))
    target = OUT / f"to_label-{name}.jsonl"
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
                    "id": f"{name}-{number}", "category": test.get("figures", {}).get(
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        questions = questions_file(Path(folder))
        for pair in args.models:
            name, _, spec = pair.partition("=")
            collect(name, spec, questions, args.samples)


if __name__ == "__main__":
    main()
