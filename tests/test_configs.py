"""Every shipped YAML is parsed against the real signatures (full experiment configs are also
instantiated, with the tiny backbone swapped in), so a shipped config can never rot."""

import ast
import re
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.cli import IGMUCLI
from igmu_lightning.evaluate_cli import build_parser
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TINY = str(ROOT / "configs/backbone/tiny.yaml")
# How each top-level folder is used: a fragment for --model.backbone, a --config fragment for the
# trainer, an evaluate.py config, or a whole train.py experiment.
KINDS = {
    "backbone": "backbone",
    "trainer": "trainer",
    "eval": "eval",
    "finetune": "experiment",
    "world": "experiment",
    "detectors": "detector",
    "unlearn": "experiment",
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


def test_every_config_folder_is_known():
    assert CONFIGS
    for path in CONFIGS:
        kind(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_parses_against_the_real_signatures(path, tmp_path):
    what = kind(path)
    if what == "backbone":
        parser = ArgumentParser()
        parser.add_subclass_arguments(BackboneSpec, "backbone")
        spec = parser.instantiate_classes(parser.parse_args(["--backbone", str(path)])).backbone
        assert isinstance(spec, BackboneSpec)
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
        cli = IGMUCLI(
            args=["--config", str(path), *swap, "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(tmp_path)],
            run=False,
        )  # fmt: skip
        assert cli.model is not None and cli.datamodule is not None


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
