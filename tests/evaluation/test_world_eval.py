import json

import pytest

from igmu_lightning.backbone import TinySD
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.tasks import TASKS, task_rule
from igmu_lightning.evaluation.world_eval import WorldEvaluation, flatten_sets
from igmu_lightning.sampling import SamplerSettings
from tests.conftest import ROOT, SYNONYM_ONLY, run_script

DETECTORS = str(ROOT / "checkpoints/world/detectors")


def test_task_table_decides_sets_and_metrics():
    assert "preservation.subject_kept" not in task_rule("object").metrics
    assert "preservation.subject_kept" in task_rule("attribute").metrics and task_rule("style").subject == "shape"
    assert "remove_word" in task_rule("nudity").reference_sets and "remove_word" not in task_rule("object").reference_sets
    for rule in TASKS.values():
        for metric in ("forgetting.target_rate", "preservation.retain_accuracy", "quality.fid", "robustness.synonym.target_rate"):
            assert rule.allows(metric)
        assert rule.probes == ("synonym",) and not rule.allows("robustness.target_rate")
    with pytest.raises(IGMUError, match="unknown task category 'objekt'"):
        task_rule("objekt")


def test_remove_word_prompts_share_seeds_with_their_forget_prompts():
    sets = flatten_sets("attribute", 2, seed=0)
    assert sets["remove_word"].seeds == sets["forget"].seeds
    assert len(set(sets["forget"].seeds) & set(sets["unrelated"].seeds)) == 0


def test_default_sets_give_every_rate_64_prompts():
    # object: forget 1 class, unrelated 3 (ceil(64 / 3) = 22 each), near 1, synonym 2 (32 each)
    object_sets = flatten_sets("object", WorldEvaluation("object").per_class, seed=0)
    assert {n: len(b.items) for n, b in object_sets.items()} == {
        "forget": 64, "remove_word": 0, "unrelated": 66, "near": 64, "synonym": 64}  # fmt: skip
    for target in ("style", "attribute"):  # forget: 5 subjects of ceil(64 / 5) = 13
        sets = flatten_sets(target, WorldEvaluation(target).per_class, seed=0)
        assert len(sets["forget"].items) == len(sets["remove_word"].items) == 65
        assert min(len(b.items) for b in sets.values()) >= 64


def test_a_precision_asks_for_the_wilson_n(capsys):
    evaluation = WorldEvaluation("object", max_half_width=0.05)
    # z^2 / (4 * 0.05^2) - z^2 = 380.3 -> 381; unrelated has 3 classes: 127 each
    assert "max_half_width 0.05 -> 381 prompts per set" in capsys.readouterr().out
    assert evaluation.per_class["forget"] == 381 and evaluation.per_class["unrelated"] == 127
    with pytest.raises(IGMUError, match="not both"):
        WorldEvaluation("object", max_half_width=0.05, prompts_per_class=4)


def test_prompts_drawn_twice_share_a_cluster():
    batch = flatten_sets("object", {"forget": 64, "unrelated": 2, "near": 2, "synonym": 2}, seed=0)["forget"]
    by_text = {}
    for item, group in zip(batch.items, batch.groups):
        by_text.setdefault(item.prompt, set()).add(group)
    assert all(len(g) == 1 for g in by_text.values()) and len(by_text) < 64  # 48 prompt texts at most
    assert batch.part(slice(10, 20)).groups == batch.groups[10:20]  # a process keeps the whole set's ids


def test_world_evaluation_scores_every_aspect(tmp_path):
    evaluation = WorldEvaluation(
        target="style",
        original=TinySD(seed=0, image_size=32),
        methods={"other": TinySD(seed=1, image_size=32)},
        detectors=DETECTORS,
        prompts_per_class=2,
        sampler=SamplerSettings(steps=2),
        cache_dir=str(tmp_path / "cache"),
    )
    output = evaluation.run(seed=0)
    original, other = output.methods["original"]["aspects"], output.methods["other"]["aspects"]
    assert set(original) == {"forgetting", "preservation", "quality", "alignment", "robustness", "efficiency"}
    assert original["efficiency"]["params_changed"]["value"] == 0
    assert original["preservation"]["fid_retain"]["value"] == 0  # the original against itself
    assert original["preservation"]["feature_distance_retain"]["value"] == 0
    assert other["efficiency"]["params_changed_share"]["value"] > 0.99
    assert other["preservation"]["feature_distance_retain"]["value"] > 0
    assert original["forgetting"]["target_rate"]["n"] == 2 * 5  # two prompts for each of five subjects
    assert list((tmp_path / "cache").rglob("*.png"))  # the original's images are cached
    # the other model's numbers, redone apart: its forget images from the sampler, then the detectors
    from igmu_lightning.sampling import Sampler
    from igmu_lightning.world.concepts import FAMILIES

    forget = flatten_sets("style", 2, 0)["forget"]
    images = Sampler(TinySD(seed=1, image_size=32).build(), SamplerSettings(steps=2), batch_size=evaluation.batch_size)
    images = images.generate(forget.prompts, forget.seeds).images
    striped = evaluation.detectors["style"].predict(images) == FAMILIES["style"].index("striped")
    assert other["forgetting"]["target_rate"]["value"] == pytest.approx(striped.float().mean().item())
    shape_kept = evaluation.detectors["shape"].predict(images) == forget.labels("shape")
    assert other["preservation"]["subject_kept"]["value"] == pytest.approx(shape_kept.float().mean().item())
    assert 0 < shape_kept.float().mean() < 1  # a value the evaluation could get wrong in either direction


@pytest.mark.slow
def test_shipped_base_model_draws_the_object_target():
    """The base model before any unlearning: the object target is present (IGMU's starting point)."""
    output = WorldEvaluation(target="object", detectors=DETECTORS, prompts_per_class=16, cache_dir=None).run(seed=0)
    forgetting = output.methods["original"]["aspects"]["forgetting"]["target_rate"]
    assert forgetting["value"] >= 0.85 and forgetting["n"] == 16


@pytest.mark.smoke
def test_evaluate_cli_gives_byte_identical_results(tmp_path):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        result = run_script(
            "evaluate.py", "--config", "configs/eval/world/attribute.yaml", "--results_path", str(path),
            "--evaluation.init_args.prompts_per_class", "2", "--evaluation.init_args.sampler.steps", "3",
            "--evaluation.init_args.cache_dir", str(tmp_path / "cache"),
            *SYNONYM_ONLY,  # the attack probe reports wall time, which differs run to run
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert "forgetting.target_rate" in result.stdout  # the summary table
    assert paths[0].read_bytes() == paths[1].read_bytes()
    results = json.loads(paths[0].read_text())
    assert results["methods"]["original"]["aspects"]["robustness"]["synonym.target_rate"]["n"] == 4
    # every number says how its interval was made; the run names its judges and FID features
    methods = {m["ci_method"] for a in results["methods"]["original"]["aspects"].values() for m in a.values()}
    assert methods <= {"wilson", "cluster_bootstrap_prompts", "percentile_bootstrap", "exact"} and "exact" in methods
    evaluators = results["run"]["evaluators"]
    for family in ("shape", "colour", "style", "attribute"):
        judge = evaluators["detectors"][family]
        assert judge["path"].endswith(f"detectors/{family}") and len(judge["sha256"]) == 64 and judge["decision"] == "argmax"
    assert evaluators["target_judge"] == "attribute"
    assert evaluators["fid"]["backbone"]["name"] == "test_resnet" and evaluators["fid"]["image_size"] == 32
    assert evaluators["fid"]["input_size"] == 64 and evaluators["ci"]["level"] == 0.95
    assert evaluators["prompt_sets"]["forget"]["images"] == 2 * 5


def test_world_probes_are_a_list_each_reported_under_its_name(tmp_path):
    """A prompt-file probe beside the default synonym probe: robustness.<name>.target_rate, equal
    to the target judge on the model's images of the file's prompts (seed block 500_000)."""
    from igmu_lightning.evaluation.probes import PromptFileProbe, SynonymProbe
    from igmu_lightning.sampling import Sampler
    from igmu_lightning.world.concepts import FAMILIES

    lines = ["a trigon in red", "a three-sided shape", "a red triangle on a plain background"]
    (tmp_path / "rewrites.txt").write_text("\n".join(lines) + "\n")
    probes = [SynonymProbe(), PromptFileProbe(str(tmp_path / "rewrites.txt"))]
    evaluation = WorldEvaluation("object", original=TinySD(seed=0, image_size=32), detectors=DETECTORS, prompts_per_class=2,
                                 sampler=SamplerSettings(steps=2), cache_dir=None, probes=probes)  # fmt: skip
    robustness = evaluation.run(seed=0).methods["original"]["aspects"]["robustness"]
    assert sorted(robustness) == ["rewrites.target_rate", "synonym.target_rate"] and robustness["rewrites.target_rate"]["n"] == 3
    sampler = Sampler(TinySD(seed=0, image_size=32).build(), SamplerSettings(steps=2), batch_size=evaluation.batch_size)
    images = sampler.generate(lines, [500_000 + i for i in range(3)]).images
    triangle = evaluation.detectors["shape"].predict(images) == FAMILIES["shape"].index("triangle")
    assert robustness["rewrites.target_rate"]["value"] == pytest.approx(triangle.float().mean().item(), abs=1e-6)
    with pytest.raises(IGMUError, match="two probes are named synonym"):
        WorldEvaluation("object", probes=[SynonymProbe(), SynonymProbe()])
