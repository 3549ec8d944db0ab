"""Prompt text helpers."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable


def replace_words(prompt: str, replacements: dict[str, str]) -> str:
    """Every whole-word occurrence of each key (a word or phrase, any case) replaced by its value,
    longest keys first ("van gogh" before "gogh"), white space and punctuation tidied."""
    text = prompt
    for phrase in sorted(replacements, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(phrase)}(?!\w)", replacements[phrase].replace("\\", r"\\"), text, flags=re.IGNORECASE)
    text = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.split()))
    return text


def strip_concept(prompt: str, words: Iterable[str]) -> str:
    """``prompt`` with every whole-word occurrence of each concept word or phrase removed, once
    from the one prompt (IGMU's CSDR joined one stripped copy per word, repeating the prompt):
    strip_concept("a nude girl", ["nude"]) == "a girl"."""
    return replace_words(prompt, dict.fromkeys(words, ""))


def expand_braces(text: str) -> list[str]:
    """Shell-style alternatives: "a {red,blue} {circle,square}" -> four prompts (none: [text])."""
    parts = re.split(r"\{([^{}]*,[^{}]*)\}", text)
    options = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(choice).strip() for choice in itertools.product(*options)]
