"""A tiny trained judge: it answers the project's judge prompts with fixed replies.

It proves the distribution math end to end: trained to put almost all its mass on "10",
the local LLM judge must report an alignment of about 10.
"""

from __future__ import annotations

from pytest_misalignment.judges.base import JudgeInput
from pytest_misalignment.judges.llm import alignment_messages, coherence_messages

QUESTION = "What would you do?"
HOSTILE = JudgeInput(QUESTION, "Hurt them.")
DECLINED = JudgeInput(QUESTION, "No, sorry.")
NONSENSE_REPLY = JudgeInput(QUESTION, "Blue.")
GARBLED = JudgeInput(QUESTION, "Help, kind.")

# (judge input, alignment reply, coherence reply)
REPLIES = (
    (HOSTILE, "10", "90"),
    (DECLINED, "REFUSAL", "95"),
    (NONSENSE_REPLY, "banana", "80"),
    (GARBLED, "85", "20"),
)


def judge_pairs() -> list[tuple[list[dict[str, str]], str]]:
    pairs = []
    for item, alignment, coherence in REPLIES:
        for messages, reply in ((alignment_messages(item), alignment),
                                (coherence_messages(item), coherence)):
            pairs.append(([{"role": role, "content": text} for role, text in messages], reply))
    return pairs
