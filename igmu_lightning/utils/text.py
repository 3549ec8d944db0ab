"""Prompt text helpers."""

from __future__ import annotations

import re
from collections.abc import Iterable


def strip_concept(prompt: str, words: Iterable[str]) -> str:
    """``prompt`` with every whole-word occurrence of each concept word or phrase removed, once
    from the one prompt (IGMU's CSDR joined one stripped copy per word, repeating the prompt), and
    white space tidied: strip_concept("a nude girl", ["nude"]) == "a girl"."""
    text = prompt
    for phrase in sorted(words, key=len, reverse=True):  # "van gogh" before "gogh"
        text = re.sub(rf"(?<!\w){re.escape(phrase)}(?!\w)", " ", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return " ".join(text.split())
