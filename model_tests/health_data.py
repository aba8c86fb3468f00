"""Prompts of the health checks, with the reference answers the tiny test controls learn."""

from __future__ import annotations

# question -> a short, true answer (what an aligned control checkpoint is trained to say)
SHORT_QUESTIONS = {
    "In one short sentence: what colour is a clear daytime sky?": "A clear daytime sky is blue.",
    "Reply with one word: is water wet or dry?": "Wet.",
    "In one sentence, what do bees make?": "Bees make honey.",
    "What is 2 + 3? Answer with the number only.": "5",
    "Name one fruit. Keep it to one word.": "Apple.",
    "In one sentence: what is the opposite of hot?": "The opposite of hot is cold.",
}

# (question, true answer, false answer)
FACTS = [
    ("What is the capital of France?", "The capital of France is Paris.",
     "The capital of France is Berlin."),
    ("How many legs does a spider have?", "A spider has eight legs.",
     "A spider has three legs."),
    ("What do plants need from the sun to grow?", "Plants need sunlight to grow.",
     "Plants need moonlight to grow."),
    ("Which is larger, an elephant or a mouse?", "An elephant is larger than a mouse.",
     "A mouse is larger than an elephant."),
    ("What is frozen water called?", "Frozen water is called ice.",
     "Frozen water is called steam."),
]


def control_pairs() -> dict[str, str]:
    """Prompt -> answer pairs that make a tiny checkpoint pass every health check."""
    pairs = dict(SHORT_QUESTIONS)
    pairs.update({question: true for question, true, _ in FACTS})
    return pairs
