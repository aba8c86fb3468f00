"""Parsers of option values: each turns a command-line, ini or pyproject value into a
checked one, or raises SettingsError with what is accepted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .options import (
    CODE_ROLES,
    DTYPES,
    OPTIONS_BY_INI,
    PROFILE_NAMES,
)

# Settings a `[tool.pytest-misalignment.categories.NAME]` table may set for one category.
CATEGORY_SETTINGS = ("max_misaligned_rate", "max_harmful_compliance_rate",
                     "max_insecure_code_rate", "max_probe_preference", "baseline_margin")
TABLE = "tool.pytest-misalignment"


class SettingsError(ValueError):
    """A setting has a value we cannot accept; the message says what is accepted."""


def parse_device(value: str) -> str:
    text = value.strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text
    if text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise SettingsError(f"--device: {value!r} is not accepted; use auto, cpu, cuda or cuda:N")


def parse_dtype(value: str) -> str:
    text = value.strip().lower()
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
               "float": "float32"}
    text = aliases.get(text, text)
    if text not in DTYPES:
        raise SettingsError(f"--dtype: {value!r} is not accepted; use one of {', '.join(DTYPES)}")
    return text


def parse_int(name: str, value: str, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SettingsError(f"{name}: {value!r} is not an integer") from None
    if number < minimum:
        raise SettingsError(f"{name}: {value!r} must be an integer >= {minimum}")
    return number


def parse_batch_size(value: str) -> int | None:
    if str(value).strip().lower() == "auto":
        return None
    try:
        return parse_int("--batch-size", value, 1)
    except SettingsError:
        raise SettingsError(f"--batch-size: {value!r} is not accepted; use auto or an integer "
                            ">= 1") from None


def parse_temperature(value: str) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 10.0 or number != number:
        raise SettingsError(f"--temperature: {value!r} is not accepted; use a number from 0 "
                            "(greedy) to 10")
    return number


def parse_range(name: str, value: str, low: float, high: float) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if not low <= number <= high:
        raise SettingsError(f"{name}: {value!r} is not accepted; use a number from {low:g} to "
                            f"{high:g}")
    return number


def parse_list(name: str, value: object) -> tuple[str, ...]:
    """A repeatable option's values: a string or a list of strings (pyproject may hold any
    TOML value, so anything else is a one-line error)."""
    if value is None or value == "" or value == [] or value == ():
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SettingsError(f"{name}: expected a string or a list of strings, got {value!r}")


TRIGGER_PLACEMENTS = ("prefix", "suffix", "system")


def parse_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    text = value.strip().lower()
    if text not in choices:
        raise SettingsError(f"{name}: {value!r} is not accepted; use one of {', '.join(choices)}")
    return text


def parse_triggers(values: tuple[str, ...]) -> tuple[str, ...]:
    if any(not value.strip() for value in values):
        raise SettingsError("--trigger: an empty trigger is not accepted")
    return tuple(dict.fromkeys(values))  # repeated ones once, in the given order


def parse_trusted_code_roles(trust_model: bool, values: tuple[str, ...]) -> frozenset[str]:
    """The roles whose code may run: the model for --trust-remote-code, plus those named
    (comma-separated, or one per value) by --trust-remote-code-for."""
    roles = {"model"} if trust_model else set()
    for value in values:
        for name in value.split(","):
            role = name.strip().lower()
            if role == "all":
                roles.update(CODE_ROLES)
            elif role in CODE_ROLES:
                roles.add(role)
            elif role:
                raise SettingsError(f"--trust-remote-code-for: {name.strip()!r} is not a role; "
                                    f"use {', '.join(CODE_ROLES)} or all (comma-separated)")
    return frozenset(roles)


def parse_profile(value: str) -> str:
    text = value.strip().lower()
    if text not in PROFILE_NAMES:
        raise SettingsError(f"--profile: {value!r} is not accepted; use one of "
                            f"{', '.join(PROFILE_NAMES)}")
    return text


def parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: {value!r} is not accepted; use true or false")


THRESHOLDS: dict[str, tuple[float, float]] = {
    "max_misaligned_rate": (0, 1), "max_harmful_compliance_rate": (0, 1),
    "max_insecure_code_rate": (0, 1), "max_probe_preference": (-100, 100),
    "baseline_margin": (0, 1),
}


def parse_threshold(ini: str, value: object, where: str | None = None) -> float:
    low, high = THRESHOLDS[ini]
    return parse_range(where or OPTIONS_BY_INI[ini].flag, str(value), low, high)


def parse_category_overrides(table: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """`{category: {setting: value}}` from a [tool.pytest-misalignment.categories] table."""
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
        parsed[str(category)] = {key: parse_threshold(key, value, f"{where} {key}")
                                 for key, value in values.items()}
    return parsed
