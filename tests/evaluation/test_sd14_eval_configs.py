"""The SD v1.4 EvalIGMU configs run end to end with tiny models: configs/eval/sd14/{vangogh,church}.yaml
as shipped, with only the models (TinySD for SD v1.4), the prompt files (two prompts a class), the image
size and step count swapped, judged by the detector that configs/detectors/igmu_<task>.yaml builds
(a tiny random CLIP for ViT-B/32) and saves where the eval config reads it. The judge overrides the
configs' headers document parse into the judges they name."""

import json
import re

import pytest
import torch

from igmu_lightning.cli import IGMUCLI
from igmu_lightning.data import load_image
from igmu_lightning.detectors import load_detector, save_detector
from igmu_lightning.evaluate_cli import build_parser
from tests.conftest import ROOT
from tests.test_configs import swap_backbones, tiny_clip_vision

EVAL = ROOT / "configs" / "eval" / "sd14"
PROMPTS = {  # IGMU's layout, {task: {class: [prompt]}}, two prompts a class (the first from IGMU's sample)
    "style_vangogh": (
        {"thematic": ["a starry night sky with Van Gogh style.", "a quiet harbour at dusk with Van Gogh style."]},
        {"thematic": ["a starry night sky.", "a quiet harbour at dusk."]},
    ),
    "object_church": (
        {"Church": ["A peaceful church next to a flowing river", "A church on a hill under the stars"]},
        {"Parachute": ["Parachute drifting over a calm sea"], "Cat": ["A cat asleep on a windowsill"]},
    ),
}


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory):
    """The detector configs/detectors/igmu_<name>.yaml builds (its head untrained), saved as train.py's
    export would save it."""

    def build(name: str) -> str:
        from transformers import CLIPVisionModelWithProjection

        tmp = tmp_path_factory.mktemp(f"detector_{name}")
        torch.manual_seed(0)
        clip = CLIPVisionModelWithProjection.from_pretrained(tiny_clip_vision(tmp / "clip"))
        with torch.no_grad():  # larger random weights: features, and so answers, that differ from image to image
            for p in clip.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.5)
        clip.save_pretrained(tmp / "clip")
        cli = IGMUCLI(args=["--config", str(ROOT / "configs/detectors" / f"igmu_{name}.yaml"),
                            "--model.init_args.encoder.init_args.path", str(tmp / "clip"),
                            "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                            "--trainer.default_root_dir", str(tmp)], run=False)  # fmt: skip
        return str(save_detector(cli.model, tmp / "detector"))

    return build


def run_config(name: str, task: str, detector: str, tmp_path):
    """The shipped eval config with tiny models and prompts; returns (its output, the image root)."""
    forget, retain = tmp_path / "forgot.json", tmp_path / "retain.json"
    forget.write_text(json.dumps({task: PROMPTS[task][0]}))
    retain.write_text(json.dumps({task: PROMPTS[task][1]}))
    parser = build_parser()
    config = swap_backbones(parser.parse_args(["--config", str(EVAL / f"{name}.yaml")]).as_dict())
    config.pop("config", None)
    args = config["evaluation"]["init_args"]
    tiny = {"class_path": "igmu_lightning.backbone.TinySD", "init_args": {"seed": 3, "image_size": 16}}
    args.update(original=str(ROOT / "configs/backbone/tiny.yaml"), methods={"other": tiny}, out=str(tmp_path / "out"),
                forget_prompts=str(forget), retain_prompts=str(retain), samples_per_prompt=2, fid_features=None, clip=None)  # fmt: skip
    args["sampler"].update(steps=2, height=16, width=16)
    args["judge"]["init_args"]["path"] = detector
    evaluation = parser.instantiate_classes(parser.parse_object(config)).evaluation
    evaluation.check()
    return evaluation.run(seed=0), tmp_path / "out" / args["concept"]


def judged_rate(detector: str, files, label: str, equal: bool = True) -> float:
    judge = load_detector(detector)
    hits = judge.predict(torch.stack([load_image(p) for p in files])) == judge.class_names.index(label)
    return (hits if equal else ~hits).float().mean().item()


def test_vangogh_config_generates_igmus_layout_and_scores_with_its_detector(detector_folder, tmp_path):
    detector = detector_folder("vangogh")
    output, root = run_config("vangogh", "style_vangogh", detector, tmp_path)
    assert set(output.methods) == {"ORG", "other"}
    assert sorted(p.name for p in (root / "forgot/other/thematic").iterdir()) == ["0_0_0.png", "0_0_1.png", "0_1_0.png", "0_1_1.png"]
    assert sorted(p.name for p in (root / "remove_word/ORG/thematic").iterdir()) == ["0_0_0.png", "0_0_1.png", "0_1_0.png", "0_1_1.png"]
    assert not (root / "remove_word/other").exists() and not (root / "unrelated").exists()
    for method in ("ORG", "other"):
        rate = output.methods[method]["aspects"]["forgetting"]["target_rate"]
        files = sorted((root / "forgot" / method / "thematic").glob("*.png"))
        assert rate["n"] == 4 and rate["ci_method"] == "cluster_bootstrap_prompts"  # 2 prompts x 2 samples
        assert rate["value"] == pytest.approx(judged_rate(detector, files, "vangogh"))
    assert "preservation.fid_remove_word" in output.methods["other"]["skipped"]  # fid_features: null here


def test_church_config_scores_the_unrelated_classes_with_its_detector(detector_folder, tmp_path):
    detector = detector_folder("church")
    output, root = run_config("church", "object_church", detector, tmp_path)
    assert sorted(p.name for p in (root / "unrelated/other").iterdir()) == ["Cat", "Parachute"]
    assert sorted(p.name for p in (root / "unrelated/other/Cat").iterdir()) == ["1_0_0.png", "1_0_1.png"]
    assert not (root / "remove_word").exists()
    seen = []
    for method in ("ORG", "other"):
        aspects = output.methods[method]["aspects"]
        seen += [aspects["forgetting"]["target_rate"]["value"], aspects["preservation"]["retain_accuracy"]["value"]]
        forget = sorted((root / "forgot" / method / "Church").glob("*.png"))
        assert aspects["forgetting"]["target_rate"]["n"] == 4
        assert aspects["forgetting"]["target_rate"]["value"] == pytest.approx(judged_rate(detector, forget, "church"))
        # the unrelated classes are not the binary detector's labels: kept = "not judged church"
        unrelated = sorted((root / "unrelated" / method).rglob("*.png"))
        assert aspects["preservation"]["retain_accuracy"]["n"] == 4
        assert aspects["preservation"]["retain_accuracy"]["value"] == pytest.approx(judged_rate(detector, unrelated, "church", equal=False))
    assert any(0 < v < 1 for v in seen)  # the judge's answers differ from image to image: the checks above can fail


def header_override(name: str) -> list[str]:
    """The ``--evaluation.init_args.judge '...'`` and ``--evaluation.init_args.target ...`` lines of a
    config's header, as command-line arguments."""
    header = " ".join(line.lstrip("#").strip() for line in (EVAL / f"{name}.yaml").read_text().splitlines() if line.startswith("#"))
    judge = re.search(r"--evaluation\.init_args\.judge '(\{.*?\}\})'", header)
    target = re.search(r"--evaluation\.init_args\.target (?:'([^']*)'|(\S+))", header)
    args = ["--evaluation.init_args.judge", judge[1]]
    return args + (["--evaluation.init_args.target", target[1] or target[2]] if target else [])


@pytest.mark.parametrize(
    ("name", "class_path", "path", "target"),
    [
        ("vangogh", "HFClassifier", "checkpoints/sd14/judges/wikiart-vit", "vincent-van-gogh"),
        ("church", "HFClassifier", "checkpoints/sd14/judges/resnet-50", "church, church building"),
        ("parachute", "HFClassifier", "checkpoints/sd14/judges/resnet-50", "parachute, chute"),
        ("nudity", "SavedDetector", "checkpoints/sd14/detectors/nudity", "nude"),
    ],
)
def test_the_judge_overrides_in_the_headers_parse(name, class_path, path, target):
    parser = build_parser()
    config = parser.parse_args(["--config", str(EVAL / f"{name}.yaml"), *header_override(name)]).as_dict()
    args = config["evaluation"]["init_args"]
    assert args["judge"]["class_path"] == f"igmu_lightning.evaluation.judges.{class_path}"
    assert (args["judge"]["init_args"]["path"], args["target"]) == (path, target)
    if class_path == "HFClassifier":
        assert args["judge"]["init_args"]["target"] == target
