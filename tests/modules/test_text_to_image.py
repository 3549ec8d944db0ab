import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.data import CaptionedFolderData
from igmu_lightning.modules import TextToImage


def fixed_loss(module, batch):
    """The DDPM loss at fixed noise and timesteps, so two evaluations are comparable."""
    with torch.random.fork_rng():
        torch.manual_seed(123)
        module.eval()
        with torch.no_grad():
            return module.diffusion_loss(batch["image"], batch["prompt"]).item()


def test_training_lowers_the_diffusion_loss(tiny_spec, captioned_folder):
    data = CaptionedFolderData(str(captioned_folder), image_size=16, batch_size=8)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = TextToImage(tiny_spec, trainable=["unet"], lr=2e-3, caption_dropout=0.0)
    before = fixed_loss(module, batch)
    trainer = Trainer(max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, data)
    assert fixed_loss(module, batch) < 0.8 * before
    # only what was asked for was trained
    base = tiny_spec.build()
    assert torch.equal(module.backbone.vae.encoder.conv_in.weight, base.vae.encoder.conv_in.weight)
    assert not torch.equal(module.backbone.unet.conv_in.weight, base.unet.conv_in.weight)


def test_checkpoint_holds_only_trained_tensors_and_resumes(tiny_spec, captioned_folder, tmp_path):
    from lightning.pytorch import seed_everything

    def fit(steps: int, root, ckpt_path=None) -> tuple[TextToImage, Trainer]:
        seed_everything(0)
        module = TextToImage(tiny_spec, trainable=["xattn"], lr=1e-3)
        trainer = Trainer(max_steps=steps, logger=False, default_root_dir=root, enable_progress_bar=False)
        trainer.fit(module, CaptionedFolderData(str(captioned_folder), image_size=16, batch_size=4), ckpt_path=ckpt_path)
        return module, trainer

    module, trainer = fit(3, tmp_path / "a")  # 2 batches an epoch: the checkpoint is one step into epoch 1
    ckpt = trainer.checkpoint_callback.best_model_path
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 3  # mid-epoch
    assert set(state["state_dict"]) == set(module.trainable_names)
    assert all(".attn2." in k for k in state["state_dict"])
    assert state["igmu"]["base_hashes"] == tiny_spec.build().hashes()

    resumed, trainer2 = fit(5, tmp_path / "a", ckpt_path=ckpt)
    assert trainer2.global_step == 5
    uninterrupted, _ = fit(5, tmp_path / "b")
    trained = dict(resumed.named_parameters())
    expected = dict(uninterrupted.named_parameters())
    base = dict(TextToImage(tiny_spec, trainable=["xattn"]).named_parameters())
    for name in resumed.trainable_names:  # the trained tensors moved, and exactly as without the interruption
        assert not torch.equal(trained[name], base[name]), name
        assert torch.equal(trained[name], expected[name]), name


def test_load_from_checkpoint_rebuilds_backbone_and_trained_weights(tiny_spec, captioned_folder, tmp_path):
    module = TextToImage(tiny_spec, trainable=["xattn_kv"], lr=1e-2)
    trainer = Trainer(max_steps=2, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(module, CaptionedFolderData(str(captioned_folder), image_size=16, batch_size=4))
    loaded = TextToImage.load_from_checkpoint(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert loaded.backbone.hashes() == module.backbone.hashes()
    assert loaded.backbone.hashes()["unet"] != tiny_spec.build().hashes()["unet"]


def test_a_run_checkpoint_is_a_backbone_for_evaluation(tiny_spec, captioned_folder, tmp_path):
    from igmu_lightning.backbone import FromCheckpoint, TinySD
    from igmu_lightning.errors import IGMUError

    module = TextToImage(tiny_spec, trainable=["xattn"], lr=1e-2)
    trainer = Trainer(max_steps=2, logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(module, CaptionedFolderData(str(captioned_folder), image_size=16, batch_size=4))
    ckpt = trainer.checkpoint_callback.best_model_path
    assert FromCheckpoint(ckpt).build().hashes() == module.backbone.hashes()
    with pytest.raises(IGMUError, match="made from another base model"):
        FromCheckpoint(ckpt, base=TinySD(seed=5)).build()
    with pytest.raises(IGMUError, match="does not exist"):
        FromCheckpoint(str(tmp_path / "none.ckpt")).build()
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    with pytest.raises(IGMUError, match="cannot be read safely"):
        FromCheckpoint(str(tmp_path / "bad.ckpt")).build()
