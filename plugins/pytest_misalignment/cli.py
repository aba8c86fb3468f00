"""The `pytest-misalignment` console script: run the installed suite, prepare the default
model and judge, and judge stored answers."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .options import Option
    from .settings import RunSettings


def suite_path() -> Path:
    """Where the installed behavioural suite lives (model_tests/ of a clone, when editable)."""
    return Path(str(resources.files("pytest_misalignment.model_tests")))


def joined_option_values(args: Sequence[str]) -> list[str]:
    """`--questions PATH` as `--questions=PATH`: pytest looks for its rootdir before the
    plugin's options exist and would take a separate PATH for a test path."""
    from .options import VALUED_FLAGS

    joined: list[str] = []
    words = iter(args)
    for word in words:
        value = next(words, None) if word in VALUED_FLAGS else None
        joined.append(word if value is None else f"{word}={value}")
    return joined


def _run(pytest_args: Sequence[str]) -> int:
    import pytest

    # The plugin loads through its pytest11 entry point. Results are cached in the current
    # folder, never inside the installed package.
    cache = Path.cwd() / ".pytest_cache"
    return int(pytest.main([str(suite_path()), "-o", f"cache_dir={cache}",
                            *joined_option_values(pytest_args)]))


def add_option(parser: argparse.ArgumentParser, option: Option, note: str = "") -> None:
    """One of the plugin's options on a subcommand, with the flag, help and metavar of the
    option table (`note`: what it means to this command). The table's default applies when
    the settings are built (settings_of), so argparse keeps None for "not given": whether a
    value was given matters (e.g. --judge-api-key-env's)."""
    help_text = option.help_with_default + (f"; {note}" if note else "")
    if option.is_flag:
        parser.add_argument(option.flag, action="store_true", default=None, dest=option.dest,
                            help=help_text)
    else:
        parser.add_argument(option.flag, action="append" if option.repeatable else "store",
                            default=None, dest=option.dest, metavar=option.metavar,
                            help=help_text)


def settings_of(args: argparse.Namespace) -> RunSettings:
    """The settings a subcommand's options give, parsed as a pytest run parses them (the
    options a subcommand does not have are at their defaults)."""
    from .settings import settings_from

    return settings_from(lambda option: getattr(args, option.dest, None))


def _prepare(args: argparse.Namespace) -> int:
    from .models.fingerprints import FileHasher
    from .models.loading import converted_gguf_folder, models_dir_for
    from .models.specs import CheckpointError, Endpoint, resolve_source
    from .options import OPTIONS_BY_INI
    from .settings import SettingsError

    spec = args.spec
    try:
        settings = settings_of(args)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    # `--judge ''` prepares no judge (elsewhere an empty value is the default judge).
    judge = "" if getattr(args, OPTIONS_BY_INI["judge"].dest) == "" else settings.judge
    try:
        checkpoint = resolve_source(spec, settings)
        if checkpoint.kind != "gguf":
            what = "a served model" if isinstance(checkpoint, Endpoint) else (
                f"{checkpoint.kind} loads as it is")
            print(f"{spec}: nothing to prepare ({what})")
            return 0
        assert not isinstance(checkpoint, Endpoint)
        folder = converted_gguf_folder(checkpoint.path, models_dir_for(settings),
                                       FileHasher(None).sha256(checkpoint.path))
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    print(f"{spec}: ready at {folder}")
    if judge:
        from .judges.base import JudgeError
        from .judges.evaluation import describe_accuracy
        from .judges.registry import build_judge, judge_accuracy

        try:
            built = build_judge(settings)
            accuracy = judge_accuracy(built)
        except JudgeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 4
        described = describe_accuracy({'spec': judge, 'accuracy': accuracy})
        print(f"judge {judge}: ready ({described})")
    return 0


class InputError(Exception):
    """A line of the input file cannot be judged; the message names the line."""


def read_answers(path: Path) -> list[dict[str, Any]]:
    """The JSONL records to judge: objects with string `question` and `answer`."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise InputError(f"{path}:{number}: not valid JSON ({error})") from None
        if not isinstance(record, dict) or not all(
                isinstance(record.get(key), str) for key in ("question", "answer")):
            raise InputError(f'{path}:{number}: expected an object with string fields '
                             f'"question" and "answer"')
        records.append(record)
    return records


def _judge(args: argparse.Namespace) -> int:
    from .judges.base import JudgeError, JudgeInput
    from .judges.evaluation import describe_accuracy
    from .judges.registry import JudgeRunner, build_judge, judge_accuracy, thresholds_of
    from .models.store import PYTEST_CACHE_FOLDER, Store, store_path
    from .settings import SettingsError

    if not args.file and not args.evaluate:
        print("error: give a JSONL file to judge, or --evaluate", file=sys.stderr)
        return 4
    try:
        records = [] if args.evaluate else read_answers(Path(args.file))
        settings = settings_of(args)
        judge = build_judge(settings)
    except (InputError, SettingsError, JudgeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    # The store a pytest run in this folder uses, when there is one: judgments are shared.
    project_cache = Path.cwd() / ".pytest_cache" / "d" / PYTEST_CACHE_FOLDER
    store = Store(store_path(settings.no_cache, settings.cache_dir,
                             project_cache if project_cache.is_dir() else None))
    if args.evaluate:
        try:
            return _evaluate(args, JudgeRunner(judge, store, thresholds=thresholds_of(settings)))
        finally:
            store.close()
    items = [JudgeInput(r["question"], r["answer"], bool(r.get("expects_code", False)))
             for r in records]
    try:
        judgments = JudgeRunner(judge, store,
                                thresholds=thresholds_of(settings)).judge_many(items)
    except JudgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    finally:
        store.close()
    output: IO[str] = (open(args.output, "w", encoding="utf-8") if args.output  # noqa: SIM115
                       else sys.stdout)
    try:
        for record, judgment in zip(records, judgments):
            record.update(aligned=judgment.aligned, coherent=judgment.coherent,
                          verdict=judgment.verdict)
            output.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if output is not sys.stdout:
            output.close()
    verdicts = Counter(j.verdict for j in judgments)
    print(f"judged {len(judgments)} answers with {judge.spec}: "
          + ", ".join(f"{name} {count}" for name, count in sorted(verdicts.items())),
          file=sys.stderr)
    print(f"judge {judge.spec}: "
          f"{describe_accuracy({'spec': judge.spec, 'accuracy': judge_accuracy(judge)})}",
          file=sys.stderr)
    errors = [j for j in judgments if j.verdict == "error"]
    if errors:
        print(f"error: the judge failed on {len(errors)} answers; first: {errors[0].detail}",
              file=sys.stderr)
        return 1
    return 0


def _evaluate(args: argparse.Namespace, runner: Any) -> int:
    """The judge on the held-out set (or on the labeled file given): its error rates per
    answer format, writer and category, with intervals. Exit 1 when it failed on answers."""
    from .judges.base import JudgeError
    from .judges.evaluation import cases, held_out_set, read_labeled_file, summarize, table

    try:
        rows = read_labeled_file(Path(args.file)) if args.file else held_out_set()
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    chosen = cases(rows)
    try:
        judgments = runner.judge_many([case.judge_input() for case in chosen])
    except JudgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    verdicts = {case.key: judgment.verdict for case, judgment in zip(chosen, judgments)}
    summary = summarize(verdicts, chosen)
    print(f"judge {runner.judge.spec} on {len(chosen)} labeled answers "
          f"({args.file or 'the held-out set, fixtures/judge_heldout'}); headline writers "
          f"{', '.join(summary['writers'])}:")
    for line in table(summary):
        print(line)
    if args.output:
        Path(args.output).write_text(json.dumps(
            {"judge": runner.judge.spec, "fingerprint": runner.judge.fingerprint,
             "summary": summary, "verdicts": verdicts}, indent=1) + "\n", encoding="utf-8")
        print(f"figures: {args.output}")
    errors = [j for j in judgments if j.verdict == "error"]
    if errors:
        print(f"error: the judge failed on {len(errors)} answers (counted as wrong); first: "
              f"{errors[0].detail}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .options import DEFAULT_MODEL, OPTIONS_BY_INI

    parser = argparse.ArgumentParser(
        prog="pytest-misalignment",
        description="Behavioural tests that gate fine-tuned language models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run the installed suite; other arguments go to pytest (e.g. --model PATH)",
        add_help=False,
    )
    run.add_argument("pytest_args", nargs=argparse.REMAINDER)
    prepare = commands.add_parser(
        "prepare", help="convert a GGUF checkpoint (default: the embedded smollm2-135m) once, "
        "ahead of a run")
    prepare.add_argument("spec", nargs="?", default=DEFAULT_MODEL)
    add_option(prepare, OPTIONS_BY_INI["model_cache_dir"])
    add_option(prepare, OPTIONS_BY_INI["judge"], note="trained ahead of a run; '' for none")
    judge = commands.add_parser(
        "judge", help="judge stored answers: JSONL lines {question, answer} in, the same lines "
        "with aligned, coherent and verdict added out")
    judge.add_argument("file", nargs="?",
                       help="JSONL file of {\"question\": ..., \"answer\": ...} lines (with "
                       "--evaluate: labeled rows as in fixtures/judge_labels/RUBRIC.md; default "
                       "the held-out set)")
    judge.add_argument("-o", "--output", help="write here instead of stdout (with --evaluate: "
                       "the figures and every verdict, as JSON)")
    judge.add_argument("--evaluate", action="store_true",
                       help="measure the judge on labeled answers it was not trained on: "
                       "accuracy, false-positive rate and recall per answer format, with "
                       "95%% intervals")
    # The judge's own options, as a pytest run reads them.
    for ini in ("judge", "judge_base_url", "judge_api_key_env", "device", "model_cache_dir",
                "no_cache"):
        add_option(judge, OPTIONS_BY_INI[ini])
    report = commands.add_parser(
        "report", help="render the HTML report (and Markdown summary) of a saved results JSON")
    report.add_argument("results", help="a run's results JSON (pytest --report-json)")
    report.add_argument("-o", "--output", required=True, help="HTML file to write")
    report.add_argument("--md", default=None, help="also write a Markdown summary here")
    compare = commands.add_parser(
        "compare", help="what changed between two runs: outcomes and rates per test")
    compare.add_argument("before", help="the earlier run's results JSON")
    compare.add_argument("after", help="the later run's results JSON")
    compare.add_argument("--html", default=None, help="also write the comparison as HTML")
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        return _run([*extra, *args.pytest_args])
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "judge":
        return _judge(args)
    if args.command == "report":
        return _report(args)
    if args.command == "compare":
        return _compare(args)
    return _prepare(args)


def _report(args: argparse.Namespace) -> int:
    from .results.document import ResultsError, read_results, write_text
    from .results.views import render_html, render_markdown

    try:
        document = read_results(Path(args.results))
    except ResultsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    write_text(Path(args.output), render_html(document))
    print(f"report: {args.output}")
    if args.md:
        write_text(Path(args.md), render_markdown(document, args.output))
        print(f"summary: {args.md}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Prints what changed; exit code 1 when a test newly fails, so CI can stop on it."""
    from .results.document import ResultsError, read_results, write_text
    from .results.views import compare, compare_text, render_compare_html

    try:
        before, after = read_results(Path(args.before)), read_results(Path(args.after))
    except ResultsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    difference = compare(before, after)
    sys.stdout.write(compare_text(difference))
    if args.html:
        write_text(Path(args.html), render_compare_html(difference))
        print(f"comparison: {args.html}")
    return 1 if difference["newly_failing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
