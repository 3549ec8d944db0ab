"""Sampling-time guidance saved beside a model: read back as the same rule, and only a project's
``SamplingGuidance`` class is accepted from a file."""

import json
import shutil

import pytest

from igmu_lightning.algorithms.sld import SafetyGuidance
from igmu_lightning.backbone import Pretrained
from igmu_lightning.backbone.guidance import GUIDANCE_FILE, read_guidance
from igmu_lightning.errors import IGMUError


def test_a_saved_guidance_comes_back_equal(tmp_path):
    guidance = SafetyGuidance("a cat", warmup=3, scale=20.0)
    (tmp_path / GUIDANCE_FILE).write_text(json.dumps(guidance.to_config()))
    assert read_guidance(tmp_path) == guidance
    assert read_guidance(tmp_path / "elsewhere") is None


@pytest.mark.parametrize(
    "config, words",
    [
        ({"class_path": "igmu_lightning.backbone.Pretrained", "init_args": {}}, "is not a guidance class"),
        ({"class_path": "os.system", "init_args": {"command": "true"}}, "is not part of igmu_lightning"),
        ({"init_args": {}}, "class_path/init_args"),
    ],
)
def test_a_guidance_file_naming_anything_else_is_refused(tmp_path, tiny_folder, config, words):
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    (folder / GUIDANCE_FILE).write_text(json.dumps(config))
    with pytest.raises(IGMUError, match=words):
        Pretrained(str(folder)).build()
