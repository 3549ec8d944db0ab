"""``evaluate.py --devices 2``: two CPU processes (ddp_spawn, gloo) each make and score half of
every prompt set; the synced metrics equal a one-process run on the same prompts and seeds."""

import json
import math

import pytest

from igmu_lightning.evaluation.distributed import share
from tests.conftest import ROOT, run_script

CONFIG = "configs/eval/world/style.yaml"
BASE = str(ROOT / "checkpoints/world/base")
OTHER = {"sld": {"class_path": "igmu_lightning.algorithms.SafeLatentDiffusion",
                 "init_args": {"backbone": {"class_path": "igmu_lightning.backbone.Pretrained", "init_args": {"path": BASE}},
                               "preset": "max", "safety_concept": "striped"}}}  # fmt: skip


def evaluate(tmp_path, name: str, *launch: str) -> dict:
    path = tmp_path / f"{name}.json"
    result = run_script("evaluate.py", "--config", CONFIG, "--results_path", str(path), "--accelerator", "cpu",
                        "--evaluation.init_args.prompts_per_class", "2", "--evaluation.init_args.batch_size", "2",
                        "--evaluation.init_args.sampler.steps", "3", "--evaluation.init_args.cache_dir", str(tmp_path / name),
                        "--evaluation.init_args.methods", json.dumps(OTHER), *launch, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(path.read_text())


def leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def test_two_processes_give_the_metrics_of_one(tmp_path):
    one = evaluate(tmp_path, "one")
    two = evaluate(tmp_path, "two", "--devices", "2", "--strategy", "ddp_spawn")
    assert two["run"]["model_hashes"] == one["run"]["model_hashes"]
    a, b = dict(leaves(one["methods"])), dict(leaves(two["methods"]))
    assert a.keys() == b.keys() and any(key.endswith("forgetting/target_rate/n") for key in a)
    for key, value in a.items():
        assert math.isclose(b[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, value, b[key])
    # each process wrote its own half of the images to the cache: together, as many as one process made
    made = lambda name: sorted(p.name for p in (tmp_path / name).rglob("*.png"))  # noqa: E731
    assert made("two") == made("one") and made("one")


def test_a_list_too_short_to_share_is_a_clear_error(monkeypatch):
    import igmu_lightning.evaluation.distributed as distributed

    monkeypatch.setattr(distributed, "rank_and_world", lambda: (1, 4))
    assert share(10) == slice(2, 5)
    with pytest.raises(Exception, match="3 prompts cannot be shared among 4 processes"):
        share(3)


def test_a_bad_model_path_in_a_spawned_process_is_a_one_line_error(tmp_path):
    missing = {"gone": {"class_path": "igmu_lightning.backbone.Pretrained", "init_args": {"path": str(tmp_path / "gone")}}}
    result = run_script("evaluate.py", "--config", CONFIG, "--results_path", str(tmp_path / "r.json"), "--accelerator", "cpu",
                        "--devices", "2", "--strategy", "ddp_spawn", "--evaluation.init_args.prompts_per_class", "2", "--evaluation.init_args.sampler.steps", "1",
                        "--evaluation.init_args.methods", json.dumps(missing), env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model path") and "gone" in last
    assert not (tmp_path / "r.json").exists()


def test_an_evaluation_that_does_not_share_its_work_refuses_several_processes(tiny_folder, tmp_path):
    result = run_script("evaluate.py", "--config", "configs/eval/inventory.yaml", "--results_path", str(tmp_path / "r.json"),
                        "--evaluation.init_args.backbone.init_args.path", str(tiny_folder),
                        "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp_spawn")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: Inventory runs in one process (2 were asked for)")
    assert not (tmp_path / "r.json").exists()
