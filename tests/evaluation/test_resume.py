"""An evaluation that stops keeps what it finished: a rerun with the same config, seed and models
scores only the rest, and its results equal those of a run that never stopped."""

import json

import pytest
import torch

from igmu_lightning.backbone import TinySD
from igmu_lightning.evaluation.resume import FinishedMethods
from igmu_lightning.evaluation.world_eval import WorldEvaluation
from igmu_lightning.sampling import SamplerSettings
from tests.conftest import ROOT

CONFIG = {"evaluation": {"class_path": "WorldEvaluation", "init_args": {"target": "object", "methods": {"a": {}, "b": {}}}}}


def models():
    torch.manual_seed(0)
    original = TinySD(seed=0, image_size=32).build().eval()
    a = TinySD(seed=1, image_size=32).build().eval()
    b = TinySD(seed=2, image_size=32).build().eval()
    return original, a, b


def evaluation(folder=None, config=CONFIG):
    ev = WorldEvaluation("object", detectors=str(ROOT / "checkpoints/world/detectors"), prompts_per_class=2,
                         sampler=SamplerSettings(steps=2), cache_dir=None)  # fmt: skip
    if folder is not None:
        ev.finished_methods = FinishedMethods(folder, config, seed=0)
    return ev


def scored(ev, monkeypatch) -> list[int]:
    """Spy on the models whose images ``ev`` makes (by identity)."""
    seen: list[int] = []
    make = ev._images

    def spy(model, fingerprint, batch):
        seen.append(id(model))
        return make(model, fingerprint, batch)

    monkeypatch.setattr(ev, "_images", spy)
    return seen


def stopped_after_a(original, a):
    yield "a", a
    raise KeyboardInterrupt  # the run is stopped while b would be built


@pytest.fixture(scope="module")
def uninterrupted():
    original, a, b = models()
    out = evaluation().compare(original, [("a", a), ("b", b)], seed=0)
    return out


def test_a_stopped_run_resumes_with_the_methods_it_had_not_finished(tmp_path, monkeypatch, uninterrupted):
    original, a, b = models()
    folder = tmp_path / "r.partial"
    with pytest.raises(KeyboardInterrupt):
        evaluation(folder).compare(original, stopped_after_a(original, a), seed=0)
    assert len(list(folder.glob("*.json"))) == 2  # original and a, each kept as it ended

    again = evaluation(folder)
    seen = scored(again, monkeypatch)
    out = again.compare(original, [("a", a), ("b", b)], seed=0)
    # a is not generated again (only the original's forget images, which the probes judge against, and b's)
    assert id(a) not in seen and id(b) in seen
    assert set(seen) == {id(original), id(b)}
    assert list(out.methods) == ["original", "a", "b"]
    assert json.dumps(out.methods, sort_keys=True) == json.dumps(uninterrupted.methods, sort_keys=True)
    assert out.model_hashes == uninterrupted.model_hashes
    assert out.sample_prompts == uninterrupted.sample_prompts
    for name in ("original", "a", "b"):
        assert torch.equal(out.samples[name], uninterrupted.samples[name]), name


def test_a_kept_method_is_scored_again_when_its_model_or_the_config_changed(tmp_path, monkeypatch):
    original, a, b = models()
    folder = tmp_path / "r.partial"
    evaluation(folder).compare(original, [("a", a)], seed=0)
    with torch.no_grad():  # retrained under the same name: other weights
        next(a.unet.parameters()).add_(0.01)
    ev = evaluation(folder)
    seen = scored(ev, monkeypatch)
    ev.compare(original, [("a", a)], seed=0)
    assert id(a) in seen
    # another config (the evaluation's settings, not its list of methods): nothing kept is used
    other = json.loads(json.dumps(CONFIG))
    other["evaluation"]["init_args"]["prompts_per_set"] = 32
    ev = evaluation(folder, other)
    seen = scored(ev, monkeypatch)
    ev.compare(original, [("a", a)], seed=0)
    assert id(a) in seen
    # adding a method to the list keeps the others (the record is now the last run's, under `other`)
    more = json.loads(json.dumps(other))
    more["evaluation"]["init_args"]["methods"]["c"] = {}
    ev = evaluation(folder, more)
    seen = scored(ev, monkeypatch)
    ev.compare(original, [("a", a)], seed=0)
    assert id(a) not in seen


def test_a_damaged_record_is_scored_again(tmp_path, monkeypatch):
    original, a, _ = models()
    folder = tmp_path / "r.partial"
    evaluation(folder).compare(original, [("a", a)], seed=0)
    for record in folder.glob("a-*.safetensors"):
        record.write_bytes(b"half written")
    ev = evaluation(folder)
    seen = scored(ev, monkeypatch)
    ev.compare(original, [("a", a)], seed=0)
    assert id(a) in seen
