"""The run record of a trained model, whatever it was loaded from: how long its training took and
how much memory it used (EvalIGMU's efficiency). A diffusers folder carries ``igmu_run.json``; a
delta file has it beside it (the export writes both into one folder, so the delta's bytes stay
deterministic); a Lightning checkpoint holds it in its ``igmu`` record."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from igmu_lightning.errors import IGMUError

RUN_RECORD = "igmu_run.json"  # written beside an exported model: how long and how much memory it took
COST_KEYS = ("wall_time_s", "peak_memory_mb")


def run_record_path(source: str | Path) -> Path:
    """Where the record of the model loaded from ``source`` lives: in its folder, beside its file,
    or, for a ``.ckpt``, the checkpoint itself."""
    source = Path(source)
    if source.is_dir():
        return source / RUN_RECORD
    if source.suffix == ".ckpt":
        return source
    return source.parent / RUN_RECORD


def read_run_record(source: str | Path | None) -> tuple[dict, str | None]:
    """(the record's cost numbers that exist, why the others are missing or None). A model built in
    memory (no ``source``) or a file without its record answers with the reason, never an error."""
    if not source:
        return {}, "no run record: the model was built in memory, not loaded from an exported run"
    path = run_record_path(source)
    if not path.is_file():
        return {}, f"no run record beside {source} (an exported run writes {RUN_RECORD} there)"
    record = _checkpoint_run(path) if path.suffix == ".ckpt" else _json_record(path)
    found = {key: float(record[key]) for key in COST_KEYS if isinstance(record.get(key), (int, float))}
    missing = [key for key in COST_KEYS if key not in found]
    return found, (f"the run record {path} has no {', '.join(missing)}" if missing else None)


def _json_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IGMUError(f"run record '{path}' cannot be read ({type(err).__name__}): export the model again or delete it") from None
    if not isinstance(record, dict):
        raise IGMUError(f"run record '{path}' is not a JSON object: export the model again or delete it")
    return record


def _checkpoint_run(path: Path) -> dict:
    """The ``igmu.run`` record of a checkpoint (memory-mapped: the tensors are not read)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise IGMUError(f"checkpoint '{path}' cannot be read safely ({type(err).__name__}): is it a Lightning .ckpt?") from None
    run = (checkpoint.get("igmu") or {}).get("run") if isinstance(checkpoint, dict) else None
    return run if isinstance(run, dict) else {}
