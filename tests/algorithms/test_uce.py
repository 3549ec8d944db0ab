import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import UCE
from igmu_lightning.data import PromptData
from igmu_lightning.errors import IGMUError


def test_edit_equals_the_closed_form_solved_independently(tiny_spec):
    module = UCE(tiny_spec, erase=["a cat"], preserve=["a dog"], lam=0.5)
    c, g, p = module.token_pairs()
    assert len(c) == len(g) == 75 and len(p) == 2 * 77  # "cat" (index 2) to the end; 77 per preserve text
    name = next(n for n in module.originals if n.endswith("attn2.to_k.weight"))
    w0 = module.originals[name].double()
    s_p = max(0.1, 1 / 2)  # paper-era default over {"a dog", ""}
    lhs = 0.5 * w0 + sum(torch.outer(w0 @ gi, ci) for ci, gi in zip(c, g)) + s_p * sum(torch.outer(w0 @ pj, pj) for pj in p)
    rhs = 0.5 * torch.eye(w0.shape[1], dtype=torch.float64) + c.T @ c + s_p * p.T @ p
    expected = lhs @ torch.linalg.inv(rhs)
    Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(module, PromptData(["x"], steps_per_epoch=5))
    edited = dict(module.backbone.unet.named_parameters())[name]
    assert torch.allclose(edited.double(), expected, atol=1e-5)


def test_only_cross_attention_keys_and_values_change(tiny_spec):
    module = UCE(tiny_spec, erase=["a cat"], tokens="concept")
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    assert module.apply_edit() == len(module.originals) > 0
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.split(".")[-2] in ("to_k", "to_v") and ".attn2." in n for n in changed)
    c, g, _ = module.token_pairs()
    assert len(c) == len(g) == 1  # the 2024 code's single last-word token


def test_bad_uce_arguments(tiny_spec):
    with pytest.raises(IGMUError, match="at least one erase text"):
        UCE(tiny_spec, erase=[])
    with pytest.raises(IGMUError, match="2 erase texts but 3 guide texts"):
        UCE(tiny_spec, erase=["a", "b"], guide=["x", "y", "z"])


def test_preserve_alternatives_expand(tiny_spec):
    module = UCE(tiny_spec, erase=["a cat"], preserve=["a {dog,bird}", "a dog"])
    assert module.preserve == ["a dog", "a bird", ""]  # expanded, deduplicated, "" always kept
    assert module.s_p == max(0.1, 1 / 3)
