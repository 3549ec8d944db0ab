"""Adapter methods: LoRA (peft) and plain-module adapters attached in ``attach_adapters``, their
teacher (adapters off), their delta, and the three exports (merged folder, delta, diffusers LoRA)."""

import json

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from igmu_lightning.algorithms import UnlearningModule
from igmu_lightning.backbone import FromCheckpoint, Pretrained, TinySD, WithDelta
from igmu_lightning.backbone.delta import DELTA_FILE, canonical_header, read_delta, save_delta
from igmu_lightning.data import PromptData
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.adapters import LORA_DIR, Eraser, LoRA, ModuleAdapter, merged_backbone

LORA = LoRA(targets=r".*\.attn2\.(to_k|to_v)", rank=2, alpha=3.0)  # alpha != rank: the scale must travel


class LoRAMethod(UnlearningModule):
    """A minimal adapter method: LoRA on attn2 only, trained so the concept predicts what the teacher
    predicts for the empty prompt (an ESD-like loss without the guidance term)."""

    def __init__(self, backbone, lr: float = 5e-2, export_dir: str | None = None) -> None:
        super().__init__(backbone, ["lora"], lr, export_dir)

    def attach_adapters(self, backbone) -> None:
        backbone.attach(LoRA(targets=LORA.targets, rank=LORA.rank, alpha=LORA.alpha))

    def training_step(self, batch, batch_idx):
        n = len(batch["prompt"])
        with torch.no_grad():
            c, null = self.backbone.encode_prompts(batch["prompt"]), self.backbone.encode_prompts([""] * n)
        x, t = torch.randn(n, 4, 8, 8, device=self.device), torch.randint(0, 1000, (n,), device=self.device)
        target = self.teacher(x, t, null).sample
        return F.mse_loss(self.backbone.unet(x, t, encoder_hidden_states=c).sample, target)


def probe(backbone, prompt: str = "a cat") -> torch.Tensor:
    """UNet output on a fixed input: what every reload is compared on."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    with torch.no_grad():
        return backbone.unet(x, t, encoder_hidden_states=backbone.encode_prompts([prompt] * 2)).sample


@pytest.fixture(scope="module")
def trained(tiny_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "model"
    torch.manual_seed(0)
    module = LoRAMethod(tiny_spec, export_dir=str(out))
    trainer = Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(out.parent / "run"))  # fmt: skip
    trainer.fit(module, PromptData(["a cat"], batch_size=2, steps_per_epoch=3))
    module.eval()
    return module, out, trainer.checkpoint_callback.best_model_path


def test_the_lora_method_trains_only_its_adapters(trained, tiny_spec):
    module, _, _ = trained
    assert module.trainable_names and all(".lora_" in n for n in module.trainable_names)
    assert module.originals == {} and module.text_originals == {}  # adapter tensors have no originals
    lora_b = [p for n, p in module.backbone.named_parameters() if ".lora_B." in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it moved
    base = tiny_spec.build()
    assert not torch.allclose(probe(module.backbone), probe(base), atol=1e-4)


def test_the_teacher_is_the_model_with_its_adapters_off(trained, tiny_spec):
    module, _, _ = trained
    base = tiny_spec.build()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 900])
    c = base.encode_prompts(["a cat", "a dog"])
    with torch.no_grad():
        expected = base.unet(x, t, encoder_hidden_states=c).sample
        student = module.backbone.unet(x, t, encoder_hidden_states=c).sample
    teacher = module.teacher(x, t, c).sample
    assert torch.allclose(teacher, expected, atol=1e-6)
    assert not torch.allclose(student, expected, atol=1e-4)
    with torch.no_grad():  # the switch is undone: the student is back, trainability unchanged
        assert torch.equal(module.backbone.unet(x, t, encoder_hidden_states=c).sample, student)
    assert [n for n, p in module.backbone.named_parameters() if p.requires_grad] == [n[9:] for n in module.trainable_names]


def test_the_delta_holds_the_adapters_and_rebuilds_the_model(trained, tiny_spec):
    module, out, _ = trained
    tensors, meta = read_delta(out / DELTA_FILE)
    assert meta["adapters"] == [LORA.to_config()]
    assert set(tensors) == set(module.backbone.adapter_tensor_names) and all(".lora_" in n for n in tensors)
    assert meta["base_hashes"] == tiny_spec.build().hashes()  # of the base, before attaching anything
    rebuilt = WithDelta(str(out)).build()
    assert torch.allclose(probe(rebuilt), probe(module.backbone), atol=1e-6)
    with rebuilt.adapters_disabled():
        assert torch.allclose(probe(rebuilt), probe(tiny_spec.build()), atol=1e-6)


def test_an_adapter_delta_refuses_another_base_before_attaching(trained):
    _, out, _ = trained
    with pytest.raises(IGMUError, match="made from another base model.*unet hashes differ"):
        WithDelta(str(out / DELTA_FILE), base=TinySD(seed=3, image_size=16)).build()


def test_new_tensor_names_need_the_adapters_that_make_them(trained, tiny_spec, tmp_path):
    module, out, _ = trained
    tensors, meta = read_delta(out / DELTA_FILE)
    base_hashes = meta["base_hashes"]
    save_delta(tmp_path / "undeclared.safetensors", tensors, base_hashes, tiny_spec)  # adapters left out
    with pytest.raises(IGMUError, match="holds tensor '.*lora_A.*', which the base model lacks"):
        WithDelta(str(tmp_path / "undeclared.safetensors")).build()
    stray = {**tensors, "unet.conv_in.lora_A.igmu.weight": torch.zeros(2, 4)}  # not a target of the LoRA
    save_delta(tmp_path / "stray.safetensors", stray, base_hashes, tiny_spec, [LORA])
    with pytest.raises(IGMUError, match="holds tensor 'unet.conv_in.lora_A.igmu.weight', which the base model with its adapters lacks"):
        WithDelta(str(tmp_path / "stray.safetensors")).build()


def test_a_delta_without_adapters_is_byte_for_byte_as_before(tiny_spec, tmp_path):
    """No adapters, no new metadata key: the file is the plain safetensors of the tensors with the three
    original metadata entries, header keys sorted (built here independently of save_delta)."""
    tensors = {"unet.conv_in.weight": torch.arange(12.0).view(3, 4), "unet.conv_in.bias": torch.ones(3)}
    hashes = {"unet": "a", "text_encoder": "b", "vae": "c"}
    path = save_delta(tmp_path / "d.safetensors", tensors, hashes, tiny_spec)
    meta = {"format": "igmu-delta/1", "base": json.dumps(tiny_spec.to_config()), "base_hashes": json.dumps(hashes, sort_keys=True)}
    assert path.read_bytes() == canonical_header(save_tensors(tensors, metadata=meta))
    with safe_open(str(path), framework="pt") as f:
        assert set(f.metadata()) == {"format", "base", "base_hashes"}
    assert read_delta(path)[1]["adapters"] == []


def test_the_merged_folder_loads_as_a_plain_model(trained):
    module, out, _ = trained
    loaded = Pretrained(str(out)).build()
    names = list(loaded.state_dict())
    assert not any(".lora_" in n or ".base_layer." in n for n in names) and not loaded.adapters
    assert torch.allclose(probe(loaded), probe(module.backbone), atol=1e-5)
    assert torch.allclose(probe(loaded, "a dog"), probe(module.backbone, "a dog"), atol=1e-5)


def test_the_lora_folder_loads_into_the_base_pipeline_with_diffusers(trained, tiny_spec):
    module, out, _ = trained
    base = tiny_spec.build()
    pipe = base.pipeline()  # shares base's modules: load_lora_weights adapts base.unet in place
    before = probe(base)
    pipe.load_lora_weights(str(out / LORA_DIR / LORA.name))
    assert any(".lora_" in n for n, _ in base.unet.named_parameters())
    assert torch.allclose(probe(base), probe(module.backbone), atol=1e-5)
    assert not torch.allclose(before, probe(base), atol=1e-4)


def test_the_checkpoint_rebuilds_the_adapter_model(trained, tiny_spec):
    module, _, checkpoint = trained
    assert checkpoint
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["igmu"]["adapters"] == [LORA.to_config()]
    assert torch.allclose(probe(FromCheckpoint(checkpoint, base=tiny_spec).build()), probe(module.backbone), atol=1e-6)
    again = LoRAMethod.load_from_checkpoint(checkpoint, backbone=tiny_spec)  # Lightning's own reload: attach, then the tensors
    assert torch.allclose(probe(again.backbone), probe(module.backbone), atol=1e-6)


def test_a_text_encoder_lora_has_a_teacher_and_merges(tiny_spec):
    class TextLoRA(UnlearningModule):
        def attach_adapters(self, backbone):
            backbone.attach(LoRA(targets=r".*self_attn\.(q_proj|v_proj)", rank=2, component="text_encoder"))

    module = TextLoRA(tiny_spec, ["lora"], lr=1e-3)
    with torch.no_grad():
        for n, p in module.backbone.text_encoder.named_parameters():
            if ".lora_B." in n:
                p.normal_(generator=torch.Generator().manual_seed(len(n)))
    base = tiny_spec.build()
    prompts = ["a cat", "a red triangle"]
    assert not torch.allclose(module.backbone.encode_prompts(prompts), base.encode_prompts(prompts), atol=1e-4)
    assert torch.allclose(module.teacher_encode(prompts), base.encode_prompts(prompts), atol=1e-6)
    merged = merged_backbone(module.backbone)
    assert torch.allclose(merged.encode_prompts(prompts), module.backbone.encode_prompts(prompts), atol=1e-5)


def test_a_plain_module_adapter_attaches_switches_off_and_travels_in_a_delta(tiny_spec, tmp_path):
    eraser = ModuleAdapter(f"{Eraser.__module__}.Eraser", r".*\.attn2", name="eraser", init_args={"rank": 3})
    model = tiny_spec.build()
    base_out = probe(model)
    new = model.attach(eraser)
    assert new and all(".attn2.igmu_eraser." in n for n in new)
    assert len({n.split(".igmu_eraser.")[0] for n in new}) == 4  # the tiny UNet has four attn2 layers
    assert torch.equal(probe(model), base_out)  # up starts at zero: the base model
    with torch.no_grad():
        for name in new:
            model.get_parameter(name).normal_(generator=torch.Generator().manual_seed(len(name)))
    adapted = probe(model)
    assert not torch.allclose(adapted, base_out, atol=1e-4)
    with model.adapters_disabled():
        assert torch.equal(probe(model), base_out)
    state = model.state_dict()
    save_delta(tmp_path / "eraser.safetensors", {n: state[n] for n in new}, model.base_hashes(), tiny_spec, [eraser])
    assert torch.allclose(probe(WithDelta(str(tmp_path / "eraser.safetensors")).build()), adapted, atol=1e-6)
    with pytest.raises(IGMUError, match="does not merge into plain weights"):
        merged_backbone(model)
    with pytest.raises(IGMUError, match="carries adapters"):
        model.save_pretrained(tmp_path / "folder")


def test_adapter_kinds_come_from_this_project_only(tiny_spec):
    with pytest.raises(IGMUError, match="'torch.nn.Linear' is not part of igmu_lightning"):
        tiny_spec.build().attach(ModuleAdapter("torch.nn.Linear", r".*\.attn2"))
    with pytest.raises(IGMUError, match="added no tensor"):
        tiny_spec.build().attach(ModuleAdapter(f"{Eraser.__module__}.Eraser", r".*\.attn9"))
    with pytest.raises(IGMUError, match="LoRA targets"):
        tiny_spec.build().attach(LoRA(targets=r".*\.attn9\.to_k"))
