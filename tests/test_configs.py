"""Every shipped YAML is parsed against the real signatures (full experiment configs are also
instantiated, with the tiny backbone swapped in), so a shipped config can never rot."""

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule

from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.cli import IGMUCLI
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluate_cli import build_parser
from tests.conftest import ROOT, resolved_config

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TINY = str(ROOT / "configs/backbone/tiny.yaml")
# How each top-level folder is used: a fragment for --model.backbone, a --config fragment for the
# trainer, a fragment for --data, an evaluate.py config, or a whole train.py experiment.
KINDS = {
    "backbone": "backbone",
    "data": "data",
    "trainer": "trainer",
    "eval": "eval",
    "finetune": "experiment",
    "world": "experiment",
    "detectors": "detector",
    "unlearn": "experiment",
    "benchmark": "benchmark",
}


def kind(path: Path) -> str:
    folder = path.relative_to(ROOT / "configs").parts[0]
    assert folder in KINDS, f"configs/{folder}/ is not known to the config test: add it to KINDS"
    return KINDS[folder]


class ParseOnly(IGMUCLI):
    """(With run=False there are no subcommands.) Stops LightningCLI after parsing (trainer presets name GPUs this machine does not have)."""

    def before_instantiate_classes(self) -> None:
        raise StopIteration


def swap_backbones(node):
    """Replace every backbone in a parsed config by the tiny one (no SD weights here)."""
    if isinstance(node, dict):
        return {k: (TINY if k == "backbone" else swap_backbones(v)) for k, v in node.items()}
    return node


def tiny_clip_vision(folder: Path) -> str:
    """A random CLIP vision tower with a 512-d projection, saved as a transformers folder (no hub here)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, projection_dim=512)  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return str(folder)


def test_every_config_folder_is_known():
    assert CONFIGS
    for path in CONFIGS:
        kind(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_parses_against_the_real_signatures(path, tmp_path, monkeypatch):
    what = kind(path)
    if what == "benchmark":  # a tier of python -m igmu_lightning.benchmark: its cells, from the repository root
        from igmu_lightning.benchmark import load_tier, plan

        monkeypatch.chdir(ROOT)
        assert plan(load_tier(str(path))[1], tmp_path)
    elif what == "backbone":
        parser = ArgumentParser()
        parser.add_subclass_arguments(BackboneSpec, "backbone")
        spec = parser.instantiate_classes(parser.parse_args(["--backbone", str(path)])).backbone
        assert isinstance(spec, BackboneSpec)
    elif what == "data":
        parser = ArgumentParser()
        parser.add_subclass_arguments(LightningDataModule, "data")
        data = parser.instantiate_classes(parser.parse_args(["--data", str(path)])).data
        assert isinstance(data, LightningDataModule)
    elif what == "trainer":
        with pytest.raises(StopIteration):
            ParseOnly(args=["--config", str(path), "--model", "igmu_lightning.modules.TextToImage",
                            "--model.backbone", TINY, "--data", "igmu_lightning.data.CaptionedFolderData",
                            "--data.root", "x"], run=False)  # fmt: skip
    elif what == "eval":
        parser = build_parser()
        config = parser.parse_args(["--config", str(path)])
        as_dict = swap_backbones(config.as_dict())
        as_dict.pop("config", None)
        config = parser.parse_object(as_dict)
        assert parser.instantiate_classes(config).evaluation is not None
    else:  # whole experiments; diffusion models get the tiny backbone, detectors are small already
        swap = ["--model.init_args.backbone", TINY] if what == "experiment" else []
        if what == "detector" and "ClipVisionFeatures" in path.read_text():  # IGMU's SD-scale detectors: a tiny CLIP
            swap = ["--model.init_args.encoder.init_args.path", tiny_clip_vision(tmp_path / "clip")]
        cli = IGMUCLI(
            args=["--config", str(path), *swap, "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(tmp_path)],
            run=False,
        )  # fmt: skip
        assert cli.model is not None and cli.datamodule is not None


# --- composition: what every experiment shares lives in one fragment ----------------------------
UNLEARN = sorted((ROOT / "configs" / "unlearn").rglob("*.yaml"))
FRAGMENTS = {"world": ("world_cpu", "world.yaml"), "sd14": ("sd14", "sd14.yaml")}


@pytest.mark.parametrize("path", UNLEARN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_unlearning_config_takes_its_shared_blocks_from_the_fragments(path):
    """No experiment repeats the trainer, seed or backbone blocks: it includes the fragments, whose
    values reach the resolved config; one-step methods (UCE, RECE, SLD, SAFREE) run on the step counter."""
    text = path.read_text()
    trainer, backbone = FRAGMENTS[path.parent.name]
    for repeated in ("seed_everything:", "\ntrainer:", "accelerator:", "precision:", "igmu_lightning.backbone."):
        assert repeated not in text, f"{path.name} repeats '{repeated.strip()}': it belongs in a fragment"
    assert f"    backbone: ../../backbone/{backbone}\n" in text
    config = resolved_config(path)
    shared = yaml.safe_load((ROOT / "configs/trainer" / f"{trainer}.yaml").read_text())
    assert config["seed_everything"] == shared["seed_everything"]
    assert {k: config["trainer"][k] for k in shared["trainer"]} == shared["trainer"]
    expected = yaml.safe_load((ROOT / "configs/backbone" / backbone).read_text())
    assert config["model"]["init_args"]["backbone"]["init_args"]["path"] == expected["init_args"]["path"]
    one_step = config["model"]["class_path"].rsplit(".", 1)[-1] in ("UCE", "RECE", "SLD", "SAFREE")
    assert (config["data"]["class_path"] == "igmu_lightning.data.StepData") == one_step
    if one_step:
        assert "config: ../../trainer/" in text and text.count("_one_step.yaml") == 1 and "data: ../../data/one_step.yaml" in text
        assert (config["trainer"]["max_steps"], config["trainer"]["logger"], config["data"]["init_args"]) == (1, False, {"steps_per_epoch": 1})


def test_a_change_to_a_fragment_reaches_every_experiment_and_an_experiment_overrides_it(tmp_path):
    """Edit the shared trainer and backbone fragments once: every world experiment (also through the
    one-step chain) resolves to the new values, and an experiment's own dotted keys still win."""
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    world_cpu = configs / "trainer/world_cpu.yaml"
    world_cpu.write_text(world_cpu.read_text().replace("precision: 32-true", "precision: bf16-true\n  log_every_n_steps: 7")
                         .replace("seed_everything: 0", "seed_everything: 5"))  # fmt: skip
    backbone = configs / "backbone/world.yaml"
    backbone.write_text(backbone.read_text().replace("path: checkpoints/world/base", "path: elsewhere/base"))
    for name, own_log_every in (("esd_object", 25), ("ca_object", 25), ("uce_object", 7), ("sld_style", 7)):
        config = resolved_config(configs / "unlearn/world" / f"{name}.yaml")
        assert (config["seed_everything"], config["trainer"]["precision"]) == (5, "bf16-true"), name
        assert config["trainer"]["log_every_n_steps"] == own_log_every, name  # the experiment's own value wins
        assert config["model"]["init_args"]["backbone"]["init_args"]["path"] == "elsewhere/base", name


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("uce_object", "data.init_args.prompts", "[triangle]"),  # UCE's texts are its erase / preserve
        ("sld_object", "data.init_args.prompts", "[triangle]"),  # SLD's is its safety_concept
        ("sld_object", "data.init_args.batch_size", "1"),
        ("esd_object", "model.init_args.concept", "triangle"),  # ESD's concept is the data's prompt
        ("ca_object", "model.init_args.anchor_prompts", "[a red square]"),  # CA's anchors are its data's
        ("ca_object", "model.init_args.images_per_prompt", "1"),
        ("ca_object", "model.init_args.anchor_dir", "x"),
        ("ca_object", "data.init_args.concept", "triangle"),
    ],
)
def test_dead_and_moved_keys_are_refused(name, key, value):
    path = ROOT / "configs/unlearn/world" / f"{name}.yaml"
    with pytest.raises(IGMUError, match=f"unknown key '{key}'"):
        resolved_config(path, f"--{key}", value)


def test_an_old_style_concept_ablation_config_is_refused(tmp_path):
    """A config written before the anchors moved to the data module fails, naming the key, instead of
    training on something else."""
    old = (ROOT / "configs/unlearn/world/ca_style.yaml").read_text().replace("../../", f"{ROOT / 'configs'}/")
    old = old.replace("    target: striped\n", "    target: striped\n    anchor_prompts: [a red circle on a plain background]\n")
    (tmp_path / "old.yaml").write_text(old)
    with pytest.raises(IGMUError, match="anchor_prompts"):
        resolved_config(tmp_path / "old.yaml")


CONFIG_PATH = re.compile(r"configs/[\w./-]+\.yaml")


def named_config_paths() -> dict[str, set[str]]:
    """Shipped-config paths that users are told to run, by where they are named: README.md, every
    .py docstring, and any doc or YAML line with a ``--config`` command (docs/parity.md's citations
    of the official repositories' own config files are no command and are left out)."""
    texts = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    for path in [*ROOT.glob("*.py"), *(p for d in ("igmu_lightning", "scripts", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py"))]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
        texts[str(path.relative_to(ROOT))] = "\n".join(ast.get_docstring(n) or "" for n in nodes)
    for path in [*(ROOT / "docs").glob("*.md"), *CONFIGS]:
        lines = path.read_text(encoding="utf-8").splitlines()
        texts[str(path.relative_to(ROOT))] = "\n".join(line for line in lines if "--config" in line)
    return {where: set(CONFIG_PATH.findall(text)) for where, text in texts.items()}


def test_every_config_path_named_in_docs_and_docstrings_exists():
    named = named_config_paths()
    assert "configs/finetune/sd14_captioned_folder.yaml" in named["train.py"]  # the scan reads docstrings
    missing = [f"{where}: {path}" for where, paths in named.items() for path in sorted(paths) if not (ROOT / path).is_file()]
    assert not missing, "named but not shipped:\n" + "\n".join(missing)
