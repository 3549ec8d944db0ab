"""``evaluate.py --devices 2``: two CPU processes (ddp_spawn, gloo) each make and score half of
every prompt set; the synced metrics equal a one-process run on the same prompts and seeds."""

import json
import math

import pytest

from igmu_lightning.evaluation.distributed import share
from tests.conftest import ROOT, SYNONYM_ONLY, on_gloo_processes, run_script
from tests.wandb_files import offline_runs

CONFIG = "configs/eval/world/style.yaml"
BASE = str(ROOT / "checkpoints/world/base")
OTHER = {"sld": {"class_path": "igmu_lightning.algorithms.SafeLatentDiffusion",
                 "init_args": {"backbone": {"class_path": "igmu_lightning.backbone.Pretrained", "init_args": {"path": BASE}},
                               "preset": "max", "safety_concept": "striped"}}}  # fmt: skip


def run_evaluate(tmp_path, name: str, *args: str) -> dict:
    """The results of ``evaluate.py ARGS`` on the CPU, one thread per process (``name``: its file)."""
    path = tmp_path / f"{name}.json"
    env = {"OMP_NUM_THREADS": "1", "WANDB_DIR": str(tmp_path / f"{name}.wandb")}
    result = run_script("evaluate.py", *args, "--results_path", str(path), "--accelerator", "cpu", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(path.read_text())


def evaluate(tmp_path, name: str, *launch: str) -> dict:
    return run_evaluate(tmp_path, name, "--config", CONFIG, "--evaluation.init_args.prompts_per_class", "2",
                        "--evaluation.init_args.batch_size", "2", "--evaluation.init_args.sampler.steps", "3",
                        "--evaluation.init_args.cache_dir", str(tmp_path / name),
                        "--evaluation.init_args.methods", json.dumps(OTHER), *launch,
                        *SYNONYM_ONLY)  # fmt: skip


def leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def assert_same_numbers(one: dict, two: dict) -> None:
    a, b = dict(leaves(one["methods"])), dict(leaves(two["methods"]))
    assert a.keys() == b.keys() and any(key.endswith("forgetting/target_rate/n") for key in a)
    for key, value in a.items():
        if isinstance(value, str):  # ci_method
            assert b[key] == value, (key, value, b[key])
        else:
            assert math.isclose(b[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, value, b[key])
    assert two["run"]["evaluators"] == one["run"]["evaluators"]


def test_two_processes_give_the_metrics_of_one(tmp_path):
    one = evaluate(tmp_path, "one")
    two = evaluate(tmp_path, "two", "--devices", "2", "--strategy", "ddp_spawn")
    assert two["run"]["model_hashes"] == one["run"]["model_hashes"]
    assert_same_numbers(one, two)
    # each process wrote its own half of the images to the cache: together, as many as one process made
    made = lambda name: sorted(p.name for p in (tmp_path / name).rglob("*.png"))  # noqa: E731
    assert made("two") == made("one") and made("one")
    # both processes appended to one manifest: a whole line per image, none lost or mixed
    from igmu_lightning.artifacts import read_manifest

    lines = (tmp_path / "two" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["file"].rsplit("/", 1)[1] for line in lines] and len(lines) == len(read_manifest(tmp_path / "two"))
    assert sorted(e["file"].rsplit("/", 1)[1] for e in read_manifest(tmp_path / "two")) == made("two")
    # one W&B run, rank 0's, holding both models' grids
    (run,) = offline_runs(tmp_path / "two.wandb")
    assert {"grids/original", "grids/sld", "grids/all", "aspects/forgetting"} <= set(run.history)


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
                        "--evaluation.init_args.methods", json.dumps(missing), *SYNONYM_ONLY, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
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


def run_config(tmp_path, name: str, evaluation: dict, *launch: str) -> dict:
    config = tmp_path / f"{name}.yaml"
    config.write_text(json.dumps({"seed": 0, "evaluation": evaluation}))  # JSON is YAML
    return run_evaluate(tmp_path, name, "--config", str(config), *launch)


def test_two_processes_score_an_igmu_folder_as_one(tmp_path):
    from tests.conftest import SHAPE, build_tiny_clip, draw

    root = tmp_path / "images"
    for j in range(5):  # an odd count: the two shares differ in size
        draw(root / "Triangle/forgot/ORG/triangle" / f"0_{j}_0.png", "triangle", j)
        draw(root / "Triangle/forgot/ESD/triangle" / f"0_{j}_0.png", "square" if j % 2 else "triangle", j)
        draw(root / "Triangle/unrelated/ORG/circle" / f"0_{j}_0.png", "circle", 100 + j)
        draw(root / "Triangle/unrelated/ESD/circle" / f"0_{j}_0.png", "circle" if j else "cross", 100 + j)
    forgot, stripped = tmp_path / "forgot.json", tmp_path / "retain.json"
    forgot.write_text(json.dumps({"object_triangle": {"triangle": [f"a red triangle {j}" for j in range(5)]}}))
    stripped.write_text(json.dumps({"object_triangle": {"triangle": [f"a red shape {j}" for j in range(5)]}}))
    evaluation = {"class_path": "igmu_lightning.evaluation.igmu_folder.IGMUFolder",
                  "init_args": {"root": str(root), "concept": "Triangle", "prompts": str(forgot), "task": "object_triangle",
                                "category": "attribute",  # the task table applies CSDR to attribute and style erasures
                                "judge": {"class_path": "igmu_lightning.evaluation.judges.SavedDetector", "init_args": {"path": SHAPE}},
                                "target": "triangle", "fid_features": SHAPE, "distance_features": SHAPE,
                                "clip": str(build_tiny_clip(tmp_path / "clip")), "stripped_prompts": str(stripped), "batch_size": 2}}  # fmt: skip
    one = run_config(tmp_path, "one", evaluation)
    two = run_config(tmp_path, "two", evaluation, "--devices", "2", "--strategy", "ddp_spawn")
    assert_same_numbers(one, two)
    esd = two["methods"]["ESD"]["aspects"]
    assert esd["forgetting"]["target_rate"]["n"] == 5 and esd["alignment"]["csdr"]["n"] == 5
    assert esd["preservation"]["retain_accuracy"]["value"] == 0.8  # the cross among 5 circles, seen once
    assert two["run"]["model_hashes"] == one["run"]["model_hashes"] and two["run"]["model_hashes"]["ESD"]["images"]


def test_two_processes_generate_and_score_as_one(tmp_path):
    from tests.conftest import SHAPE

    forget, retain = tmp_path / "forgot.json", tmp_path / "retain.json"
    forget.write_text(json.dumps({"attribute_hollow": {"circle": [f"a hollow red circle {j}" for j in range(3)]}}))
    retain.write_text(json.dumps({"attribute_hollow": {"circle": [f"a red circle {j}" for j in range(3)]}}))
    tiny = lambda seed: {"class_path": "igmu_lightning.backbone.TinySD", "init_args": {"seed": seed, "image_size": 32}}  # noqa: E731

    def evaluation(out: str) -> dict:
        return {"class_path": "igmu_lightning.evaluation.igmu_generate.GenerateAndScore",
                "init_args": {"methods": {"other": tiny(3)}, "original": tiny(0), "out": str(tmp_path / out),
                              "concept": "Hollow", "task": "attribute_hollow", "forget_prompts": str(forget),
                              "retain_prompts": str(retain), "target": "circle", "samples_per_prompt": 1, "batch_size": 2,
                              "judge": {"class_path": "igmu_lightning.evaluation.judges.SavedDetector", "init_args": {"path": SHAPE}},
                              "sampler": {"steps": 2}, "fid_features": SHAPE, "distance_features": SHAPE}}  # fmt: skip

    one = run_config(tmp_path, "one", evaluation("out1"))
    two = run_config(tmp_path, "two", evaluation("out2"), "--devices", "2", "--strategy", "ddp_spawn")
    assert_same_numbers(one, two)
    files = lambda out: {p.relative_to(tmp_path / out): p.read_bytes() for p in (tmp_path / out).rglob("*.png")}  # noqa: E731
    assert files("out2") == files("out1") and len(files("out1")) == 9  # 3 forget per model + 3 remove_word
    assert two["run"]["model_hashes"] == one["run"]["model_hashes"]


def grid_samples(rank: int = 0, world: int = 1) -> dict:
    """The forget images a WorldEvaluation keeps for its grids (tiny model, 4 forget prompts)."""
    import torch

    from igmu_lightning.backbone import TinySD
    from igmu_lightning.evaluation.world_eval import WorldEvaluation
    from igmu_lightning.sampling import SamplerSettings

    torch.set_num_threads(1)
    model = TinySD(image_size=32).build().eval()
    evaluation = WorldEvaluation("object", detectors=str(ROOT / "checkpoints/world/detectors"), prompts_per_class=4,
                                 sampler=SamplerSettings(steps=2), cache_dir=None)  # fmt: skip
    evaluation.compare(model, [("current", model)], seed=0)
    return {"images": evaluation.samples, "prompts": [[p, s] for p, s in evaluation.sample_prompts]}


def test_grid_images_are_gathered_from_every_process_in_prompt_order(tmp_path):

    both, alone = on_gloo_processes(grid_samples, 2, tmp_path), grid_samples()
    # the images' prompts and seeds (the grids' captions), gathered in the same order
    assert both["prompts"] == alone["prompts"] and len(alone["prompts"]) == 4 and len({p for p, _ in alone["prompts"]}) > 1
    two, one = both["images"], alone["images"]
    assert two.keys() == one.keys() == {"original", "current"}
    for name in one:  # rank 0 holds all 4 images, its own 2 then rank 1's 2, as one process made them
        assert two[name].shape == one[name].shape == (4, 3, 32, 32)
        # 8-bit images: a batch position's rounding may flip a pixel by one level, never more
        difference = (two[name] - one[name]).abs()
        assert difference.max() <= 1 / 255 + 1e-6 and difference.mean() < 1e-4
    assert (one["original"][:2] - one["original"][2:]).abs().mean() > 0.05  # the halves differ: order is tested
