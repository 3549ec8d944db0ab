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
