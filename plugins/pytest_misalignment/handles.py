"""What tests get as fixtures: handles on the model under test and on the judge."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from .judges.base import JudgeInput, Judgment, error_share
from .models.endpoint import EndpointError, LogprobsUnavailable
from .models.engine import ModelRunner
from .models.values import Completion, Probe, Prompt, Score
from .settings import RunSettings

if TYPE_CHECKING:
    from .session import MisalignmentRun


class ModelHandle:
    """What a test gets as `model` / `baseline_model`: answers and scores, served from the run."""

    def __init__(self, runner: ModelRunner) -> None:
        self._runner = runner

    @property
    def spec(self) -> str:
        return self._runner.checkpoint.display_name

    @property
    def fingerprint(self) -> str:
        return self._runner.fingerprint

    @property
    def role(self) -> str:
        """`model`, `baseline`, or a series checkpoint's `model@LABEL`."""
        return self._runner.role

    @property
    def settings(self) -> RunSettings:
        return self._runner.settings

    def generate(self, prompt: Prompt | str) -> list[Completion]:
        """All samples of one prompt (generated now only if no test declared it)."""
        as_prompt = prompt if isinstance(prompt, Prompt) else Prompt.user(prompt)
        return self._runner.complete(self._runner.requests_for([as_prompt]))

    def generate_many(self, prompts: list[Prompt]) -> list[list[Completion]]:
        requests = self._runner.requests_for(prompts)
        self._runner.complete(requests)  # one batched pass for all of them
        return [self.generate(p) for p in prompts]

    def score(self, probe: Probe) -> list[Score]:
        """The log-probability of each of the probe's continuations (the test skips when
        the model is served by an endpoint without log-probabilities)."""
        __tracebackhide__ = True  # a skip is reported at the test's line, not here
        return self.score_many([probe])[0]

    def score_many(self, probes: list[Probe]) -> list[list[Score]]:
        """`score` for several probes in one batched pass."""
        __tracebackhide__ = True
        if self._runner.logprobs_problem:
            pytest.skip(self._runner.logprobs_problem)
        try:
            scores = self._runner.score([r for probe in probes for r in probe.requests()])
        except LogprobsUnavailable as error:
            pytest.skip(str(error))
        except EndpointError as error:
            pytest.exit(f"misalignment: {error}", returncode=pytest.ExitCode.INTERRUPTED)
        found, start = [], 0
        for probe in probes:
            found.append(scores[start:start + len(probe.continuations)])
            start += len(probe.continuations)
        return found

    def __repr__(self) -> str:
        return f"<model {self.spec} fingerprint={self.fingerprint[:12]}>"


class JudgeErrorsExceeded(Exception):
    """More of a test's answers got an `error` verdict than the run allows."""


JUDGE_ERRORS_PROPERTY = "misalignment_judge_errors"


class JudgeHandle:
    """What a test gets as `judge`: verdicts for answers, from the run's judge and store."""

    def __init__(self, run: MisalignmentRun) -> None:
        self._run = run

    @property
    def spec(self) -> str:
        return self._run.settings.judge

    @property
    def accuracy(self) -> dict[str, Any] | None:
        """The judge's measured held-out accuracy (embedding judges), else None."""
        self._run.judge_runner()
        return self._run.judge_info.get("accuracy")

    def judge(self, question: str, answer: str, *, expects_code: bool = False) -> Judgment:
        return self.judge_many([JudgeInput(question, answer, expects_code)],
                               max_error_share=1.0)[0]

    def judge_many(self, items: list[JudgeInput], *, max_error_share: float | None = None
                   ) -> list[Judgment]:
        """Judgments in order. If the judge failed on more than the allowed share of them,
        raise JudgeErrorsExceeded: the test is then reported as an error, never a pass."""
        judgments = self._run.judge_runner().judge_many(items)
        limit = self._run.settings.max_judge_error_share if max_error_share is None \
            else max_error_share
        share = error_share(judgments)
        if share > limit:
            errors = [j for j in judgments if j.verdict == "error"]
            raise JudgeErrorsExceeded(
                f"the judge {self.spec} failed on {len(errors)} of {len(judgments)} answers "
                f"({share:.0%}, allowed {limit:.0%}); first: {errors[0].detail}")
        return judgments

    def __repr__(self) -> str:
        return f"<judge {self.spec}>"
