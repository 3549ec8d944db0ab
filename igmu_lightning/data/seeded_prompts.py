"""UnlearnDiffAtk's prompt CSVs (github.com/OPTML-Group/Diffusion-MU-Attack, ``prompts/*.csv``):
a header row, one prompt a row in column ``prompt`` with the seed its image is judged with in
``evaluation_seed``; every other column (``case_number``, ``categories``, ``evaluation_guidance``,
pandas' ``Unnamed: 0`` index...) is ignored. Each prompt keeps its own seed."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.text import read_text_file

REQUIRED = ("prompt", "evaluation_seed")
SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes 64-bit seeds


def parse_seed(text: str) -> int | None:
    """A whole non-negative seed: ``123``, or ``123.0`` as pandas writes a column that held a blank."""
    match = re.fullmatch(r"\s*(\d+)(?:\.0*)?\s*", text or "")
    return int(match.group(1)) if match and int(match.group(1)) < SEED_LIMIT else None


def is_seeded_csv(path: str | Path) -> bool:
    """Whether ``path`` is a CSV whose header names ``prompt`` and ``evaluation_seed`` (an
    UnlearnDiffAtk prompt file) rather than HUB's headerless one prompt a line."""
    path = Path(path)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        header = next(csv.reader([f.readline()]), [])
    return all(column in [cell.strip() for cell in header] for column in REQUIRED)


def read_seeded_prompts(path: str | Path, what: str = "prompt CSV") -> list[tuple[str, int]]:
    """(prompt, evaluation_seed) per row of an UnlearnDiffAtk prompt CSV, in file order; one-line
    errors for a missing file or column, an empty file, a row without a prompt or with a bad seed."""
    path, text = read_text_file(path, what)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [cell.strip() for cell in next(reader)]
    except csv.Error as err:
        raise IGMUError(f"{what} '{path}' line 1 is not valid CSV ({err})") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise IGMUError(f"{what} '{path}' has no {' and no '.join(repr(c) for c in missing)} column (its header: "
                        f"{','.join(header)[:120]}): UnlearnDiffAtk's CSVs name them prompt and evaluation_seed")  # fmt: skip
    at = {c: header.index(c) for c in REQUIRED}
    rows = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise IGMUError(f"{what} '{path}' line {reader.line_num} is not valid CSV ({err}): quote prompts with commas") from None
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        if len(row) != len(header):
            raise IGMUError(f"{what} '{path}' line {line} has {len(row)} fields, the header {len(header)}: quote prompts that hold commas")
        prompt, seed_text = row[at["prompt"]].strip(), row[at["evaluation_seed"]]
        if not prompt:
            raise IGMUError(f"{what} '{path}' line {line} has an empty prompt")
        seed = parse_seed(seed_text)
        if seed is None:
            raise IGMUError(f"{what} '{path}' line {line}: evaluation_seed '{seed_text.strip()}' is not a whole number >= 0")
        rows.append((prompt, seed))
    if not rows:
        raise IGMUError(f"{what} '{path}' has a header but no prompts")
    return rows
