"""Parsers of option values, and the small helpers the option table builds them from.

A parser is called with the name its errors report (the option's flag, or where a pyproject
table set it) and a raw value: a command-line or ini string, or any TOML value. It returns
the checked value or raises SettingsError with what is accepted."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Parser = Callable[[str, Any], Any]


class SettingsError(ValueError):
    """A setting has a value we cannot accept; the message says what is accepted."""


def parse_int(name: str, value: str, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SettingsError(f"{name}: {value!r} is not an integer") from None
    if number < minimum:
        raise SettingsError(f"{name}: {value!r} must be an integer >= {minimum}")
    return number


def parse_range(name: str, value: str, low: float, high: float, low_means: str = "") -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if not low <= number <= high:  # NaN, unparseable included
        low_text = f"{low:g} ({low_means})" if low_means else f"{low:g}"
        raise SettingsError(f"{name}: {value!r} is not accepted; use a number from {low_text} "
                            f"to {high:g}")
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


def parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: {value!r} is not accepted; use true or false")


# ----------------------------------------------------------------- the table's parsers


def text(name: str, value: object) -> str:
    """Free text, without surrounding blanks."""
    return str(value).strip()


def optional_text(name: str, value: object) -> str | None:
    """Free text; None when empty or blank."""
    return (str(value).strip() or None) if value else None


def path_text(name: str, value: object) -> str:
    """A path as written: blanks may be part of a file name."""
    return str(value)


def folder(name: str, value: object) -> Path | None:
    """A folder, `~` expanded; None when empty."""
    return Path(os.path.expanduser(str(value))) if value else None


def boolean(name: str, value: object) -> bool:
    """An on/off flag: true/false, yes/no, on/off, 1/0; off when not given."""
    return parse_bool(name, value or False)


def negated(parser: Parser) -> Parser:
    """The opposite of what `parser` reads: a `--no-X` flag fills an `X` setting."""
    return lambda name, value: not parser(name, value)


def optional(parser: Parser) -> Parser:
    """`parser`'s value, or None when the value is unset (None or empty)."""
    return lambda name, value: None if value in (None, "") else parser(name, value)


def integer(minimum: int) -> Parser:
    return lambda name, value: parse_int(name, str(value), minimum)


def integer_or_auto(minimum: int) -> Parser:
    """An integer, or `auto` (None: chosen at run time)."""

    def parse(name: str, value: object) -> int | None:
        if str(value).strip().lower() == "auto":
            return None
        try:
            return parse_int(name, str(value), minimum)
        except SettingsError:
            raise SettingsError(f"{name}: {str(value)!r} is not accepted; use auto or an "
                                f"integer >= {minimum}") from None

    return parse


def number(low: float, high: float, low_means: str = "") -> Parser:
    """A number from `low` to `high`; `low_means` says what the low end does, in the error."""
    return lambda name, value: parse_range(name, str(value), low, high, low_means)


def choice(values: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> Parser:
    """One of `values`, in any case; `aliases` maps other spellings to them."""

    def parse(name: str, value: object) -> str:
        given = str(value)
        word = given.strip().lower()
        word = (aliases or {}).get(word, word)
        if word not in values:
            raise SettingsError(f"{name}: {given!r} is not accepted; use one of "
                                f"{', '.join(values)}")
        return word

    return parse


def device(name: str, value: object) -> str:
    """auto, cpu, cuda or cuda:N."""
    given = str(value)
    word = given.strip().lower()
    if word in ("auto", "cpu", "cuda") or (word.startswith("cuda:") and word[5:].isdigit()):
        return word
    raise SettingsError(f"{name}: {given!r} is not accepted; use auto, cpu, cuda or cuda:N")


# A repeatable option's parser gets its values as a tuple of strings (Option.parse reads
# the list first).


def texts(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    return values


def distinct_texts(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """Non-blank texts, each once, in the given order (an error calls one by the flag's
    word: `--trigger: an empty trigger`)."""
    if any(not value.strip() for value in values):
        raise SettingsError(f"{name}: an empty {name.lstrip('-')} is not accepted")
    return tuple(dict.fromkeys(values))


def model_specs(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """Checkpoint specs, each once, in the given order (several make a series)."""
    specs = tuple(dict.fromkeys(value.strip() for value in values))
    if not specs or any(not spec for spec in specs):
        raise SettingsError(f"{name}: an empty checkpoint spec is not accepted")
    return specs


def domains(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """Domain names, comma-separated or one per value, each once (which names exist is
    known only once the prompt sets are read)."""
    chosen = [part.strip() for value in values for part in value.split(",")]
    if not chosen or any(not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", part)
                         for part in chosen):
        raise SettingsError(f"{name}: {', '.join(values)!r} is not accepted; name domains "
                            "with letters, digits, _ . - (e.g. code or quick_money), "
                            "comma-separated or repeated")
    return tuple(dict.fromkeys(chosen))


def roles(known: tuple[str, ...]) -> Parser:
    """Names from `known`, comma-separated or one per value; `all` is every one."""

    def parse(name: str, values: tuple[str, ...]) -> frozenset[str]:
        chosen: set[str] = set()
        for value in values:
            for word in value.split(","):
                role = word.strip().lower()
                if role == "all":
                    chosen.update(known)
                elif role in known:
                    chosen.add(role)
                elif role:
                    raise SettingsError(f"{name}: {word.strip()!r} is not a role; use "
                                        f"{', '.join(known)} or all (comma-separated)")
        return frozenset(chosen)

    return parse
