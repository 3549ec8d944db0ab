#!/usr/bin/env python
"""Train every shipped world unlearning config for a few steps and print the SHA-256 of what it
exports (the delta, the guidance file): the check that a refactor changed no trained bit.

    OMP_NUM_THREADS=1 python scripts/delta_parity.py --out /tmp/parity.json [--steps 3] [names...]
    python scripts/delta_parity.py --compare before.json after.json

Every run uses the same short overrides (steps, no logger, a fresh export and anchor folder), at one
thread, so two commits compare bit for bit; the hashes are of short runs, not of the shipped models."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "unlearn" / "world"
HASHED = ("igmu_delta.safetensors", "igmu_guidance.json")


def overrides(config: Path, work: Path, steps: int) -> list[str]:
    """The same short run for every config; Concept Ablation also makes fewer anchors, afresh."""
    args = ["--trainer.max_steps", str(steps), "--trainer.logger", "false", "--checkpoint_every", "0",
            "--trainer.default_root_dir", str(work / "runs"), "--model.init_args.export_dir", str(work / "export")]
    text = config.read_text()
    if "ConceptAblation" in text:  # its anchors are its data module's (AnchorData)
        args += ["--data.init_args.images_per_prompt", "1", "--data.init_args.anchor_dir", str(work / "anchors")]
    return args


def run(config: Path, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config),
                               *overrides(config, work, steps)], cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
        hashes = {name: hashlib.sha256((work / "export" / name).read_bytes()).hexdigest()
                  for name in HASHED if (work / "export" / name).is_file()}
        return {"files": hashes, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="config stems (default: every world config)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        same = 0
        for name in sorted(set(before) | set(after)):
            a, b = before.get(name, {}).get("files"), after.get(name, {}).get("files")
            verdict = "same" if a and a == b else "DIFFERENT"
            same += verdict == "same"
            print(f"{name:24s} {verdict}")
        print(f"{same} of {len(set(before) | set(after))} configs export the same bytes")
        sys.exit(0 if same == len(set(before) | set(after)) else 1)
    configs = sorted(CONFIGS.glob("*.yaml"))
    if args.names:
        configs = [c for c in configs if c.stem in args.names]
    results = {}
    for config in configs:
        results[config.stem] = run(config, args.steps)
        print(config.stem, json.dumps(results[config.stem]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
