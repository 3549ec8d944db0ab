"""A method that trains the text encoder gets a teacher for it too: ``teacher_encode`` gives the
original encoder's embeddings however far the student's moved."""

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import UnlearningModule
from igmu_lightning.data import PromptData
from igmu_lightning.sampling import Sampler, SamplerSettings

PROMPTS = ["a cat", "a red triangle", ""]


class TextEncoderMethod(UnlearningModule):
    """Trains the CLIP encoder layers (AdvUnlearn's set) to map the concept onto the teacher's ""."""

    def training_step(self, batch, batch_idx):
        n = len(batch["prompt"])
        student = self.backbone.encode_prompts(batch["prompt"])
        return F.mse_loss(student, self.teacher_encode([""] * n))


@pytest.fixture(scope="module")
def trained(tiny_spec):
    torch.manual_seed(0)
    module = TextEncoderMethod(tiny_spec, ["text_encoder_layers"], lr=5e-2)
    Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(module, PromptData(["a cat"], batch_size=2, steps_per_epoch=3))  # fmt: skip
    return module.eval()


def test_the_teacher_encoder_is_the_original_after_training(trained, tiny_spec):
    original = tiny_spec.build().encode_prompts(PROMPTS)  # a freshly built base: independent of the module
    assert trained.text_originals and not trained.originals  # the UNet was not trained
    assert torch.allclose(trained.teacher_encode(PROMPTS), original, atol=1e-6)
    with torch.no_grad():
        student = trained.backbone.encode_prompts(PROMPTS)
    assert not torch.allclose(student, original, atol=1e-3)


def test_the_teacher_sampler_uses_the_teacher_encoder(trained, tiny_spec):
    settings = SamplerSettings(steps=2, guidance_scale=3.0)
    expected = Sampler(tiny_spec.build(), settings).sample_batch(["a cat"], [5])
    assert torch.allclose(trained.teacher_sampler(settings).sample_batch(["a cat"], [5]), expected, atol=1e-5)
    assert not torch.allclose(Sampler(trained.backbone, settings).sample_batch(["a cat"], [5]), expected, atol=1e-4)
