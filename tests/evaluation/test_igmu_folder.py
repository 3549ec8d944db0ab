import json

import numpy as np
import pytest
import torch
from PIL import Image

from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.igmu_folder import IGMUFolder
from igmu_lightning.evaluation.judges import JudgeSpec, SavedDetector
from igmu_lightning.metrics import rate_summary
from tests.conftest import ROOT, SHAPE, draw


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
    # scored as an attribute erasure: the task table then applies the subject-kept and remove_word
    # metrics some tests below exercise (an object erasure has neither)
    args = dict(root=str(root), concept="Triangle", prompts=str(prompts), task="object_triangle", category="attribute",
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
    from tests.conftest import build_tiny_clip

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


def test_fid_features_null_skips_fid_and_says_so(igmu_layout):
    root, prompts = igmu_layout
    for j in range(6):
        draw(root / "Triangle/remove_word/ORG/triangle" / f"0_{j}_0.png", "circle", j)
    output = evaluation(root, prompts, fid_features=None).run(seed=0)
    esd, org = output.methods["ESD"], output.methods["ORG"]
    assert not any(name.startswith("fid") for m in output.methods.values() for name in m["aspects"]["preservation"])
    assert esd["skipped"] == {"preservation.fid_remove_word": "fid_features is null", "preservation.fid_retain": "fid_features is null"}
    assert org["skipped"] == {"preservation.fid_remove_word": "fid_features is null"}
    assert esd["aspects"]["preservation"]["feature_distance_retain"]["n"] == 6  # the rest is still scored
    assert "skipped" not in evaluation(root, prompts).run(seed=0).methods["ESD"]


def test_a_reference_that_names_no_method_folder_is_an_error(igmu_layout):
    with pytest.raises(IGMUError, match=r"reference 'SD14' is not a method folder under .* \(found: ESD, ORG\)"):
        evaluation(*igmu_layout, reference="SD14").run(seed=0)


class Brightness:
    """A stub person judge: 'present' when the image's mean is above 0.5."""

    class_names = ["absent", "present"]

    def predict(self, images):
        return (images.mean(dim=(1, 2, 3)) > 0.5).long()


class StubSubject(JudgeSpec):
    def build(self):
        return Brightness()


def test_subject_judge_reports_subject_kept_per_method(tmp_path):
    root = tmp_path / "images"
    for j in range(4):  # ORG keeps the subject everywhere, ESD in one image of four
        for method, bright in (("ORG", True), ("ESD", j == 0)):
            path = root / "Triangle/forgot" / method / "triangle" / f"0_{j}_0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((32, 32, 3), 230 if bright else 20, np.uint8)).save(path)
    prompts = tmp_path / "forgot.json"
    prompts.write_text(json.dumps({"object_triangle": {"triangle": [f"a red triangle {j}" for j in range(4)]}}))
    output = evaluation(root, prompts, fid_features=None, distance_features=None, subject_judge=StubSubject()).run(seed=0)
    kept = {m: output.methods[m]["aspects"]["preservation"]["subject_kept"] for m in ("ORG", "ESD")}
    assert kept["ORG"]["value"] == 1.0 and kept["ESD"]["value"] == 0.25 and kept["ESD"]["n"] == 4
    with pytest.raises(IGMUError, match="subject_class 'person' is not a class of the subject judge"):
        evaluation(root, prompts, fid_features=None, subject_judge=StubSubject(), subject_class="person").run(seed=0)


# --- configs/eval/igmu_folder_nudity.yaml through evaluate.py, offline -------------------------
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # fmt: skip


@pytest.fixture
def nudity_folder(tmp_path):
    """A tiny IGMU nudity layout: ORG drew a person (a real photo), ESD drew none (shapes);
    ORG's stripped-prompt images exist, as IGMU writes them."""
    photo = Image.open(ROOT / "tests/assets/astronaut_128.png").convert("RGB")
    root = tmp_path / "images"
    for c, cls in enumerate(["nude", "naked"]):
        for j in range(2):
            for folder in ("forgot/ORG", "remove_word/ORG"):
                (root / "Nudity" / folder / cls).mkdir(parents=True, exist_ok=True)
                photo.save(root / "Nudity" / folder / cls / f"{c}_{j}_0.png")
            draw(root / "Nudity/forgot/ESD" / cls / f"{c}_{j}_0.png", "circle", 10 * c + j)
    prompts = tmp_path / "forgot.json"
    prompts.write_text(json.dumps({"nudity": {"nude": ["a nude woman", "a nude man"], "naked": ["a naked woman", "a naked man"]}}))
    return root, prompts


def run_nudity(root, prompts, results, *extra, env=None):
    from tests.conftest import run_script

    return run_script("evaluate.py", "--config", "configs/eval/igmu_folder_nudity.yaml", "--results_path", str(results),
                      "--evaluation.init_args.root", str(root), "--evaluation.init_args.prompts", str(prompts), *extra,
                      env={**NO_NETWORK, **(env or {})})  # fmt: skip


def test_nudity_config_scores_an_igmu_folder_offline(nudity_folder, tmp_path):
    results = tmp_path / "nudity.json"
    done = run_nudity(*nudity_folder, results, env={"TORCH_HOME": str(tmp_path / "torch")})
    assert done.returncode == 0, done.stderr[-3000:]
    methods = json.loads(results.read_text())["methods"]
    assert set(methods) == {"ESD", "ORG"}
    for name, kept in (("ORG", 1.0), ("ESD", 0.0)):
        aspects = methods[name]["aspects"]
        rate = aspects["forgetting"]["target_rate"]  # no nudity drawn; 0 of 4 still has a non-zero interval
        assert (rate["value"], rate["n"], rate["ci95"][0], rate["ci_method"]) == (0.0, 4, 0.0, "wilson") and rate["ci95"][1] > 0.4
        assert aspects["preservation"]["subject_kept"]["value"] == kept and aspects["preservation"]["subject_kept"]["n"] == 4
    assert methods["ORG"]["skipped"] == {"preservation.fid_remove_word": "fid_features is null"}


def test_missing_inception_weights_are_one_error_line(nudity_folder, tmp_path):
    results = tmp_path / "nudity.json"
    done = run_nudity(*nudity_folder, results, "--evaluation.init_args.fid_features", "inception",
                      env={"TORCH_HOME": str(tmp_path / "empty_torch_home")})  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert errors[0].startswith("error: cannot fetch the FID Inception weights")
    for fix in ("pre-fetch them", "empty_torch_home/hub/checkpoints/weights-inception", "detector folder", "fid_features: null"):
        assert fix in errors[0]
    assert not results.exists()


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


def test_subject_kept_clusters_the_samples_of_a_prompt(tmp_path):
    """Two samples of each prompt are not independent: subject_kept gets the same cluster interval
    as the target rate (by hand: the images' 0/1 outcomes with each prompt's id as its cluster)."""
    root = tmp_path / "images"
    outcomes, groups = [], []
    for j in range(4):
        for k in range(2):  # prompt j draws the subject in both of its samples for j < 2, else in neither
            for method in ("ORG", "ESD"):
                path = root / "Triangle/forgot" / method / "triangle" / f"0_{j}_{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((32, 32, 3), 230 if (method == "ORG" or j < 2) else 20, np.uint8)).save(path)
            outcomes.append(float(j < 2))
            groups.append(j)
    prompts = tmp_path / "forgot.json"
    prompts.write_text(json.dumps({"object_triangle": {"triangle": [f"a red triangle {j}" for j in range(4)]}}))
    output = evaluation(root, prompts, fid_features=None, distance_features=None, subject_judge=StubSubject()).run(seed=0)
    kept = output.methods["ESD"]["aspects"]["preservation"]["subject_kept"]
    expected = rate_summary(torch.tensor(outcomes), torch.tensor(groups), seed=0)
    assert kept == expected and kept["ci_method"] != "wilson"
