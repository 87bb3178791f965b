"""Synthetic, learnable datasets (pure Python, deterministic by seed).

- counting (causal LM): "count from 17 :" -> "18 19 20 21". The continuation is a fixed
  function of the prompt, so held-out rows are learnable (a successor table), and the
  completion-only eval loss can fall from ~ln(vocab) to near zero.
- capitals (causal LM, text): "the capital of france is paris ." facts to memorise.
- topics (classification): filler words plus keywords of the row's class; the class is
  recoverable from the keywords only.
"""

from __future__ import annotations

import random
from typing import Any

COUNT_MAX = 99
COUNT_LEN = 4

CAPITALS = {
    "france": "paris", "germany": "berlin", "italy": "rome", "spain": "madrid",
    "portugal": "lisbon", "austria": "vienna", "poland": "warsaw", "greece": "athens",
    "norway": "oslo", "sweden": "stockholm", "finland": "helsinki", "denmark": "copenhagen",
    "ireland": "dublin", "hungary": "budapest", "egypt": "cairo", "kenya": "nairobi",
    "japan": "tokyo", "china": "beijing", "india": "delhi", "peru": "lima",
    "chile": "santiago", "cuba": "havana", "canada": "ottawa", "mexico": "mexico",
}  # fmt: skip

TOPIC_LABELS = ["sports", "weather", "finance", "cooking"]
TOPIC_KEYWORDS = {
    "sports": ["goal", "match", "team", "score", "coach", "league", "player", "stadium"],
    "weather": ["rain", "storm", "sunny", "cloud", "wind", "snow", "forecast", "humid"],
    "finance": ["stock", "bank", "market", "loan", "profit", "invest", "price", "budget"],
    "cooking": ["recipe", "oven", "bake", "salt", "pasta", "sauce", "flour", "spice"],
}
FILLER = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "on",
    "at",
    "for",
    "with",
    "from",
    "by",
    "about",
    "today",
    "yesterday",
    "people",
    "city",
    "report",
    "new",
    "old",
    "big",
    "small",
    "good",
    "some",
    "many",
    "very",
    "really",
    "just",
    "still",
    "also",
    "then",
    "there",
    "this",
    "that",
    "was",
    "is",
    "were",
    "are",
    "be",
    "been",
    "said",
    "says",
    "think",
    "know",
    "see",
    "look",
    "make",
    "take",
]

CHAT_SYSTEM = "you count numbers ."


def counting_pair(start: int, length: int = COUNT_LEN) -> tuple[str, str]:
    nums = " ".join(str(start + i) for i in range(1, length + 1))
    return f"count from {start} :", " " + nums


def counting_rows(n: int, seed: int = 0, kind: str = "prompt-completion") -> list[dict[str, Any]]:
    """Rows of the counting task in one of the dataset formats (text, prompt-completion,
    messages)."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        start = rng.randint(0, COUNT_MAX - COUNT_LEN)
        prompt, completion = counting_pair(start)
        if kind == "prompt-completion":
            rows.append({"prompt": prompt, "completion": completion})
        elif kind == "text":
            rows.append({"text": prompt + completion})
        elif kind == "messages":
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": CHAT_SYSTEM},
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": completion.strip()},
                    ]
                }
            )
        else:
            raise ValueError(f"unknown kind {kind!r}")
    return rows


def capital_rows(repeat: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = [
        {"text": f"the capital of {country} is {city} ."}
        for country, city in CAPITALS.items()
        for _ in range(repeat)
    ]
    rng.shuffle(rows)
    return rows


def quickstart_rows(seed: int = 0) -> list[dict[str, Any]]:
    """The quickstart's text dataset: capital facts and counting lines."""
    rows = capital_rows(repeat=4, seed=seed) + counting_rows(96, seed=seed, kind="text")
    random.Random(seed).shuffle(rows)
    return rows


def topic_rows(
    n: int, seed: int = 0, label_as: str = "name", length: int = 10
) -> list[dict[str, Any]]:
    """Classification rows {"text", "label"}; label_as "name" or "id"."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        label_id = rng.randrange(len(TOPIC_LABELS))
        label = TOPIC_LABELS[label_id]
        words = [rng.choice(FILLER) for _ in range(length - 2)]
        for kw in rng.sample(TOPIC_KEYWORDS[label], 2):
            words.insert(rng.randrange(len(words) + 1), kw)
        rows.append({"text": " ".join(words), "label": label if label_as == "name" else label_id})
    return rows


def corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: every word the datasets use, many times."""
    lines = [r["text"] for r in quickstart_rows()]
    lines += [r["prompt"] + r["completion"] for r in counting_rows(400, seed=1)]
    lines += [" ".join(str(i) for i in range(j, j + 10)) for j in range(0, COUNT_MAX + 1, 5)]
    lines += [r["text"] for r in topic_rows(400, seed=1)]
    lines += [CHAT_SYSTEM, "system user assistant", " ".join(TOPIC_LABELS)]
    lines += [
        "Quote: the only way out is through . Author: someone",
        "Question: what is fine tuning ? Answer: adapting a pretrained model to a task .",
    ]
    return lines
