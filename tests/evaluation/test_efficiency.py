"""The efficiency aspect reads the training run's record whatever the model was loaded from: an
exported folder, the delta file beside it, or the run's Lightning checkpoint; without a record,
the results say so."""

import json
import shutil

import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import UCE
from igmu_lightning.artifacts import RUN_RECORD, read_run_record
from igmu_lightning.backbone import FromCheckpoint, Pretrained, TinySD, WithDelta
from igmu_lightning.backbone.delta import DELTA_FILE
from igmu_lightning.data import PromptData
from igmu_lightning.evaluation.scoring import Scorecard
from igmu_lightning.evaluation.tasks import task_rule
from igmu_lightning.evaluation.world_eval import WorldEvaluation
from igmu_lightning.sampling import SamplerSettings
from tests.conftest import ROOT

BASE = TinySD(seed=0, image_size=32)


@pytest.fixture(scope="module")
def uce_run(tmp_path_factory):
    """A one-step UCE run on the tiny model: its export folder (diffusers + delta + run record) and
    a checkpoint written at the end of the run."""
    root = tmp_path_factory.mktemp("uce_run")
    module = UCE(BASE, erase=["a triangle"], preserve=["a square"], export_dir=str(root / "model"))
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=root)
    trainer.fit(module, PromptData(["a triangle"], steps_per_epoch=1))
    trainer.save_checkpoint(root / "run.ckpt")
    return root


def sources(root):
    """name -> (model spec, the cost numbers its run stored, read here without the reader)."""
    exported = json.loads((root / "model" / RUN_RECORD).read_text())
    stored = torch.load(root / "run.ckpt", map_location="cpu", weights_only=True)["igmu"]["run"]
    return {
        "folder": (Pretrained(str(root / "model")), exported),
        "delta": (WithDelta(str(root / "model" / DELTA_FILE)), exported),
        "checkpoint": (FromCheckpoint(str(root / "run.ckpt")), stored),
    }


def test_every_source_carries_its_run_record(uce_run):
    original = BASE.build()
    for name, (spec, expected) in sources(uce_run).items():
        card = Scorecard(task_rule("object"), "object", seed=0)
        card.efficiency(spec.build(), original)
        result = card.result()
        efficiency = result["aspects"]["efficiency"]
        assert "skipped" not in result, name
        assert efficiency["wall_time_s"]["value"] == pytest.approx(expected["wall_time_s"]) and expected["wall_time_s"] > 0, name
        assert efficiency["peak_memory_mb"]["value"] == expected["peak_memory_mb"] and expected["peak_memory_mb"] > 100, name
        assert efficiency["params_changed"]["value"] > 0, name


def test_a_missing_record_is_named_in_skipped(uce_run, tmp_path):
    alone = tmp_path / "moved" / DELTA_FILE  # a delta copied away from its export folder
    alone.parent.mkdir()
    shutil.copy(uce_run / "model" / DELTA_FILE, alone)
    card = Scorecard(task_rule("object"), "object", seed=0)
    card.efficiency(WithDelta(str(alone)).build(), BASE.build())
    result = card.result()
    assert "wall_time_s" not in result["aspects"]["efficiency"]
    assert result["skipped"] == dict.fromkeys(
        ("efficiency.peak_memory_mb", "efficiency.wall_time_s"), f"no run record beside {alone} (an exported run writes {RUN_RECORD} there)"
    )
    old = tmp_path / "old.ckpt"  # a checkpoint written before the peak memory was stored
    torch.save({"igmu": {"run": {"wall_time_s": 12.5}}}, old)
    assert read_run_record(old) == ({"wall_time_s": 12.5}, f"the run record {old} has no peak_memory_mb")


def test_world_evaluation_reports_the_cost_of_folder_delta_and_checkpoint_models(uce_run, tmp_path):
    specs = sources(uce_run)
    evaluation = WorldEvaluation("object", original=BASE, methods={name: spec for name, (spec, _) in specs.items()},
                                 detectors=str(ROOT / "checkpoints/world/detectors"), prompts_per_class=2,
                                 sampler=SamplerSettings(steps=2), cache_dir=str(tmp_path / "cache"))  # fmt: skip
    methods = evaluation.run(seed=0).methods
    for name, (_, expected) in specs.items():
        efficiency = methods[name]["aspects"]["efficiency"]
        assert efficiency["wall_time_s"]["value"] == pytest.approx(expected["wall_time_s"]) and "skipped" not in methods[name]
    assert set(methods["original"]["skipped"]) == {"efficiency.wall_time_s", "efficiency.peak_memory_mb"}
