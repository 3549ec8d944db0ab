"""RECE against an independent hand computation on the tiny backbone: the UCE start, c' and each
epoch's edit recomputed with plain torch.linalg from the unedited weights, row by row."""

import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import RECE, UCE
from igmu_lightning.data import StepData
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.judges import JudgeSpec
from igmu_lightning.sampling import SamplerSettings


def fit(module) -> None:
    Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        module, StepData(steps_per_epoch=5)
    )


def rows(module, text: str) -> torch.Tensor:
    ids = module.backbone.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return module.backbone.text_encoder(ids)[0][0].double()


def hand_edit(w, c, g, p, lam, s_e, s_p):
    """(lam W + s_e sum (W g_i) c_i^T + s_p sum (W p_j) p_j^T)(lam I + s_e sum c_i c_i^T + s_p sum p_j p_j^T)^-1."""
    lhs = (
        lam * w
        + s_e * sum(torch.outer(w @ gi, ci) for ci, gi in zip(c, g))
        + s_p * sum(torch.outer(w @ pj, pj) for pj in p)
    )
    rhs = (
        lam * torch.eye(w.shape[1], dtype=torch.float64)
        + s_e * sum(torch.outer(ci, ci) for ci in c)
        + s_p * sum(torch.outer(pj, pj) for pj in p)
    )
    return lhs @ torch.linalg.inv(rhs)


def hand_rece(module, epochs: int, lam_r: float) -> dict[str, torch.Tensor]:
    """UCE start (paper-era rows: 'a cat' from its last word, index 2, against "" from 0; preserve
    {""} with all 77 rows, s_p = max(0.1, 1/1) = 1, lam 0.5), then ``epochs`` RECE epochs with
    lam 0.1, s_e 1, s_p 0.1, guide "" and preserve "" on all 77 rows. Stored as float32 in between,
    as the module stores its weights."""
    original = {n: t.double() for n, t in module.originals.items()}
    cat, empty = rows(module, "a cat"), rows(module, "")
    w = {n: hand_edit(w0, cat[2:77], empty[0:75], empty, 0.5, 1.0, 1.0).float().double() for n, w0 in original.items()}
    for _ in range(epochs):
        gram = lam_r * torch.eye(cat.shape[1], dtype=torch.float64) + sum(w[n].T @ w[n] for n in w)
        cross = sum(w[n].T @ original[n] for n in w)
        adv = torch.stack([torch.linalg.inv(gram) @ cross @ ci for ci in cat])  # c'_i for each of the 77 rows
        w = {n: hand_edit(w[n], adv, empty, empty, 0.1, 1.0, 0.1).float().double() for n in w}
    return w


@pytest.mark.parametrize(("epochs", "lam_r"), [(1, 1e-3), (2, 0.1)])
def test_epochs_equal_the_closed_form_recomputed_by_hand(tiny_spec, epochs, lam_r):
    module = RECE(tiny_spec, erase=["a cat"], lam=0.5, regular_scale=lam_r, epochs=epochs)
    expected = hand_rece(module, epochs, lam_r)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    fit(module)
    params = dict(module.backbone.unet.named_parameters())
    assert len(expected) == len(module.originals) > 0
    for name, want in expected.items():
        assert torch.allclose(params[name].double(), want, atol=1e-5, rtol=1e-4), name
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.split(".")[-2] in ("to_k", "to_v") and ".attn2." in n for n in changed)
    assert module.kept_epoch == epochs - 1


def test_the_epoch_moves_the_weights_past_the_uce_start(tiny_spec):
    uce = UCE(tiny_spec, erase=["a cat"])
    uce.apply_edit()
    rece = RECE(tiny_spec, erase=["a cat"], epochs=1)
    fit(rece)
    name = next(iter(rece.originals))
    start = dict(uce.backbone.unet.named_parameters())[name]
    assert not torch.allclose(dict(rece.backbone.unet.named_parameters())[name], start, atol=1e-6)


class ScriptedJudge(JudgeSpec):
    """A judge whose k-th call finds the target in the share ``rates[k]`` of its images."""

    class_names = ["absent", "present"]

    def __init__(self, rates: list[float]) -> None:
        self.rates, self.calls = list(rates), 0

    def build(self):
        return self

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        rate, self.calls = self.rates[self.calls], self.calls + 1
        found = round(rate * len(images))
        return torch.tensor([1] * found + [0] * (len(images) - found))


def best_run(tiny_spec, rates: list[float], epochs: int) -> RECE:
    module = RECE(tiny_spec, erase=["a cat"], epochs=epochs, select="best", judge=ScriptedJudge(rates), judge_target="present",
                  validation_prompts=["a {red,blue} {cat,dog}"], validation_sampler=SamplerSettings(steps=2))  # fmt: skip
    fit(module)
    return module


def kv(module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in module.backbone.unet.named_parameters() if n in module.originals}


def test_select_best_keeps_the_lowest_judged_rate(tiny_spec):
    """Rates on 4 validation images: UCE start 0.5, epoch 0 0.25, epoch 1 0.75 -> epoch 0's weights."""
    module = best_run(tiny_spec, [0.5, 0.25, 0.75], epochs=2)
    assert module.kept_epoch == 0 and module.judge_spec.calls == 3
    one = RECE(tiny_spec, erase=["a cat"], epochs=1)
    fit(one)
    assert all(torch.equal(a, b) for a, b in zip(kv(module).values(), kv(one).values()))


def test_select_best_keeps_the_uce_start_when_no_epoch_beats_it(tiny_spec):
    module = best_run(tiny_spec, [0.25, 0.25, 0.5], epochs=2)  # a tie is no improvement, as in train.py
    assert module.kept_epoch == -1
    uce = UCE(tiny_spec, erase=["a cat"])
    uce.apply_edit()
    assert all(torch.equal(a, b) for a, b in zip(kv(module).values(), kv(uce).values()))


def test_bad_rece_arguments(tiny_spec):
    with pytest.raises(IGMUError, match="RECE epochs must be >= 1, got 0"):
        RECE(tiny_spec, erase=["a cat"], epochs=0)
    with pytest.raises(IGMUError, match="regular_scale must be > 0"):
        RECE(tiny_spec, erase=["a cat"], regular_scale=0.0)
    with pytest.raises(IGMUError, match="unknown RECE select 'first'"):
        RECE(tiny_spec, erase=["a cat"], select="first")
    with pytest.raises(IGMUError, match="select: best needs judge, judge_target and validation_prompts"):
        RECE(tiny_spec, erase=["a cat"], select="best", judge=ScriptedJudge([]))
    with pytest.raises(IGMUError, match="at least one erase text"):
        RECE(tiny_spec, erase=[])


@pytest.mark.parametrize(
    ("target", "where", "message"),
    [
        (
            "nude",
            {"validation_prompts": ["a cat"]},
            r"judge_target 'nude' is not a class of the judge \(absent, present\)",
        ),
        ("present", {"validation_file": "missing.txt"}, "text file 'missing.txt' does not exist"),
    ],
)
def test_a_bad_judge_or_validation_file_stops_the_run_before_the_edit(tiny_spec, target, where, message):
    module = RECE(tiny_spec, erase=["a cat"], select="best", judge=ScriptedJudge([]), judge_target=target, **where)
    with pytest.raises(IGMUError, match=message):
        module.setup("fit")
