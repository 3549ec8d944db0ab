import pytest
import torch
from lightning.pytorch import Trainer
from safetensors.torch import save_file

from igmu_lightning.algorithms import UCE
from igmu_lightning.backbone import Pretrained, TinySD, WithDelta
from igmu_lightning.backbone.delta import DELTA_FILE, read_delta
from igmu_lightning.data import PromptData
from igmu_lightning.errors import IGMUError


@pytest.fixture(scope="module")
def uce_export(tiny_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("uce") / "model"
    module = UCE(tiny_spec, erase=["a cat"], preserve=["a dog"], export_dir=str(out))
    Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(module, PromptData(["a cat"], steps_per_epoch=1))
    return out


@pytest.mark.smoke
def test_the_delta_holds_the_changed_tensors_only_and_rebuilds_the_model(tiny_spec, uce_export):
    tensors, meta = read_delta(uce_export / DELTA_FILE)
    base, exported = tiny_spec.build(), Pretrained(str(uce_export)).build()
    base_state, exported_state = base.state_dict(), exported.state_dict()
    changed = {k for k in exported_state if not torch.equal(exported_state[k], base_state[k])}
    assert changed and set(tensors) == changed
    assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in tensors)
    assert meta["base_hashes"] == base.hashes()
    rebuilt = WithDelta(str(uce_export)).build()  # the folder works too; the base comes from the delta
    assert rebuilt.hashes() == exported.hashes()
    assert (uce_export / DELTA_FILE).stat().st_size < 0.2 * sum(p.numel() * 4 for p in base.unet.parameters())


@pytest.mark.smoke
def test_a_delta_refuses_another_base_and_bad_files(uce_export, tmp_path):
    with pytest.raises(IGMUError, match="made from another base model.*unet hashes differ"):
        WithDelta(str(uce_export / DELTA_FILE), base=TinySD(seed=3, image_size=16)).build()
    with pytest.raises(IGMUError, match="does not exist"):
        WithDelta(str(tmp_path / "nope.safetensors")).build()
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(IGMUError, match="is not a safetensors file"):
        WithDelta(str(tmp_path / "junk.safetensors")).build()
    save_file({"unet.x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(IGMUError, match="not an igmu-lightning delta"):
        WithDelta(str(tmp_path / "plain.safetensors")).build()


def test_delta_bytes_do_not_depend_on_the_header_key_order(tmp_path):
    """safetensors writes metadata keys in a per-process hash order; save_delta sorts them, so two
    identical runs write identical files. A header with its keys in reverse order canonicalises to
    the same bytes, and the file still reads."""
    import json

    from safetensors.torch import load_file, save

    from igmu_lightning.backbone.delta import canonical_header

    tensors = {"unet.b": torch.arange(6.0).view(2, 3), "unet.a": torch.ones(4)}
    data = save(tensors, metadata={"format": "x", "base": "y", "base_hashes": "{}"})
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    reversed_header = json.dumps(dict(reversed(list(header.items()))), separators=(",", ":")).encode()
    reversed_header = json.dumps(
        {k: (dict(reversed(list(v.items()))) if k == "__metadata__" else v) for k, v in json.loads(reversed_header).items()},
        separators=(",", ":"),
    ).encode()
    shuffled = data[:8] + reversed_header.ljust(size, b" ") + data[8 + size :]
    assert shuffled != data or len(header["__metadata__"]) == 1
    assert canonical_header(shuffled) == canonical_header(data)
    (tmp_path / "d.safetensors").write_bytes(canonical_header(shuffled))
    loaded = load_file(tmp_path / "d.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
