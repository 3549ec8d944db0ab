"""Prompt text helpers."""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable
from pathlib import Path

from igmu_lightning.errors import IGMUError


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


def read_texts(path: str, column: str | None = None) -> list[str]:
    """Non-empty texts of a file: a CSV's ``column`` when its header names it, else one text a line."""
    file = Path(path)
    if not file.is_file():
        kind = f"a CSV with a '{column}' column or a file" if column else "a file"
        raise IGMUError(f"text file '{path}' does not exist: give the path of {kind} with one text a line")
    lines = file.read_text(encoding="utf-8").splitlines()
    header = next(csv.reader(lines[:1]), [])
    if column and column in header:
        texts = [row.get(column, "") or "" for row in csv.DictReader(lines)]
    else:
        texts = lines
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise IGMUError(f"text file '{path}' holds no text: give one text a line" + (f" (or a CSV with a '{column}' column)" if column else ""))
    return texts
