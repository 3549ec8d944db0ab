"""``python -m igmu_lightning.benchmark --tier quick|full [--out outputs/benchmark] [--jobs 2]``: the
world benchmark in one command, run from the repository root.

The tier (``configs/benchmark/<tier>.yaml``, or a file of that form) names the targets, the
algorithms (every ``configs/unlearn/world/<algo>_<target>.yaml`` when null) and the evaluation
overrides. The work is a list of cells, run in order (``--jobs N``: N side by side, an evaluation
once every training it scores has ended), each in its own process (``train.py`` or
``evaluate.py``) with its output in ``<out>/<tier>/cells/<cell>/log.txt``, so a crash ends one
cell, not the run:

- ``train_<algo>_<target>``: ``train.py fit`` with the shipped config, exported to
  ``<out>/<tier>/models/<algo>_<target>``;
- ``evaluate_<target>``: ``evaluate.py`` with ``configs/eval/world/<target>.yaml``, the trained
  models as methods, to ``<out>/<tier>/results/<target>.json``; and one cell per extra evaluation
  of the tier (``evaluate_<target>_<name>``, ``results/<target>_<name>.json``).

A cell is done when its done-marker (``cells/<cell>/done.json``, written atomically after the
process succeeded) holds the same command; a done cell is never redone. Any other cell (never run,
interrupted, failed, or its command changed) has its outputs removed first and runs from scratch,
except that an evaluation keeps the methods it had finished (``evaluation.resume``). A progress line
per cell shows the time elapsed and an estimate of the time left. At the end the report
(``igmu_lightning.report``) is written from the results there."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from igmu_lightning.errors import IGMUError, run_main
from igmu_lightning.evaluation.results import figures_folder, grids_folder
from igmu_lightning.report import write_report
from igmu_lightning.utils.io import atomic_write_json

UNLEARN = Path("configs/unlearn/world")
EVAL = "configs/eval/world/{target}.yaml"
TIERS = Path("configs/benchmark")
CONFIG = re.compile(r"([a-z0-9]+)_(object|style|attribute)")  # <algo>_<target>.yaml; variants (ca_object_xattn) are not cells
DONE = "done.json"


@dataclass
class Cell:
    """One unit of work: its name, its command's arguments (after the Python executable), what it
    writes, its key for the time estimate, and for an evaluation the models it scores, each with
    the training cell that makes it."""

    name: str
    args: list[str]
    outputs: list[Path] = field(default_factory=list)
    estimate_key: str = ""
    models: dict[str, tuple[str, dict]] = field(default_factory=dict)  # method -> (training cell, backbone spec)
    options: list[str] = field(default_factory=list)  # evaluate.py flags after the methods

    def command(self, done: set[str] | None = None) -> list[str]:
        """The arguments; an evaluation scores the models whose training cell is in ``done`` (all when None)."""
        if not self.models:
            return list(self.args)
        methods = {m: spec for m, (cell, spec) in self.models.items() if done is None or cell in done}
        return [*self.args, "--evaluation.init_args.methods", json.dumps(methods), *self.options]

    def folder(self, root: Path) -> Path:
        return root / "cells" / self.name

    def record(self, root: Path) -> dict | None:
        marker = self.folder(root) / DONE
        try:
            return json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def done(self, root: Path, cells: dict[str, Cell]) -> dict | None:
        """The done-marker when it is of this command, its first output (the model, the results) is
        there, and for an evaluation the training cells it used are the same runs; else None."""
        record = self.record(root)
        if record is None or record.get("command") != self.command() or not self.outputs[0].exists():
            return None
        for cell in {c for c, _ in self.models.values()}:
            made = cells[cell].record(root)
            if made is None or made.get("id") != record.get("inputs", {}).get(cell):
                return None
        return record

    def clean(self, root: Path) -> None:
        """Remove whatever an earlier, unfinished run of this cell left."""
        for path in [self.folder(root), *self.outputs]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def load_tier(tier: str) -> tuple[str, dict]:
    path = Path(tier) if tier.endswith((".yaml", ".yml")) else TIERS / f"{tier}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TIERS.glob("*.yaml"))) or "none found"
        raise IGMUError(f"benchmark tier '{tier}' not found ({path}): use one of {known} (run from the repository root), "
                        "or give a tier YAML")  # fmt: skip
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(spec) - {"targets", "algorithms", "evaluation", "extra_evaluations", "seconds"}
    if unknown or not spec.get("targets"):
        raise IGMUError(f"tier '{path}': {'unknown keys ' + str(sorted(unknown)) if unknown else 'no targets'}: "
                        "give targets, algorithms, evaluation, extra_evaluations, seconds")  # fmt: skip
    for name, extra in (spec.get("extra_evaluations") or {}).items():
        wrong = set((extra or {}).get("targets") or []) - set(spec["targets"])
        if wrong:
            raise IGMUError(f"tier '{path}': extra evaluation '{name}' names targets {sorted(wrong)} the tier does not run: "
                            f"give some of {spec['targets']}")  # fmt: skip
    return path.stem, spec


def algorithms_for(target: str, wanted: list[str] | None) -> list[str]:
    """The shipped world algorithms with a config for ``target`` (those of ``wanted``, in its order)."""
    found = sorted(m[1] for p in UNLEARN.glob(f"*_{target}.yaml") if (m := CONFIG.fullmatch(p.stem)) and m[2] == target)
    if wanted is None:
        return found
    missing = [a for a in wanted if a not in found]
    if missing:
        raise IGMUError(f"no world config {', '.join(str(UNLEARN / f'{a}_{target}.yaml') for a in missing)}: "
                        f"the {target} target has {', '.join(found)}")  # fmt: skip
    return list(wanted)


def flag(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def fill(value, target: str):
    """``{target}`` in every string of a tier's evaluation settings."""
    if isinstance(value, str):
        return value.replace("{target}", target)
    if isinstance(value, list):
        return [fill(v, target) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, target) for k, v in value.items()}
    return value


def plan(spec: dict, root: Path) -> list[Cell]:
    """Every cell of a tier, in order: per target its trainings, then its evaluations."""
    cells = []
    for target in spec["targets"]:
        if not Path(EVAL.format(target=target)).is_file():
            raise IGMUError(f"no evaluation config '{EVAL.format(target=target)}' for target '{target}': run from the repository root")
        models = {}
        for algo in algorithms_for(target, spec.get("algorithms")):
            model = root / "models" / f"{algo}_{target}"
            args = ["train.py", "fit", "--config", str(UNLEARN / f"{algo}_{target}.yaml"), "--model.init_args.export_dir", str(model)]
            cells.append(Cell(f"train_{algo}_{target}", args, [model], algo))
            models[algo] = (cells[-1].name, {"class_path": "igmu_lightning.backbone.Pretrained", "init_args": {"path": str(model)}})
        evaluations = {"": {}, **(spec.get("extra_evaluations") or {})}
        for name, extra in evaluations.items():
            extra = dict(extra or {})
            if target not in extra.pop("targets", spec["targets"]):  # an extra evaluation of some targets only
                continue
            stem = f"{target}_{name}" if name else target
            results = root / "results" / f"{stem}.json"
            args = ["evaluate.py", "--config", EVAL.format(target=target), "--results_path", str(results)]
            options = []
            for key, value in sorted(fill({**(spec.get("evaluation") or {}), **(extra or {})}, target).items()):
                options += [f"--evaluation.init_args.{key}", flag(value)]
            # what evaluate.py writes; not its <stem>.partial/, the methods it finished, which a rerun keeps
            written = [results, results.with_suffix(".attacks"), grids_folder(results), figures_folder(results)]
            cells.append(Cell(f"evaluate_{stem}", args, written, name or "evaluate", models, options))
    return cells


def run_command(command: list[str], log: Path, threads: int | None = None) -> int:
    """Run one cell's process, its output to ``log``; its exit code. ``threads``: the torch/OpenMP
    threads it may use (cells run side by side share the cores), unless OMP_NUM_THREADS is set."""
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Estimate:
    """Seconds a cell will take: the mean of the cells of the same algorithm (or evaluation)
    measured so far, else the tier's guess for it, else the mean of all measured cells."""

    def __init__(self, guesses: dict[str, float]) -> None:
        self.guesses, self.measured = dict(guesses or {}), {}

    def add(self, key: str, seconds: float) -> None:
        self.measured.setdefault(key, []).append(seconds)

    def of(self, key: str) -> float | None:
        if key in self.measured:
            return sum(self.measured[key]) / len(self.measured[key])
        if key in self.guesses:
            return float(self.guesses[key])
        every = [s for v in self.measured.values() for s in v]
        return sum(every) / len(every) if every else None

    def left(self, keys: list[str], jobs: int = 1) -> str:
        each = [self.of(k) for k in keys]
        if any(e is None for e in each):
            return "time left: estimated after the first cell"
        return f"about {clock(sum(each) / max(1, min(jobs, len(each))))} left"


def run_benchmark(tier: str, out: str | Path, report: str | Path | None = None, figures: str | Path | None = None,
                  runner: Callable[[list[str], Path], int] | None = None, jobs: int = 1) -> int:  # fmt: skip
    """Run every cell not done yet, then the report; the number of cells that failed. ``jobs``: cells
    run side by side (each with cores / jobs threads); an evaluation starts once every training it
    scores has ended, so with 2 jobs one target's evaluations run beside the next target's trainings."""
    if jobs < 1:
        raise IGMUError(f"--jobs {jobs}: give 1 or more cells to run side by side")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    runner = runner or (lambda command, log: run_command(command, log, threads if jobs > 1 else None))
    name, spec = load_tier(tier)
    root = Path(out) / name
    cells = plan(spec, root)
    by_name = {c.name: c for c in cells}
    estimate, failed, start = Estimate(spec.get("seconds") or {}), [], time.monotonic()
    todo = [c for c in cells if c.done(root, by_name) is None]
    for cell in cells:
        if cell not in todo:
            estimate.add(cell.estimate_key, float(cell.record(root).get("seconds", 0)))
    print(f"benchmark tier '{name}': {len(cells)} cells, {len(cells) - len(todo)} done already, {len(todo)} to run, in {root}"
          + (f", {jobs} at a time ({threads} threads each)" if jobs > 1 else ""))  # fmt: skip
    number = {c.name: i + 1 for i, c in enumerate(todo)}
    waiting, running, ended = list(todo), {}, set()  # running: future -> (cell, command, trainings done, start)

    def ready(cell: Cell) -> bool:  # every training it scores has ended (done or failed), or is not to be run now
        return all(c in ended or by_name[c] not in todo for c, _ in cell.models.values())

    def launch(pool: ThreadPoolExecutor, cell: Cell) -> None:
        left = [c.estimate_key for c in [*(r[0] for r in running.values()), cell, *waiting]]
        print(f"[{number[cell.name]}/{len(todo)}] {cell.name}: elapsed {clock(time.monotonic() - start)}, "
              f"{estimate.left(left, jobs)}", flush=True)  # fmt: skip
        cell.clean(root)
        folder = cell.folder(root)
        folder.mkdir(parents=True)
        made = {c.name for c in cells if c.models == {} and c.record(root) is not None}  # trainings done by now
        command = cell.command(made)
        began = time.monotonic()
        running[pool.submit(runner, [sys.executable, *command], folder / "log.txt")] = (cell, command, made, began)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while waiting or running:
            for cell in [c for c in waiting if ready(c)][: jobs - len(running)]:
                waiting.remove(cell)
                launch(pool, cell)
            if not running:  # nothing can start: a cycle cannot happen (evaluations wait only on trainings)
                raise IGMUError(f"benchmark: cells {', '.join(c.name for c in waiting)} wait on nothing that runs")
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                cell, command, made, began = running.pop(future)
                code, seconds = future.result(), time.monotonic() - began
                ended.add(cell.name)
                estimate.add(cell.estimate_key, seconds)
                folder, i = cell.folder(root), number[cell.name]
                if code == 0:
                    inputs = {c: by_name[c].record(root)["id"] for c, _ in cell.models.values() if c in made}
                    atomic_write_json(folder / DONE, {"cell": cell.name, "command": command, "seconds": round(seconds, 1),
                                                      "id": f"{time.time_ns()}-{os.getpid()}", "inputs": inputs})  # fmt: skip
                    print(f"[{i}/{len(todo)}] {cell.name}: done in {clock(seconds)}", flush=True)
                else:
                    failed.append(cell.name)
                    print(f"[{i}/{len(todo)}] {cell.name}: FAILED (exit {code}) after {clock(seconds)}; its log: {folder / 'log.txt'}", flush=True)
    results = [c.outputs[0] for c in cells if c.models and c.outputs[0].is_file()]
    if results:
        written = write_report([str(p) for p in results], report or root / "benchmark.md", figures or root / "figures")
        print(f"report written to {written} from {len(results)} results file(s)")
    else:
        print("no results to report")
    print(f"benchmark '{name}': {len(cells) - len(failed)} of {len(cells)} cells done in {clock(time.monotonic() - start)}"
          + (f"; failed: {', '.join(failed)} (rerun the same command to retry them)" if failed else ""))  # fmt: skip
    return len(failed)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m igmu_lightning.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", default="quick", help="quick, full (configs/benchmark/<tier>.yaml) or a tier YAML")
    parser.add_argument("--out", default="outputs/benchmark", help="where models, results and logs go (<out>/<tier>/)")
    parser.add_argument("--report", default=None, help="the report's markdown (default: <out>/<tier>/benchmark.md)")
    parser.add_argument("--figures", default=None, help="the report's figures (default: <out>/<tier>/figures)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run side by side, each with cores / jobs threads (2 on 2 cores)")
    parsed = parser.parse_args(args)
    failed = run_benchmark(parsed.tier, parsed.out, parsed.report, parsed.figures, jobs=parsed.jobs)
    if failed:
        sys.exit(1)
    return 0


if __name__ == "__main__":
    run_main(main)
