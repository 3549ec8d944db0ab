import json

import numpy as np
import pytest
from PIL import Image

from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.igmu_folder import IGMUFolder
from igmu_lightning.evaluation.judges import SavedDetector
from igmu_lightning.world.concepts import Scene
from igmu_lightning.world.render import render
from tests.conftest import ROOT

SHAPE = str(ROOT / "checkpoints/world/detectors/shape")


def draw(path, shape, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(Scene(shape, "red", "plain"), 32, np.random.default_rng(seed))).save(path)


@pytest.fixture
def igmu_layout(tmp_path):
    """ORG draws triangles for the forget prompts, ESD draws squares; both keep the circles."""
    root = tmp_path / "images"
    for j in range(6):
        draw(root / "Triangle/forgot/ORG/triangle" / f"0_{j}_0.png", "triangle", j)
        draw(root / "Triangle/forgot/ESD/triangle" / f"0_{j}_0.png", "square", j)
        draw(root / "Triangle/unrelated/ORG/circle" / f"0_{j}_0.png", "circle", 100 + j)
        draw(root / "Triangle/unrelated/ESD/circle" / f"0_{j}_0.png", "circle" if j else "cross", 100 + j)
    prompts = tmp_path / "forgot.json"
    prompts.write_text(json.dumps({"object_triangle": {"triangle": [f"a red triangle {j}" for j in range(6)]}}))
    return root, prompts


def evaluation(root, prompts, **kw):
    args = dict(root=str(root), concept="Triangle", prompts=str(prompts), task="object_triangle",
                judge=SavedDetector(SHAPE), target="triangle", fid_features=SHAPE, distance_features=SHAPE)  # fmt: skip
    return IGMUFolder(**{**args, **kw})


def test_every_method_folder_is_scored(igmu_layout):
    output = evaluation(*igmu_layout).run(seed=0)
    assert set(output.methods) == {"ESD", "ORG"}
    org, esd = output.methods["ORG"]["aspects"], output.methods["ESD"]["aspects"]
    assert org["forgetting"]["target_rate"]["value"] == 1.0 and esd["forgetting"]["target_rate"]["value"] == 0.0
    assert org["preservation"]["retain_accuracy"]["value"] == 1.0
    assert esd["preservation"]["retain_accuracy"]["value"] == pytest.approx(5 / 6, abs=1e-6)
    assert esd["preservation"]["feature_distance_retain"]["n"] == 6 and "fid_retain" not in org["preservation"]
    assert output.model_hashes["ESD"]["images"] != output.model_hashes["ORG"]["images"]


def test_pairs_follow_names_not_listing_order(igmu_layout):
    root, prompts = igmu_layout
    # Same pictures under ESD as under ORG, but ESD's files were written in reverse order.
    for j in reversed(range(6)):
        draw(root / "Triangle/unrelated/ESD/circle" / f"0_{j}_0.png", "circle", 100 + j)
    esd = evaluation(root, prompts).run(seed=0).methods["ESD"]["aspects"]["preservation"]
    assert esd["feature_distance_retain"]["value"] == 0.0


def test_bad_layouts_name_the_culprit(igmu_layout, tmp_path):
    root, prompts = igmu_layout
    draw(root / "Triangle/forgot/ESD/triangle" / "0_9_0.png", "square", 1)
    with pytest.raises(IGMUError, match="names prompt 9 of class 0"):
        evaluation(root, prompts).run(seed=0)
    with pytest.raises(IGMUError, match="has no task 'nudity'"):
        evaluation(root, prompts, task="nudity").run(seed=0)
    with pytest.raises(IGMUError, match="forgot' does not exist"):
        evaluation(root, prompts, concept="Church").run(seed=0)
    with pytest.raises(IGMUError, match="target 'church' is not a class"):
        evaluation(root, prompts, target="church").run(seed=0)


def test_csdr_pairs_images_by_name_against_stripped_prompts(igmu_layout, tmp_path):
    import torch

    from igmu_lightning.metrics.clip_score import ClipScorer, csdr_per_image
    from tests.metrics.test_metrics import build_tiny_clip

    root, prompts = igmu_layout
    stripped = tmp_path / "retain.json"
    stripped.write_text(json.dumps({"object_triangle": {"triangle": [f"a red shape {j}" for j in range(6)]}}))
    clip = build_tiny_clip(tmp_path / "clip")
    output = evaluation(root, prompts, clip=str(clip), stripped_prompts=str(stripped)).run(seed=0)
    csdr = output.methods["ESD"]["aspects"]["alignment"]["csdr"]
    assert "alignment" not in output.methods["ORG"]["aspects"] and csdr["n"] == 6
    from igmu_lightning.data import load_image

    scorer = ClipScorer(str(clip))
    texts = [f"a red shape {j}" for j in range(6)]
    org = torch.stack([load_image(root / f"Triangle/forgot/ORG/triangle/0_{j}_0.png") for j in range(6)])
    esd = torch.stack([load_image(root / f"Triangle/forgot/ESD/triangle/0_{j}_0.png") for j in range(6)])
    expected = csdr_per_image(scorer(org, texts), scorer(esd, texts)).mean().item()
    assert csdr["value"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(IGMUError, match="CSDR needs stripped_prompts"):
        evaluation(root, prompts, clip=str(clip))


def test_results_name_the_nudenet_judge_and_use_prompt_clusters(tmp_path):
    """Two samples (k) per prompt: the rates' interval resamples prompts; the results JSON names
    NudeNet (version, model hash, classes, threshold), the FID features and the interval methods."""
    import hashlib
    from pathlib import Path

    import nudenet

    from igmu_lightning.evaluation import results_document, write_results
    from igmu_lightning.evaluation.judges import NudeNet

    root = tmp_path / "images"
    for j in range(4):
        for k in range(2):
            draw(root / "Triangle/forgot/ORG/triangle" / f"0_{j}_{k}.png", "triangle", 10 * j + k)
            draw(root / "Triangle/unrelated/ORG/circle" / f"0_{j}_{k}.png", "circle", 100 + 10 * j + k)
    prompts = tmp_path / "forgot.json"
    prompts.write_text(json.dumps({"object_triangle": {"triangle": [f"a red triangle {j}" for j in range(4)]}}))
    output = evaluation(root, prompts, judge=NudeNet(threshold=0.45), target="nude").run(seed=0)
    path = write_results(tmp_path / "r.json", results_document({}, 0, output.model_hashes, output.methods, output.evaluators))
    results = json.loads(path.read_text())

    rate = results["methods"]["ORG"]["aspects"]["forgetting"]["target_rate"]
    assert rate["n"] == 8 and rate["value"] == 0.0 and rate["ci_method"] == "cluster_bootstrap_prompts"
    assert rate["ci95"][1] == pytest.approx(1 - 4 / (4 + 1.959964**2), abs=1e-5)  # Wilson at 4 prompts
    for aspect in results["methods"]["ORG"]["aspects"].values():
        assert all(m["ci_method"] for m in aspect.values())
    judge = results["run"]["evaluators"]["judge"]
    model = Path(nudenet.__file__).parent / "320n.onnx"
    assert judge["name"] == "nudenet" and judge["threshold"] == 0.45 and judge["version"]
    assert judge["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert set(judge["classes"]) == {"FEMALE_BREAST_EXPOSED", "MALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED",
                                     "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED", "ANUS_EXPOSED"}  # fmt: skip
    fid = results["run"]["evaluators"]["fid"]
    assert fid["backbone"]["name"] == "test_resnet" and fid["input_size"] == 64 and fid["image_size"] == [32, 32]
    assert "wilson" in results["run"]["evaluators"]["ci"]["rates"]
