"""The benchmark runner (``python -m igmu_lightning.benchmark``) with its process runner replaced
by a fake that writes what train.py / evaluate.py would: cells run in order, a finished cell is
skipped on a rerun, an interrupted cell is cleaned and redone (and the evaluation that used its
model with it), a failed cell does not stop the others, the progress line shows the estimate, and
the report is written at the end. The tier files that ship parse as evaluate.py arguments."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from igmu_lightning.benchmark import load_tier, main, plan, run_benchmark, run_command
from igmu_lightning.errors import IGMUError
from tests.conftest import ROOT

TIER = """targets: [object]
algorithms: [uce, sld]
evaluation: {prompts_per_set: 4}
seconds: {uce: 5, sld: 7, evaluate: 10}
"""


def value(x, n=4):
    return {"value": x, "ci95": [max(x - 0.1, 0), min(x + 0.1, 1)], "n": n, "ci_method": "wilson"}


class FakeRunner:
    """Plays train.py (an export folder) and evaluate.py (a results JSON of the methods it got)."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.calls: list[list[str]] = []
        self.fail = set(fail)
        self.seen_partial: list[bool] = []

    def __call__(self, command: list[str], log: Path) -> int:
        assert command[0] == sys.executable
        args = command[1:]
        self.calls.append(args)
        log.write_text("fake run\n")
        self.seen_partial.append(any((p / "partial.bin").exists() for p in log.parents[2].rglob("*") if p.is_dir()))
        if any(f in " ".join(args) for f in self.fail):
            return 1
        if args[0] == "train.py":
            out = Path(args[args.index("--model.init_args.export_dir") + 1])
            out.mkdir(parents=True)
            (out / "model_index.json").write_text("{}")
        else:
            methods = json.loads(args[args.index("--evaluation.init_args.methods") + 1])
            rates = {"original": 1.0, **{m: 0.25 for m in methods}}
            doc = {"run": {"config": {"evaluation": {"init_args": {"target": "object", "prompts_per_set": 4}}}, "seed": 0},
                   "methods": {m: {"aspects": {"forgetting": {"target_rate": value(r)},
                                               "preservation": {"retain_accuracy": value(0.9)}}} for m, r in rates.items()}}  # fmt: skip
            path = Path(args[args.index("--results_path") + 1])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc))
        return 0


def names(calls):
    return [(c[0], Path(c[c.index("--config") + 1]).stem) for c in calls]


@pytest.fixture
def tier(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped configs are found from the repository root
    path = tmp_path / "mini.yaml"
    path.write_text(TIER)
    return str(path)


def test_cells_run_in_order_then_are_skipped(tier, tmp_path, capsys):
    out = tmp_path / "out"
    runner = FakeRunner()
    assert run_benchmark(tier, out, runner=runner) == 0
    assert names(runner.calls) == [("train.py", "uce_object"), ("train.py", "sld_object"), ("evaluate.py", "object")]
    evaluate = runner.calls[2]
    assert sorted(json.loads(evaluate[evaluate.index("--evaluation.init_args.methods") + 1])) == ["sld", "uce"]
    assert evaluate[evaluate.index("--evaluation.init_args.prompts_per_set") + 1] == "4"
    printed = capsys.readouterr().out
    # before any cell is measured, the tier's guesses: 5 + 7 + 10 s
    assert "[1/3] train_uce_object: elapsed 0:00:00, about 0:00:22 left" in printed
    assert "[3/3] evaluate_object: elapsed" in printed and "report written to" in printed
    root = out / "mini"
    for cell in ("train_uce_object", "train_sld_object", "evaluate_object"):
        record = json.loads((root / "cells" / cell / "done.json").read_text())
        assert record["cell"] == cell and (root / "cells" / cell / "log.txt").read_text() == "fake run\n"
    report = (root / "benchmark.md").read_text()
    assert "| `forgetting.target_rate` | 4 | wilson | 1.000 [0.900, 1.000] | 0.250 [0.150, 0.350] |" in report
    rerun = FakeRunner()
    assert run_benchmark(tier, out, runner=rerun) == 0
    assert rerun.calls == [] and "3 cells, 3 done already, 0 to run" in capsys.readouterr().out


def test_interrupted_cell_is_redone_cleanly(tier, tmp_path, capsys):
    out = tmp_path / "out"
    run_benchmark(tier, out, runner=FakeRunner())
    root = out / "mini"
    # a run killed inside train_sld_object: no done-marker, a half-written export
    (root / "cells/train_sld_object/done.json").unlink()
    (root / "models/sld_object/partial.bin").write_bytes(b"half")
    capsys.readouterr()
    runner = FakeRunner()
    assert run_benchmark(tier, out, runner=runner) == 0
    # the training is redone from scratch, and the evaluation of its model with it
    assert names(runner.calls) == [("train.py", "sld_object"), ("evaluate.py", "object")]
    assert runner.seen_partial == [False, False] and not (root / "models/sld_object/partial.bin").exists()
    printed = capsys.readouterr().out
    assert "1 done already, 2 to run" in printed
    assert "[1/2] train_sld_object: elapsed 0:00:00, about" in printed and "time left: estimated" not in printed


def test_failed_cell_does_not_stop_the_rest(tier, tmp_path, capsys):
    out = tmp_path / "out"
    runner = FakeRunner(fail={"sld_object.yaml"})
    assert run_benchmark(tier, out, runner=runner) == 1
    evaluate = runner.calls[-1]
    assert list(json.loads(evaluate[evaluate.index("--evaluation.init_args.methods") + 1])) == ["uce"]
    printed = capsys.readouterr().out
    assert "train_sld_object: FAILED (exit 1)" in printed and "failed: train_sld_object" in printed
    assert not (out / "mini/cells/train_sld_object/done.json").exists()
    retry = FakeRunner()  # the failed training and the evaluation without its model run again
    assert run_benchmark(tier, out, runner=retry) == 0
    assert names(retry.calls) == [("train.py", "sld_object"), ("evaluate.py", "object")]


def test_run_command_logs_and_returns_the_exit_code(tmp_path):
    log = tmp_path / "log.txt"
    assert run_command([sys.executable, "-c", "import sys; print('made it'); sys.exit(3)"], log) == 3
    assert "made it" in log.read_text() and log.read_text().startswith("$ ")


def test_shipped_tiers_parse_as_evaluate_arguments(monkeypatch):
    from igmu_lightning.evaluate_cli import build_parser

    monkeypatch.chdir(ROOT)
    name, spec = load_tier("quick")
    cells = plan(spec, Path("outputs/benchmark") / name)
    assert [c.name for c in cells] == ["train_uce_object", "train_sld_object", "train_salun_object", "evaluate_object"]
    args = cells[-1].command()[1:]
    parsed = build_parser(args).parse_args(args).evaluation.init_args
    assert parsed.prompts_per_set == 16 and sorted(parsed.methods) == ["salun", "sld", "uce"]
    name, spec = load_tier("full")
    cells = plan(spec, Path("outputs/benchmark") / name)
    trained = sorted(c.name for c in cells if not c.models)
    shipped = {f"train_{p.stem}" for t in ("object", "style", "attribute") for p in (ROOT / "configs/unlearn/world").glob(f"*_{t}.yaml")}
    assert set(trained) == shipped and "train_ca_object" in trained and not any("xattn" in c for c in trained)
    # the attack suite runs on the object target only
    assert [c.name for c in cells if c.name.endswith("_attacks")] == ["evaluate_object_attacks"]
    attacks = next(c for c in cells if c.name == "evaluate_object_attacks").command()[1:]
    parsed = build_parser(attacks).parse_args(attacks).evaluation.init_args
    probes = parsed.probes
    assert parsed.prompts_per_set == 16 and len(json.loads(attacks[attacks.index("--evaluation.init_args.methods") + 1])) == len(
        [c for c in shipped if c.endswith("_object")]
    )
    assert [p.init_args.get("name") for p in probes[:3]] == ["p4d", "ring_a_bell", "concept_inversion"]
    assert probes[2].init_args.attack.init_args.world_target == "object"


def test_unknown_tier_is_one_line(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(IGMUError, match="benchmark tier 'huge' not found .* use one of full, quick"):
        main(["--tier", "huge"])


def test_two_jobs_overlap_cells_and_an_evaluation_waits_for_its_trainings(tmp_path, monkeypatch, capsys):
    """--jobs 2: two cells run at once, every evaluation starts only after all the trainings it
    scores have ended, and the cells done are the same as one at a time."""
    import threading
    import time

    monkeypatch.chdir(ROOT)
    path = tmp_path / "two.yaml"
    path.write_text(TIER.replace("targets: [object]", "targets: [object, style]"))
    lock, events, inner = threading.Lock(), [], FakeRunner()

    def runner(command, log):
        cell = log.parent.name
        with lock:
            events.append(("start", cell))
        time.sleep(0.2)
        with lock:
            code = inner(command, log)
            events.append(("end", cell))
        return code

    assert run_benchmark(str(path), tmp_path / "out", runner=runner, jobs=2) == 0
    live, most = set(), 0
    for kind, cell in events:
        live = live | {cell} if kind == "start" else live - {cell}
        most = max(most, len(live))
        if kind == "start" and cell.startswith("evaluate_"):
            target = cell.removeprefix("evaluate_")
            ended = {c for k, c in events[: events.index((kind, cell))] if k == "end"}
            assert {f"train_uce_{target}", f"train_sld_{target}"} <= ended, cell
    assert most == 2
    # the style trainings ran beside the object evaluation (nothing waits that need not)
    before = events[: events.index(("end", "evaluate_object"))]
    assert any(k == "start" and c.startswith("train_") and c.endswith("_style") for k, c in before)
    done = sorted(p.parent.name for p in (tmp_path / "out/two/cells").glob("*/done.json"))
    assert done == sorted(["train_uce_object", "train_sld_object", "evaluate_object", "train_uce_style", "train_sld_style",
                           "evaluate_style"])  # fmt: skip
    assert "2 at a time" in capsys.readouterr().out


def test_jobs_below_one_is_one_line(tier, tmp_path):
    with pytest.raises(IGMUError, match="--jobs 0: give 1 or more"):
        run_benchmark(tier, tmp_path / "out", runner=FakeRunner(), jobs=0)


def test_an_extra_evaluation_runs_for_the_targets_it_names(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = {"targets": ["object", "style"], "algorithms": ["uce"],
            "extra_evaluations": {"attacks": {"targets": ["object"], "prompts_per_set": 16}}}  # fmt: skip
    cells = plan(spec, tmp_path)
    assert [c.name for c in cells] == ["train_uce_object", "evaluate_object", "evaluate_object_attacks", "train_uce_style",
                                       "evaluate_style"]  # fmt: skip
    attacks = next(c for c in cells if c.name == "evaluate_object_attacks")
    assert "--evaluation.init_args.targets" not in attacks.command() and "--evaluation.init_args.prompts_per_set" in attacks.command()
    path = tmp_path / "bad.yaml"
    path.write_text("targets: [object]\nextra_evaluations: {attacks: {targets: [style]}}\n")
    with pytest.raises(IGMUError, match="extra evaluation 'attacks' names targets \\['style'\\] the tier does not run"):
        load_tier(str(path))
