"""xdist: registered only when xdist runs the session. The controller works out endpoint
fingerprints once and hands them to each worker; each worker hands back its counters."""

from __future__ import annotations

from typing import Any

import pytest

from .models.endpoint import EndpointError
from .models.engine import ModelRunner
from .models.specs import CheckpointError, Endpoint
from .session import RUN_KEY


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Work out endpoint fingerprints once on the controller and hand them to each worker:
    the same fingerprint everywhere even on a server that is not deterministic."""
    run = node.config.stash[RUN_KEY]
    roles = run.model_roles + (["baseline"] if run.settings.baseline else [])
    for role in roles:
        if role in run.endpoint_fingerprints:
            continue
        try:
            source = run.checkpoint(role)
            if isinstance(source, Endpoint):
                runner = ModelRunner(source, run.settings, run.store(), role=role)
                run.endpoint_fingerprints[role] = runner.fingerprint
        except (CheckpointError, EndpointError):
            # Not retried for the next node; each worker then tries itself and stops the
            # run with the reason.
            run.endpoint_fingerprints[role] = ""
    node.workerinput["misalignment_fingerprints"] = {
        role: value for role, value in run.endpoint_fingerprints.items() if value}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    counters = getattr(node, "workeroutput", {}).get("misalignment_counters")
    run = node.config.stash[RUN_KEY]
    if counters:
        run.counters.merge(counters)
    judge_info = getattr(node, "workeroutput", {}).get("misalignment_judge")
    if judge_info and not run.judge_info:
        run.judge_info = judge_info
