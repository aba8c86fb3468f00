"""Settings: every bad value is refused with the accepted forms in the message."""

from __future__ import annotations

import pytest
from pytest_misalignment.settings import (
    OPTIONS,
    SettingsError,
    parse_batch_size,
    parse_device,
    parse_dtype,
    parse_temperature,
    settings_from,
)


def _settings(**raw: object):
    return settings_from(lambda option: raw.get(option.ini))


def test_defaults() -> None:
    settings = _settings()
    assert (settings.model, settings.model_given, settings.device, settings.dtype) == (
        "smollm2-135m", False, "auto", "auto")
    assert (settings.temperature, settings.batch_size, settings.seed) == (1.0, None, 0)


def test_values_are_parsed() -> None:
    settings = _settings(model="/ckpt", dtype="bf16", device="CUDA:1", batch_size="8",
                         temperature="0", seed="7", no_cache=True)
    assert settings.model_given and settings.dtype == "bfloat16" and settings.device == "cuda:1"
    assert (settings.batch_size, settings.temperature, settings.seed, settings.no_cache) == (
        8, 0.0, 7, True)


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (parse_device, "gpu", "--device: 'gpu' is not accepted; use auto, cpu, cuda or cuda:N"),
        (parse_dtype, "int4", "--dtype: 'int4' is not accepted; use one of auto, bfloat16, "
                              "float16, float32"),
        (parse_batch_size, "0", "--batch-size: '0' is not accepted; use auto or an integer >= 1"),
        (parse_temperature, "hot", "--temperature: 'hot' is not accepted; use a number from 0 "
                                   "(greedy) to 10"),
    ],
)
def test_bad_values(parse, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        parse(value)
    assert str(raised.value) == message


def test_every_option_has_an_ini_twin() -> None:
    assert len({option.ini for option in OPTIONS}) == len(OPTIONS)
    assert all(option.flag.startswith("--") for option in OPTIONS)
