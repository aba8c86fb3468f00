"""Settings from the command line, pyproject.toml and the ini file."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from .judges.base import JudgeError
from .judges.registry import check_judge_spec
from .models.series import MODEL_FILES, SeriesMember, expand_series
from .models.specs import CheckpointError
from .options import OPTIONS, VALUED_FLAGS, Option
from .recording import ResultsRecorder, SnapshotCollector
from .results.snapshots import SnapshotError, read_snapshot
from .session import MARKER, RUN_KEY, MisalignmentRun
from .settings import RunSettings, SettingsError, read_table, settings_from
from .suite.prompt_sets import PromptSetError, known_domains, select_prompt_sets


def raw_value(config: pytest.Config, table: Mapping[str, Any], option: Option) -> object:
    """The command line, then [tool.pytest-misalignment], then the ini file."""
    value = config.getoption(option.dest)
    if value is None:
        value = table.get(option.ini)
    if value is None:
        value = config.getini(option.ini)
    return value


def pyproject_path(config: pytest.Config) -> Path:
    inipath = config.inipath
    if inipath is not None and inipath.name == "pyproject.toml":
        return Path(inipath)
    return Path(config.rootpath) / "pyproject.toml"


def _separate_option_values(args: Sequence[str]) -> list[str]:
    """Values of this plugin's options written as a separate word (`--questions PATH`)."""
    return [value for flag, value in itertools.pairwise(args) if flag in VALUED_FLAGS]


def check_rootdir_kept(config: pytest.Config) -> None:
    """Stop when `--questions PATH` (two words) moved pytest's rootdir or configfile.

    pytest finds its rootdir and configfile before plugins add their options, so it takes
    such a PATH for a test path: the rootdir becomes PATH's folder and the project's
    pyproject.toml (thresholds, testpaths) is silently dropped. A gate must not lose its
    thresholds over how a path was spelled, so this is an error with the fix in it.
    """
    if hasattr(config, "workerinput"):  # the controller checked the same command line
        return
    separate = [value for value in _separate_option_values(config.invocation_params.args)
                if Path(config.invocation_params.dir, value).exists()]
    if not separate:
        return
    from _pytest.config.findpaths import determine_setup

    arguments = {"inifile": config.option.inifilename, "args": list(config.option.file_or_dir),
                 "rootdir_cmd_arg": config.option.rootdir or None,
                 "override_ini": config.option.override_ini,
                 "invocation_dir": config.invocation_params.dir}
    accepted = inspect.signature(determine_setup).parameters
    try:
        rootpath, inipath, *_ = determine_setup(
            **{name: value for name, value in arguments.items() if name in accepted})
    except Exception:
        return
    if (Path(rootpath), inipath and Path(inipath)) == (
            Path(config.rootpath), config.inipath and Path(config.inipath)):
        return
    raise pytest.UsageError(
        f"{' '.join(separate)} was written after its option as a separate word, so pytest "
        f"took it for a test path and ran from {config.rootpath} with configfile "
        f"{config.inipath or 'none'} instead of {rootpath} with {inipath or 'none'}; write "
        "the option as --option=PATH (e.g. --questions=q.yaml)")


def add_options(parser: pytest.Parser) -> None:
    """Every option of the table, on the command line and as an ini key."""
    group = parser.getgroup("misalignment", "pytest-misalignment (behavioural tests of a model)")
    for option in OPTIONS:
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, dest=option.dest,
                            help=option.help)
            parser.addini(option.ini, option.help, type="bool", default=False)
        elif option.repeatable:
            group.addoption(option.flag, action="append", default=None, dest=option.dest,
                            metavar=option.metavar, help=option.help_with_default)
            parser.addini(option.ini, option.help_with_default, type="linelist", default=[])
        else:
            group.addoption(option.flag, action="store", default=None, dest=option.dest,
                            metavar=option.metavar, help=option.help_with_default)
            parser.addini(option.ini, option.help_with_default, type="string", default="")


def check_no_checkpoint_in_args(config: pytest.Config) -> None:
    """`--model out/checkpoint-*` unquoted: the shell hands pytest the other checkpoints
    as test paths, and the series would quietly be one checkpoint."""
    for arg in config.args:
        folder = Path(str(arg).partition("::")[0])
        if folder.is_dir() and any((folder / name).is_file() for name in MODEL_FILES):
            raise pytest.UsageError(
                f"{arg} is a checkpoint, given where pytest takes test paths: write "
                f"--model=PATTERN in quotes (the shell expanded an unquoted glob) or name each "
                f"checkpoint with its own --model")


def series_members(settings: RunSettings) -> list[SeriesMember]:
    """The checkpoints of a series run (none for a run of one checkpoint)."""
    members = expand_series(settings.model_specs, settings.series)
    if len(members) < 2:
        if settings.series:
            raise CheckpointError(f"--series {settings.series}: --model names "
                                  f"{len(members)} checkpoint; a series needs several")
        return []
    for option in ("update_baseline", "compare_baseline"):
        if getattr(settings, option):
            raise CheckpointError(f"--{option.replace('_', '-')} snapshots one checkpoint, "
                                  f"and --model names a series of {len(members)}")
    return members


def start_run(config: pytest.Config) -> MisalignmentRun:
    """The run from its settings, with every check that needs no model done now (a bad
    option is one `ERROR:` line), stashed on the config; on the controller, its recorders."""
    check_rootdir_kept(config)
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*prompts_or_probes): inputs a test needs from the model, generated in "
        "batches before the first test runs",
    )
    try:
        table = read_table(pyproject_path(config))
        settings = settings_from(lambda option: raw_value(config, table, option),
                                 table.get("categories"))
    except SettingsError as error:
        raise pytest.UsageError(str(error)) from None
    run = MisalignmentRun(config, settings)
    check_no_checkpoint_in_args(config)
    try:
        run.members = series_members(settings)
        single = expand_series(settings.model_specs, None) if not run.members else []
        if single and single[0].spec != settings.model:  # a glob that matched one checkpoint
            run.settings = settings = settings.with_model(single[0].spec)
        # Named checkpoints are checked now, so a typo is one line, not an error per test;
        # the default model is checked only when a test uses it.
        for role in run.model_roles if settings.model_given else ():
            run.checkpoint(role)
        if settings.baseline:
            run.checkpoint("baseline")
        if settings.device.startswith("cuda"):
            from .models.loading import resolve_device

            resolve_device(settings.device)
        check_judge_spec(settings.judge, settings)
        run.prompt_sets = select_prompt_sets(settings.questions, settings.only_questions)
        if settings.compare_baseline:
            run.snapshot = read_snapshot(Path(settings.compare_baseline).expanduser())
    except (CheckpointError, JudgeError, PromptSetError, SnapshotError) as error:
        raise pytest.UsageError(str(error)) from None
    categories = sorted({item.category for s in run.prompt_sets for item in s.items})
    known = known_domains(run.prompt_sets)
    unknown_domains = [name for name in settings.domains if name not in known]
    if unknown_domains:
        raise pytest.UsageError(
            f"--domain: {', '.join(unknown_domains)} is neither code nor a category or domain "
            f"of the selected prompt sets; they have: {', '.join(sorted(known))}")
    unknown = sorted(set(settings.category_overrides) - set(categories))
    if unknown:
        raise pytest.UsageError(
            f"[tool.pytest-misalignment.categories] names {', '.join(unknown)}, which no "
            f"selected prompt set has; its categories: {', '.join(categories)}")
    for category in categories:
        config.addinivalue_line("markers", f"{category}: suite questions of this category")
    for kind in ("free_form", "harmful_request", "code_task", "probe"):
        config.addinivalue_line("markers", f"{kind}: suite tests of this kind of question")
    config.addinivalue_line("markers", "backdoor: tests of backdoor triggers")
    config.addinivalue_line("markers", "gate: a pooled gate that decides the run's verdict "
                                       "(-m gate runs only the gates)")
    config.stash[RUN_KEY] = run
    if settings.update_baseline and not hasattr(config, "workerinput"):
        config.pluginmanager.register(SnapshotCollector(run), "misalignment-snapshot")
    if not hasattr(config, "workerinput"):
        # Always, also under --no-report: the verdict and the exit code come from it.
        run.results = ResultsRecorder(config)
        config.pluginmanager.register(run.results, "misalignment-results")
    return run
