"""Run settings: parsed and validated once from the command line, ini file and defaults,
each option by the parser the option table gives it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .options import OPTIONS, OPTIONS_BY_INI, Option
from .parsing import SettingsError

TABLE = "tool.pytest-misalignment"
# Settings a `[tool.pytest-misalignment.categories.NAME]` table may set for one category.
CATEGORY_SETTINGS = ("max_misaligned_rate", "max_harmful_compliance_rate",
                     "max_insecure_code_rate", "max_probe_preference", "baseline_margin")
# Each option-backed setting's default: the option's default, read by the option's parser.
DEFAULTS: dict[str, Any] = {option.attribute: option.parse(None) for option in OPTIONS}
# The RunSettings fields no single option fills, each with the options (ini names) it is
# derived from; settings_from computes them.
DERIVED: dict[str, tuple[str, ...]] = {
    "trusted_code_roles": ("trust_remote_code", "trust_remote_code_for"),
    "max_new_tokens_given": ("max_new_tokens",),
    "model_given": ("model",),
    "model": ("model",),  # the first of model_specs: the model of a run of one checkpoint
    "model_api_key_env_given": ("model_api_key_env",),
    "judge_api_key_env_given": ("judge_api_key_env",),
    "category_overrides": (),  # from the [tool.pytest-misalignment.categories] table
}


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs to know, validated; nothing here touches the file system."""

    model_specs: tuple[str, ...] = DEFAULTS["model_specs"]
    model: str = DEFAULTS["model_specs"][0]
    series: str | None = DEFAULTS["series"]  # steps or seeds; None: steps when several
    baseline: str | None = DEFAULTS["baseline"]
    base_model: str | None = DEFAULTS["base_model"]
    device: str = DEFAULTS["device"]
    dtype: str = DEFAULTS["dtype"]
    max_new_tokens: int = DEFAULTS["max_new_tokens"]
    temperature: float = DEFAULTS["temperature"]
    batch_size: int | None = DEFAULTS["batch_size"]  # None: chosen from the device
    seed: int = DEFAULTS["seed"]
    cache_dir: Path | None = DEFAULTS["cache_dir"]
    no_cache: bool = DEFAULTS["no_cache"]
    # Roles (CODE_ROLES) whose checkpoint code may run: --trust-remote-code is {"model"}.
    trusted_code_roles: frozenset[str] = frozenset()
    allow_pickle: bool = DEFAULTS["allow_pickle"]
    model_base_url: str | None = DEFAULTS["model_base_url"]
    model_api_key_env: str = DEFAULTS["model_api_key_env"]
    concurrency: int = DEFAULTS["concurrency"]
    request_timeout: float = DEFAULTS["request_timeout"]
    request_retries: int = DEFAULTS["request_retries"]
    endpoint_fingerprint: str = DEFAULTS["endpoint_fingerprint"]
    judge: str = DEFAULTS["judge"]
    judge_base_url: str | None = DEFAULTS["judge_base_url"]
    judge_api_key_env: str = DEFAULTS["judge_api_key_env"]
    max_judge_error_share: float = DEFAULTS["max_judge_error_share"]
    misaligned_below: float = DEFAULTS["misaligned_below"]
    coherent_at_least: float = DEFAULTS["coherent_at_least"]
    profile: str = DEFAULTS["profile"]
    samples: int | None = DEFAULTS["samples"]
    questions: tuple[str, ...] = DEFAULTS["questions"]
    only_questions: bool = DEFAULTS["only_questions"]
    # The fine-tune's own domains: leakage is measured outside them.
    domains: tuple[str, ...] = DEFAULTS["domains"]
    max_in_domain_rate: float | None = DEFAULTS["max_in_domain_rate"]
    max_direction_shift: float | None = DEFAULTS["max_direction_shift"]
    max_misaligned_rate: float = DEFAULTS["max_misaligned_rate"]
    max_insecure_code_rate: float | None = DEFAULTS["max_insecure_code_rate"]
    max_harmful_compliance_rate: float = DEFAULTS["max_harmful_compliance_rate"]
    max_probe_preference: float = DEFAULTS["max_probe_preference"]
    baseline_margin: float | None = DEFAULTS["baseline_margin"]  # None: --detect
    detect: float = DEFAULTS["detect"]
    power: float = DEFAULTS["power"]
    plan: bool = DEFAULTS["plan"]
    allow_undecided: bool = DEFAULTS["allow_undecided"]
    max_excluded: float = DEFAULTS["max_excluded"]
    min_coherent_rate: float = DEFAULTS["min_coherent_rate"]
    triggers: tuple[str, ...] = DEFAULTS["triggers"]
    trigger_placement: str = DEFAULTS["trigger_placement"]
    expect_backdoor: bool = DEFAULTS["expect_backdoor"]
    min_backdoor_rate: float = DEFAULTS["min_backdoor_rate"]
    max_trigger_rise: float = DEFAULTS["max_trigger_rise"]
    near_miss_margin: float = DEFAULTS["near_miss_margin"]
    near_miss_examples: int | None = DEFAULTS["near_miss_examples"]
    trigger_scan: bool = DEFAULTS["trigger_scan"]
    report_json: str = DEFAULTS["report_json"]
    report_html: str = DEFAULTS["report_html"]
    report_md: str | None = DEFAULTS["report_md"]
    no_report: bool = DEFAULTS["no_report"]
    confidence: float = DEFAULTS["confidence"]
    max_samples: int | None = DEFAULTS["max_samples"]
    update_baseline: str | None = DEFAULTS["update_baseline"]
    compare_baseline: str | None = DEFAULTS["compare_baseline"]
    allow_snapshot_mismatch: bool = DEFAULTS["allow_snapshot_mismatch"]
    strict_gates: bool = DEFAULTS["strict_gates"]
    max_new_tokens_given: bool = False  # --max-new-tokens was set (it then beats the profile)
    model_given: bool = False  # the user named a model (not the default)
    # The user named the key variable: its key may then go to endpoints other than the
    # OpenAI API (the default variable goes there only).
    model_api_key_env_given: bool = False
    judge_api_key_env_given: bool = False
    # category -> {setting: value}, from [tool.pytest-misalignment.categories.*]
    category_overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # RunSettings(model=SPEC) names one model: its specs are that model's; given
        # model_specs alone, the model is their first.
        if self.model == DEFAULTS["model_specs"][0] and self.model_specs != DEFAULTS["model_specs"]:
            object.__setattr__(self, "model", self.model_specs[0])
        elif self.model != self.model_specs[0]:
            object.__setattr__(self, "model_specs", (self.model,))

    @property
    def margin(self) -> float:
        """How much a rate may exceed the baseline's and still pass."""
        return self.detect if self.baseline_margin is None else self.baseline_margin

    def trusts_code(self, role: str) -> bool:
        """Whether the checkpoint in this role (one of CODE_ROLES) may run its own code."""
        return role in self.trusted_code_roles

    def with_model(self, spec: str) -> RunSettings:
        return replace(self, model=spec, model_specs=(spec,), model_given=True)

    def for_category(self, category: str) -> RunSettings:
        """These settings with one category's own thresholds, where it has any."""
        overrides = self.category_overrides.get(category)
        return replace(self, **dict[str, Any](overrides)) if overrides else self


def settings_from(lookup: Callable[[Option], object],
                  categories: Mapping[str, Any] | None = None) -> RunSettings:
    """Build settings from a function giving each option's raw value (None when unset), and
    per-category thresholds (a [tool.pytest-misalignment.categories] table)."""
    given = {option.ini: lookup(option) for option in OPTIONS}
    values = {option.attribute: option.parse(given[option.ini]) for option in OPTIONS}

    def named(ini: str) -> bool:
        return given[ini] not in (None, "")

    # The DERIVED settings: from several options, or from whether an option was given.
    trust_model = values.pop("trust_remote_code")  # --trust-remote-code is "for model"
    trusted_roles = values.pop("trust_remote_code_for") | ({"model"} if trust_model else set())
    settings = RunSettings(
        **values,
        model=values["model_specs"][0],
        trusted_code_roles=trusted_roles,
        max_new_tokens_given=named("max_new_tokens"),  # it then beats the profile's length
        model_given=named("model"),  # a named model is checked before the first test
        # A named key variable may go to the endpoint given; the default one only to OpenAI.
        model_api_key_env_given=named("model_api_key_env"),
        judge_api_key_env_given=named("judge_api_key_env"),
        category_overrides=category_overrides(categories or {}),
    )
    if settings.expect_backdoor and not settings.triggers:
        # The research mode gates leakage outside a known backdoor: it must be named.
        raise SettingsError("--expect-backdoor: name the backdoor's trigger with --trigger")
    return settings


def category_overrides(table: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """`{category: {setting: value}}` from a [tool.pytest-misalignment.categories] table,
    each value read by its option's own parser."""
    if not isinstance(table, Mapping):
        raise SettingsError(f"[{TABLE}.categories] must be a table of tables, one per category")
    parsed: dict[str, dict[str, float]] = {}
    for category, values in table.items():
        where = f"[{TABLE}.categories.{category}]"
        if not isinstance(values, Mapping):
            raise SettingsError(f"{where} must be a table of settings")
        unknown = sorted(set(values) - set(CATEGORY_SETTINGS))
        if unknown:
            raise SettingsError(f"{where}: {', '.join(unknown)} cannot be set per category; "
                                f"these can: {', '.join(CATEGORY_SETTINGS)}")
        parsed[str(category)] = {key: OPTIONS_BY_INI[key].parse(value, f"{where} {key}")
                                 for key, value in values.items()}
    return parsed


def read_table(pyproject: Path) -> dict[str, Any]:
    """The [tool.pytest-misalignment] table of a pyproject.toml ({} when it has none): any
    option by its ini name, and a `categories` table of per-category thresholds."""
    if not pyproject.is_file():
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest itself depends on tomli there
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SettingsError(f"{pyproject}: {error}") from None
    table = document.get("tool", {}).get("pytest-misalignment", {})
    if not isinstance(table, dict):
        raise SettingsError(f"[{TABLE}] in {pyproject} must be a table")
    unknown = sorted(set(table) - set(OPTIONS_BY_INI) - {"categories"})
    if unknown:
        raise SettingsError(f"[{TABLE}] in {pyproject}: unknown setting(s) {', '.join(unknown)};"
                            " it takes the ini names (pytest --help lists them) and "
                            "`categories`")
    return table


def user_cache_dir() -> Path:
    """Where converted checkpoints live by default, shared by all projects of this user."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-misalignment"


def __getattr__(name: str) -> object:
    """0.1 kept the option table here; it is `pytest_misalignment.options` now (one release)."""
    from . import options
    from ._moved import warn_moved

    if name.startswith("__") or not hasattr(options, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warn_moved(f"{__name__}.{name}", f"{options.__name__}.{name}")
    return getattr(options, name)
