"""Nothing lost when an evaluation stops: each method's results are kept as soon as it is scored,
in ``<results stem>.partial/``, and ``evaluate.py`` started again with the same config and seed
scores only the methods it had not finished. A kept method is used only when everything its
numbers depend on is the same: the evaluation's config (its list of methods aside, so a method can
be added), the seed, the method's own entry, and the weights and sampling-time guidance of both the
method's model and the original (``artifacts.model_fingerprint``, taken from the built models, so a
model retrained under the same path is scored again). The folder goes once the results are written."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from igmu_lightning.evaluation.attack_probe import AttackOutcomes
from igmu_lightning.utils.io import atomic_write_bytes, atomic_write_json

PARTIAL_SUFFIX = ".partial"


def partial_folder(results_path: str | Path) -> Path:
    """Where the finished methods of the evaluation writing ``results_path`` are kept until it ends."""
    path = Path(results_path)
    return path.with_name(path.stem + PARTIAL_SUFFIX)


@dataclass
class Finished:
    """One method's part of an ``EvaluationOutput``, as kept."""

    result: dict
    hashes: dict
    attacks: dict[str, AttackOutcomes] = field(default_factory=dict)
    samples: torch.Tensor | None = None
    sample_prompts: list = field(default_factory=list)


class FinishedMethods:
    """The kept methods of one evaluation (``folder``; ``config``: the resolved config evaluate.py
    records, ``seed``: its seed). ``load`` answers a method's record when its key matches, ``save``
    keeps one (its tensors first, then the JSON that names them: a crash between the two leaves no
    record), ``clear`` removes the folder."""

    def __init__(self, folder: str | Path, config: dict, seed: int) -> None:
        self.folder = Path(folder)
        rest = copy.deepcopy(config)
        init_args = (rest.get("evaluation") or {}).get("init_args") or {}
        self.specs = init_args.pop("methods", None) or {}
        self.base = {"config": rest, "seed": seed}

    def key(self, name: str, model: str, original: str) -> str:
        """What ``name``'s numbers depend on (``model``, ``original``: the models' fingerprints), hashed."""
        what = {**self.base, "method": name, "spec": self.specs.get(name), "model": model, "original": original}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

    def _paths(self, name: str) -> tuple[Path, Path]:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        return self.folder / f"{stem}.json", self.folder / f"{stem}.safetensors"

    def load(self, name: str, model: str, original: str) -> Finished | None:
        record_path, tensors_path = self._paths(name)
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if record.get("key") != self.key(name, model, original) or record.get("method") != name:
            return None
        try:
            tensors = load_file(str(tensors_path)) if record.get("tensors") else {}
        except Exception:  # noqa: BLE001 - damaged (safetensors' own error, OSError): score the method again
            return None
        attacks = {}
        for probe, found in record.get("attacks", {}).items():
            attacks[probe] = AttackOutcomes(found["probe"], found["method"], found["attack"], found["sampler"], found["seed"],
                                            found["prompts"], found["summary"]["seconds"], tensors.get(f"attack.{probe}"))  # fmt: skip
        prompts = [(p, int(s)) for p, s in record.get("sample_prompts", [])]
        return Finished(record["result"], record["hashes"], attacks, tensors.get("samples"), prompts)

    def save(self, name: str, model: str, original: str, finished: Finished) -> None:
        record_path, tensors_path = self._paths(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"attack.{p}": a.embeddings for p, a in finished.attacks.items() if a.embeddings is not None}
        if finished.samples is not None:
            tensors["samples"] = finished.samples
        if tensors:
            tmp = tensors_path.with_suffix(".part")
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
            atomic_write_bytes(tensors_path, tmp.read_bytes())
            tmp.unlink()
        record = {"method": name, "key": self.key(name, model, original), "result": finished.result, "hashes": finished.hashes,
                  "attacks": {p: a.to_json() for p, a in finished.attacks.items()}, "tensors": bool(tensors),
                  "sample_prompts": [list(x) for x in finished.sample_prompts]}  # fmt: skip
        atomic_write_json(record_path, json.loads(json.dumps(record, default=str)))

    def count(self) -> int:
        return len(list(self.folder.glob("*.json"))) if self.folder.is_dir() else 0

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
