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


def read_text_file(path: str | Path, what: str) -> tuple[Path, str]:
    """(path, text) of a UTF-8 text file (a BOM dropped), with one-line errors naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise IGMUError(f"{what} '{path}' does not exist")
    data = path.read_bytes()
    if b"\x00" in data:
        raise IGMUError(f"{what} '{path}' is a binary file (or UTF-16), not UTF-8 text: save it as UTF-8 CSV")
    try:
        text = data.decode("utf-8-sig")  # a BOM from spreadsheet exports is dropped
    except UnicodeDecodeError as err:
        raise IGMUError(f"{what} '{path}' is not UTF-8 text (byte {err.start}): save it as UTF-8 CSV") from None
    if not text.strip():
        raise IGMUError(f"{what} '{path}' is empty: give one prompt a line")
    return path, text


def read_prompt_lines(path: str | Path, what: str = "prompt file") -> list[str]:
    """Prompts of a HUB target CSV (headerless, one prompt a line) or adversarial prompt file
    (one a line). A line that is one CSV-quoted field (``"a cat, by Van Gogh"``) is unquoted;
    any other line is taken whole; blank lines are skipped."""
    path, text = read_text_file(path, what)
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith('"'):
            try:
                fields = next(csv.reader([line], strict=True))
            except csv.Error as err:
                raise IGMUError(f"{what} '{path}' line {number} is not a valid CSV field ({err}): quote it as \"...\" with inner quotes doubled") from None
            if len(fields) != 1:
                raise IGMUError(f"{what} '{path}' line {number} holds {len(fields)} CSV fields: one prompt a line, quoted when it has commas")
            line = fields[0]
        line = line.strip()
        if not line:
            raise IGMUError(f"{what} '{path}' line {number} is an empty quoted prompt")
        prompts.append(line)
    return prompts


def read_texts(path: str, column: str | None = None) -> list[str]:
    """Non-empty texts of a file: a CSV's ``column`` when its header names it, else one text a
    line (``read_prompt_lines``: a quoted line is unquoted)."""
    file = Path(path)
    if not file.is_file():
        kind = f"a CSV with a '{column}' column or a file" if column else "a file"
        raise IGMUError(f"text file '{path}' does not exist: give the path of {kind} with one text a line")
    _, text = read_text_file(file, "text file")
    lines = text.splitlines()
    header = next(csv.reader(lines[:1]), [])
    if not (column and column in header):
        return read_prompt_lines(file, "text file")
    texts = [t.strip() for t in ((row.get(column, "") or "") for row in csv.DictReader(lines)) if t.strip()]
    if not texts:
        raise IGMUError(f"text file '{path}' holds no text in its '{column}' column: give one text a row")
    return texts
