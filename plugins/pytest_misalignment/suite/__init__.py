"""The suite's pure logic: prompt sets and profiles, cases, backdoor triggers, tallies,
statistics, gating and planning. No I/O beyond reading prompt files; no pytest."""


def __getattr__(name: str) -> object:
    """0.1's `pytest_misalignment.suite` module is `suite.tallies` now (one release)."""
    from .._moved import old_name

    return old_name("suite", "tallies", name)
