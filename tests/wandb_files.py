"""Read an offline W&B run back from its files: the records of ``run-<id>.wandb`` (W&B's
LevelDB-style log: a 7-byte ``:W&B`` header, then 32 KiB blocks of records, each a 7-byte header
- CRC32, length, type - and a piece of a ``wandb_internal_pb2.Record``), and the tables and images
the history points to under ``files/``."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
from PIL import Image

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(run_dir: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    pos, pieces = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        if pos + HEADER + length > len(data):  # still being written
            break
        pieces += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def finished_records(run_dir: Path, wait_s: float = 60) -> list:
    """The run's records once the log is complete: wandb's service may still be writing it when
    finish() returns, so wait (up to ``wait_s``) for its exit record."""
    deadline = time.monotonic() + wait_s
    while not any(r.WhichOneof("record_type") == "exit" for r in records(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return list(records(run_dir))


def nested(items) -> dict:
    """History / summary / config items (``key`` or ``nested_key`` path, JSON value) as a dict."""
    out: dict = {}
    for item in items:
        path = list(item.nested_key) or [item.key]
        where = out
        for part in path[:-1]:
            where = where.setdefault(part, {})
        where[path[-1]] = json.loads(item.value_json)
    return out


class OfflineRun:
    """What an offline run holds: ``run`` (the run record: project, group, job type), ``config``,
    ``history`` (the logged values, merged over steps) and ``summary``."""

    def __init__(self, run_dir: Path, wait_s: float = 60) -> None:
        self.dir = Path(run_dir)
        self.history, self.summary, self.config, self.run = {}, {}, {}, None
        for record in finished_records(self.dir, wait_s):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run = record.run
                self.config.update(nested(record.run.config.update))
            elif kind == "config":
                self.config.update(nested(record.config.update))
            elif kind == "history":
                self.history.update(nested(record.history.item))
            elif kind == "summary":
                self.summary.update(nested(record.summary.update))

    def table(self, key: str) -> list[dict]:
        """A logged ``wandb.Table`` as rows of {column: value}, read from its JSON under files/."""
        entry = self.history[key]
        assert entry["_type"] == "table-file", entry
        table = json.loads((self.dir / "files" / entry["path"]).read_text())
        return [dict(zip(table["columns"], row)) for row in table["data"]]

    def image(self, key: str) -> tuple[np.ndarray, dict]:
        """A logged ``wandb.Image`` as an (H, W, 3) uint8 array, with its history entry (caption ...)."""
        entry = self.history[key]
        assert entry["_type"] == "image-file", entry
        return np.asarray(Image.open(self.dir / "files" / entry["path"]).convert("RGB")), entry


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    return [OfflineRun(d) for d in sorted(Path(wandb_dir).glob("**/offline-run-*")) if d.is_dir()]
