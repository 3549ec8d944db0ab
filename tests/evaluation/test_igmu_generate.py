import json

import pytest

from igmu_lightning.backbone import TinySD
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.igmu_generate import GenerateAndScore
from igmu_lightning.evaluation.judges import SavedDetector
from igmu_lightning.sampling import SamplerSettings
from tests.conftest import ROOT

SHAPE = str(ROOT / "checkpoints/world/detectors/shape")


def make(tmp_path, **kw):
    forget, retain = tmp_path / "forgot.json", tmp_path / "retain.json"
    forget.write_text(json.dumps({"attribute_hollow": {"circle": ["a hollow red circle", "a hollow blue circle"]}}))
    retain.write_text(json.dumps({"attribute_hollow": {"circle": ["a red circle", "a blue circle"]}}))
    args = dict(methods={"other": TinySD(seed=3, image_size=32)}, original=TinySD(seed=0, image_size=32),
                out=str(tmp_path / "out"), concept="Hollow", task="attribute_hollow", forget_prompts=str(forget),
                retain_prompts=str(retain), judge=SavedDetector(SHAPE), target="circle",
                sampler=SamplerSettings(steps=2), fid_features=SHAPE, distance_features=SHAPE)  # fmt: skip
    return GenerateAndScore(**{**args, **kw})


def test_generates_igmu_layout_and_scores_every_method(tmp_path):
    output = make(tmp_path).run(seed=0)
    root = tmp_path / "out" / "Hollow"
    assert sorted(p.name for p in (root / "forgot").iterdir()) == ["ORG", "other"]
    assert sorted(p.name for p in (root / "forgot/other/circle").iterdir()) == ["0_0_0.png", "0_1_0.png"]
    assert (root / "remove_word/ORG/circle/0_1_0.png").is_file() and not (root / "remove_word/other").exists()
    assert set(output.methods) == {"ORG", "other"}
    assert output.methods["other"]["aspects"]["preservation"]["fid_remove_word"]["n"] == 2
    # a second run finds every image on disk and regenerates nothing
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    make(tmp_path).run(seed=0)
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}


def test_bad_prompt_files(tmp_path):
    evaluation = make(tmp_path, task="nudity")
    with pytest.raises(IGMUError, match="has no task 'nudity'"):
        evaluation.run(seed=0)
    evaluation = make(tmp_path)
    (tmp_path / "forgot.json").write_text("{not json")
    with pytest.raises(IGMUError, match="is not valid JSON"):
        evaluation.run(seed=0)


def hub_files(tmp_path):
    target, multilingual, adversarial = tmp_path / "hollow.csv", tmp_path / "multilingual.csv", tmp_path / "ring.txt"
    target.write_text('a hollow red circle\n"a hollow blue circle, plain background"\n')
    multilingual.write_text("Original,Spanish,French,German,Italian,Portuguese,Index\n"
                            "a hollow red circle,un círculo rojo hueco,un cercle rouge creux,ein hohler roter Kreis,un cerchio rosso cavo,um círculo vermelho oco,0\n"
                            "a hollow blue circle,un círculo azul hueco,un cercle bleu creux,ein hohler blauer Kreis,un cerchio blu cavo,um círculo azul oco,1\n")  # fmt: skip
    adversarial.write_text("holow circel red ~~\nunfilled ring, blue\nempty circle xq\n")
    return target, multilingual, adversarial


def test_hub_prompt_files_as_prompt_sources(tmp_path):
    import torch

    from igmu_lightning.data import load_image

    target, multilingual, adversarial = hub_files(tmp_path)
    evaluation = make(tmp_path, forget_prompts=str(target), retain_prompts=None, multilingual_prompts=str(multilingual),
                      adversarial_prompts={"ring_a_bell": str(adversarial)}, fid_features=None, distance_features=None)  # fmt: skip
    output = evaluation.run(seed=0)
    root = tmp_path / "out" / "Hollow"
    assert sorted(p.name for p in (root / "forgot/other/hollow").iterdir()) == ["0_0_0.png", "0_1_0.png"]
    assert sorted(p.name for p in (root / "multilingual/ORG").iterdir()) == ["french", "german", "italian", "original", "portuguese", "spanish"]
    assert sorted(p.name for p in (root / "adversarial/other/ring_a_bell").iterdir()) == ["0_0_0.png", "0_1_0.png", "0_2_0.png"]
    judge = SavedDetector(SHAPE).build()
    for method in ("ORG", "other"):
        robustness = output.methods[method]["aspects"]["robustness"]
        assert sorted(robustness) == ["adversarial.ring_a_bell.target_rate"] + [
            f"multilingual.{lang}.target_rate" for lang in ("french", "german", "italian", "original", "portuguese", "spanish")
        ]
        assert robustness["multilingual.german.target_rate"]["n"] == 2 and robustness["adversarial.ring_a_bell.target_rate"]["n"] == 3
        images = torch.stack([load_image(p) for p in sorted((root / "adversarial" / method / "ring_a_bell").glob("*.png"))])
        expected = (judge.predict(images) == judge.class_names.index("circle")).float().mean().item()
        assert robustness["adversarial.ring_a_bell.target_rate"]["value"] == pytest.approx(expected)
        assert output.methods[method]["aspects"]["forgetting"]["target_rate"]["n"] == 2


def test_a_bad_hub_file_stops_before_any_image_is_made(tmp_path):
    target, multilingual, adversarial = hub_files(tmp_path)
    multilingual.write_text("Original,Spanish\na,b\n")
    evaluation = make(tmp_path, forget_prompts=str(target), retain_prompts=None, multilingual_prompts=str(multilingual))
    with pytest.raises(IGMUError, match="has header Original,Spanish; HUB's multilingual CSV has"):
        evaluation.run(seed=0)
    adversarial.write_text("\n\n")
    evaluation = make(tmp_path, forget_prompts=str(target), retain_prompts=None, adversarial_prompts={"rab": str(adversarial)})
    with pytest.raises(IGMUError, match="adversarial prompt file 'rab' '.*ring.txt' is empty"):
        evaluation.run(seed=0)
    assert not (tmp_path / "out").exists()
    with pytest.raises(IGMUError, match="must be a plain folder name"):
        make(tmp_path, adversarial_prompts={"../x": str(adversarial)})
