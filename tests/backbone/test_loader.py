import pytest
import torch
from diffusers import StableDiffusionPipeline

from igmu_lightning.backbone import Pretrained, TinySD, load_backbone
from igmu_lightning.errors import IGMUError
from tests.conftest import run_script


def test_tiny_backbone_is_deterministic_and_frozen(tiny_spec):
    a, b = tiny_spec.build(), tiny_spec.build()
    assert a.hashes() == b.hashes()
    assert TinySD(seed=1).build().hashes()["unet"] != a.hashes()["unet"]
    assert not any(p.requires_grad for p in a.parameters())
    state = torch.random.get_rng_state()
    tiny_spec.build()
    assert torch.equal(state, torch.random.get_rng_state())  # building leaves the global RNG alone


def test_folder_round_trip_through_the_sd_loader(tiny_spec, tiny_folder):
    loaded = Pretrained(str(tiny_folder)).build()
    assert loaded.hashes() == tiny_spec.build().hashes()
    assert loaded.image_size == 16 and loaded.encode_prompts(["a cat"]).shape == (1, 77, 32)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None)
    out = pipe(["a red triangle"], num_inference_steps=2, height=16, width=16, output_type="np")
    assert out.images.shape == (1, 16, 16, 3)


def test_dtype_choice(tiny_folder):
    model = load_backbone(str(tiny_folder), dtype="bfloat16", vae_dtype="float32")
    assert model.unet.dtype == torch.bfloat16 and model.vae.dtype == torch.float32
    with pytest.raises(IGMUError, match="dtype 'float8'"):
        load_backbone(str(tiny_folder), dtype="float8")


@pytest.mark.parametrize("path", ["/no/such/model", "./missing-model", "outputs/runs/model/final"])
def test_missing_local_path_is_a_one_line_error_naming_it(path):
    with pytest.raises(IGMUError) as err:
        load_backbone(path)
    message = str(err.value)
    assert path in message and "does not exist" in message and "\n" not in message


def test_file_or_non_model_folder_is_refused(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(IGMUError, match="is a file"):
        load_backbone(str(tmp_path / "model.ckpt"))
    with pytest.raises(IGMUError, match="not a diffusers model"):
        load_backbone(str(tmp_path))


def test_unreachable_hub_id_fails_fast_with_one_line():
    with pytest.raises(IGMUError) as err:
        load_backbone("CompVis/stable-diffusion-v1-4")  # HF_HUB_OFFLINE=1 in tests, nothing cached
    assert "CompVis/stable-diffusion-v1-4" in str(err.value) and "\n" not in str(err.value)


def test_cli_missing_model_path_exits_non_zero_with_one_line(captioned_folder, tmp_path):
    result = run_script(
        "train.py", "fit", "--config", "configs/finetune/sd14_captioned_folder.yaml",
        "--model.init_args.backbone.init_args.path", str(tmp_path / "nope"),
        "--data.init_args.root", str(captioned_folder), "--trainer.logger", "false",
    )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model path") and str(tmp_path / "nope") in last
    assert "Traceback" not in result.stderr


def edit_json(path, **changes):
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def sdxl_folder(folder):
    """A second text encoder, as SDXL ships it."""
    import shutil

    shutil.copytree(folder / "text_encoder", folder / "text_encoder_2")
    edit_json(folder / "model_index.json", text_encoder_2=["transformers", "CLIPTextModelWithProjection"])


def flow_folder(folder):
    """transformer/ instead of unet/ and a FlowMatch scheduler, as SD3 and FLUX ship them."""
    (folder / "unet").rename(folder / "transformer")
    edit_json(folder / "scheduler" / "scheduler_config.json", _class_name="FlowMatchEulerDiscreteScheduler")


UNSUPPORTED = {
    "v_prediction": (lambda f: edit_json(f / "scheduler" / "scheduler_config.json", prediction_type="v_prediction"),
                     "SD 2.x v-prediction models are not supported yet"),
    "sdxl_text_encoder_2": (sdxl_folder, "SDXL models are not supported yet"),
    "sdxl_add_embedding_unet": (lambda f: edit_json(f / "unet" / "config.json", addition_embed_type="text_time"),
                                "SDXL models are not supported yet"),
    "flow_matching": (flow_folder, "SD3 / FLUX-style models are not supported yet"),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(UNSUPPORTED))
def test_unsupported_model_kinds_are_refused_before_any_weights_load(kind, tiny_folder, tmp_path, monkeypatch):
    import shutil

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = tmp_path / kind
    shutil.copytree(tiny_folder, folder)
    make, message = UNSUPPORTED[kind]
    make(folder)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the model kind was checked")

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", no_weights)
    monkeypatch.setattr(CLIPTextModel, "from_pretrained", no_weights)
    for attempt in (lambda: load_backbone(str(folder)), Pretrained(str(folder)).check):
        with pytest.raises(IGMUError) as err:
            attempt()
        assert message in str(err.value) and str(folder) in str(err.value) and "\n" not in str(err.value)


def test_backbone_knows_its_prediction_type_and_refuses_v_prediction(tiny_spec):
    from igmu_lightning.backbone import Backbone

    backbone = tiny_spec.build()
    assert backbone.prediction_type == "epsilon"
    v_scheduler = type(backbone.scheduler).from_config(backbone.scheduler.config, prediction_type="v_prediction")
    with pytest.raises(IGMUError, match="SD 2.x v-prediction models are not supported yet"):
        Backbone(backbone.unet, backbone.text_encoder, backbone.tokenizer, backbone.vae, v_scheduler, source="tiny")
    sample = type(backbone.scheduler).from_config(backbone.scheduler.config, prediction_type="sample")
    with pytest.raises(IGMUError, match="prediction_type 'sample': only epsilon is supported"):
        Backbone(backbone.unet, backbone.text_encoder, backbone.tokenizer, backbone.vae, sample, source="tiny")
