import json

import pytest

from igmu_lightning.utils.hashing import tensors_hash
from igmu_lightning.utils.io import atomic_write_json


def test_atomic_json_is_stable_and_never_half_written(tmp_path):
    path = tmp_path / "out" / "results.json"
    atomic_write_json(path, {"b": 1, "a": [1.5, 2]})
    first = path.read_bytes()
    atomic_write_json(path, {"a": [1.5, 2], "b": 1})
    assert path.read_bytes() == first  # key order does not matter: same object, same bytes
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # fails while serialising
    assert json.loads(path.read_bytes()) == {"a": [1.5, 2], "b": 1}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left


def test_tensor_hash_sees_values_names_and_dtypes():
    import torch

    base = {"w": torch.ones(2, 2)}
    assert tensors_hash(base) == tensors_hash({"w": torch.ones(2, 2)})
    assert tensors_hash(base) != tensors_hash({"w": torch.ones(2, 2) * 1.0001})
    assert tensors_hash(base) != tensors_hash({"v": torch.ones(2, 2)})
    assert tensors_hash(base) != tensors_hash({"w": torch.ones(2, 2, dtype=torch.float64)})


def test_tensor_hash_handles_scalars_and_bfloat16():
    import torch

    state = {"steps": torch.tensor(3), "w": torch.ones(2, dtype=torch.bfloat16)}
    assert tensors_hash(state) != tensors_hash({"steps": torch.tensor(4), "w": torch.ones(2, dtype=torch.bfloat16)})


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_models_follow_the_umask(tmp_path, tiny_spec, umask):
    """An exported model (folder, weights, delta, run record) gets open()'s and mkdir's permissions,
    not mkstemp's 0600 or mkdtemp's 0700: others in the group can read what a run exported."""
    import os
    import stat

    from igmu_lightning.backbone.delta import save_delta

    previous = os.umask(umask)
    try:
        backbone = tiny_spec.build()
        out = backbone.save_pretrained(tmp_path / "exported")
        save_delta(out / "igmu_delta.safetensors", {"unet.conv_in.weight": backbone.unet.conv_in.weight}, backbone.hashes(), tiny_spec)
        atomic_write_json(out / "igmu_run.json", {"wall_time_s": 1.0})
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes[out.relative_to(tmp_path)] == 0o777 & ~umask
    for path, mode in modes.items():
        assert mode == (0o777 if (tmp_path / path).is_dir() else 0o666) & ~umask, f"{path}: {oct(mode)}"
