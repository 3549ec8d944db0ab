"""Optimizers and schedules from config: every module's default is its official optimizer, a config's
``optimizer`` / ``lr_scheduler`` really train, and a learning rate set in two places is refused."""

import functools
import math

import pytest
import torch
import yaml
from diffusers.optimization import get_cosine_schedule_with_warmup
from lightning.pytorch import Callback, Trainer

from igmu_lightning.algorithms import ESD, FMN, MACE, SLD, UCE, AdvUnlearn, ConceptAblation, SalUn
from igmu_lightning.cli import IGMUCLI
from igmu_lightning.data import CaptionedFolderData
from igmu_lightning.detectors import ImageClassifier
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules import AutoencoderTraining, TextToImage
from tests.conftest import ROOT

TINY = str(ROOT / "configs/backbone/tiny.yaml")
TORCH_BETAS, TORCH_EPS = (0.9, 0.999), 1e-8  # every official code keeps torch's betas and eps
# module -> (official optimizer, lr, weight decay), from docs/parity.md's "optimizer" rows
OFFICIAL = {
    "ESD": (torch.optim.Adam, 1e-5, 0.0),  # E@b8aeab6 train-esd.py:210, :300
    "AdvUnlearn": (torch.optim.Adam, 1e-5, 0.0),  # A@9d23124 AdvUnlearn.py:62, :251
    "SalUn": (torch.optim.Adam, 1e-5, 0.0),  # S@a6e89fd :46-56
    "ConceptAblation": (torch.optim.AdamW, 1.6e-5, 1e-2),  # CA train.py:880-938 (2e-6 x 4 x 2 scaled)
    "FMN": (torch.optim.AdamW, 2e-6, 1e-2),  # F configs/attn.yaml:10, :44
    "MACE": (torch.optim.AdamW, 1e-5, 1e-2),  # MA configs/object/erase_ship.yaml:9, :80; cfr_lora_training.py:367-373
    "TextToImage": (torch.optim.AdamW, 1e-5, 1e-2),
    "AutoencoderTraining": (torch.optim.Adam, 1e-3, 0.0),
    "ImageClassifier": (torch.optim.AdamW, 1e-3, 1e-4),
}


def build(name: str, spec, **kwargs):
    """Each module with the fewest arguments it takes (the tiny backbone)."""
    makers = {
        "ESD": lambda: ESD(spec, **kwargs),
        "AdvUnlearn": lambda: AdvUnlearn(spec, retain_prompts=["a square"], **kwargs),
        "SalUn": lambda: SalUn(spec, pseudo_prompt="a square", **kwargs),
        "ConceptAblation": lambda: ConceptAblation(spec, target="triangle", anchor="square", **kwargs),
        "FMN": lambda: FMN(spec, concept="triangle", **kwargs),
        "MACE": lambda: MACE(spec, concepts=["triangle"], mapping=["square"], **kwargs),
        "TextToImage": lambda: TextToImage(spec, **kwargs),
        "AutoencoderTraining": lambda: AutoencoderTraining(spec, **kwargs),
        "ImageClassifier": lambda: ImageClassifier(["a", "b"], **kwargs),
    }  # fmt: skip
    return makers[name]()


def optimizer_of(module) -> torch.optim.Optimizer:
    out = module.configure_optimizers()
    return out["optimizer"] if isinstance(out, dict) else out


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_the_default_is_the_official_optimizer(name, tiny_spec):
    cls, lr, weight_decay = OFFICIAL[name]
    optimizer = optimizer_of(build(name, tiny_spec))
    assert type(optimizer) is cls
    for group in optimizer.param_groups:
        assert group["lr"] == lr and group["betas"] == TORCH_BETAS and group["eps"] == TORCH_EPS
        assert group["amsgrad"] is False
    assert optimizer.param_groups[0]["weight_decay"] == weight_decay


def test_closed_form_and_sampling_time_methods_have_no_optimizer(tiny_spec):
    assert UCE(tiny_spec, erase=["triangle"]).configure_optimizers() is None
    assert SLD(tiny_spec).configure_optimizers() is None


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_shortcut_keys_keep_their_meaning_and_clash_with_an_optimizer(name, tiny_spec):
    _, _, weight_decay = OFFICIAL[name]
    optimizer = optimizer_of(build(name, tiny_spec, lr=0.25))
    assert optimizer.param_groups[0]["lr"] == 0.25 and optimizer.param_groups[0]["weight_decay"] == weight_decay
    sgd = functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9)
    optimizer = optimizer_of(build(name, tiny_spec, optimizer=sgd))
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["lr"] == 0.5
    with pytest.raises(IGMUError) as err:
        build(name, tiny_spec, optimizer=sgd, lr=0.25)
    assert "sets both optimizer (SGD) and lr" in str(err.value) and "\n" not in str(err.value)


def test_concept_ablation_groups_go_to_a_configured_optimizer(tiny_spec):
    module = build("ConceptAblation", tiny_spec, trainable=["xattn_kv", "embedding"], optimizer=torch.optim.SGD)
    optimizer = optimizer_of(module)
    assert type(optimizer) is torch.optim.SGD
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.0]  # SGD's own default, then the table's
    assert optimizer.param_groups[1]["params"] == [module.backbone.text_encoder.get_input_embeddings().weight]


class RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_a_config_optimizer_and_schedule_really_train(captioned_folder, tmp_path):
    """SGD and StepLR from a YAML file: the trainer holds an SGD, its lr halves every step, and the
    checkpoint stores both as class_path/init_args (it loads with weights_only=True)."""
    config = {
        "trainer": {"max_steps": 3, "accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "igmu_lightning.modules.TextToImage", "init_args": {
            "backbone": TINY, "trainable": ["xattn"],
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.4, "momentum": 0.5}},
            "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}}}},
        "data": {"class_path": "igmu_lightning.data.CaptionedFolderData",
                 "init_args": {"root": str(captioned_folder), "image_size": 16, "batch_size": 4}},
    }  # fmt: skip
    (tmp_path / "sgd.yaml").write_text(yaml.safe_dump(config))
    record = RecordLR()
    cli = IGMUCLI(args=["--config", str(tmp_path / "sgd.yaml")], run=False)
    before = {n: p.detach().clone() for n, p in cli.model.named_parameters() if p.requires_grad}
    cli.trainer.callbacks.append(record)
    cli.trainer.fit(cli.model, cli.datamodule)
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.5
    assert record.lrs == [0.4, 0.2, 0.1]
    assert any(not torch.equal(p, before[n]) for n, p in cli.model.named_parameters() if n in before)
    state = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)
    hparams = state["hyper_parameters"]
    assert hparams["optimizer"]["class_path"] == "torch.optim.SGD" and hparams["optimizer"]["init_args"]["lr"] == 0.4
    assert hparams["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.StepLR"


def test_a_directly_built_module_checkpoints_its_optimizer_as_plain_data(tiny_spec, captioned_folder, tmp_path):
    module = TextToImage(tiny_spec, trainable=["xattn_kv"], optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    trainer = Trainer(max_steps=1, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(module, CaptionedFolderData(str(captioned_folder), image_size=16, batch_size=4))
    state = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert state["hyper_parameters"]["optimizer"] == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1}}


def test_warmup_and_cosine_follow_diffusers(tiny_spec, captioned_folder):
    """The lr of each of 8 steps (warmup 3, cosine to 0 at step 8) is diffusers' get_scheduler's:
    0 at the first step, then 1/3, 2/3 of the peak, then the half cosine."""
    record = RecordLR()
    module = TextToImage(tiny_spec, trainable=["xattn_kv"], lr=0.1, warmup_steps=3, lr_schedule="cosine")
    trainer = Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[record])
    trainer.fit(module, CaptionedFolderData(str(captioned_folder), image_size=16, batch_size=4))
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=0.1), 3, 8)
    expected = []
    for _ in range(8):
        expected.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert record.lrs == expected
    assert record.lrs[:4] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    assert record.lrs[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 5)))  # step 7: 4/5 of the decay


def test_schedule_settings_that_cannot_work_are_refused(tiny_spec):
    with pytest.raises(IGMUError, match="sets both lr_scheduler and warmup_steps"):
        TextToImage(tiny_spec, warmup_steps=10, lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1))
    with pytest.raises(IGMUError, match="unknown lr_schedule 'cosinus'"):
        TextToImage(tiny_spec, lr_schedule="cosinus")
    with pytest.raises(IGMUError, match="lr_schedule cosine decays to 0 at trainer.max_steps: set trainer.max_steps"):
        TextToImage(tiny_spec, lr_schedule="cosine").configure_optimizers()  # no trainer: no max_steps
