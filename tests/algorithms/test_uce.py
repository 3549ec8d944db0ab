import pytest
import torch
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import UCE
from igmu_lightning.data import StepData
from igmu_lightning.errors import IGMUError


@pytest.mark.smoke
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
    Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(module, StepData(steps_per_epoch=5))
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


def encoder_rows(module, text: str) -> torch.Tensor:
    ids = module.backbone.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return module.backbone.text_encoder(ids)[0][0].double()


def test_token_rows_match_hand_counted_indices(tiny_spec):
    """'a cat': <|startoftext|> a cat <|endoftext|> ..., its last word at index 2; the guide "" has
    only BOS (index 0) before its EOS. Paper-era train_erase.py (35e91e2:243-260): rows 2..76 of the
    erase text against rows 0..74 of the guide (77 - max(2, 0) each); all 77 rows of each preserve
    text plus "". 2024 uce_sd_erase.py (:26-42): row 2 against row 0, preserve 'a big dog' row 3, no ""."""
    paper = UCE(tiny_spec, erase=["a cat"], guide=[""], preserve=["a big dog"])
    c, g, p = paper.token_pairs()
    cat, empty, dog = encoder_rows(paper, "a cat"), encoder_rows(paper, ""), encoder_rows(paper, "a big dog")
    assert torch.equal(c, cat[2:77]) and torch.equal(g, empty[0:75])
    assert torch.equal(p, torch.cat([dog, empty])) and paper.s_p == 0.5  # max(0.1, 1 / |{"a big dog", ""}|)
    new = UCE(tiny_spec, erase=["a cat"], guide=[""], preserve=["a big dog"], tokens="concept")
    c, g, p = new.token_pairs()
    assert torch.equal(c, cat[2:3]) and torch.equal(g, empty[0:1]) and torch.equal(p, dog[3:4])
    assert new.preserve == ["a big dog"] and new.s_p == 1.0  # no "" added; s_p defaults to 1


def test_preserve_file_reads_the_artists_csv_without_the_erased_artist(tiny_spec, tmp_path):
    """The paper's data/artists1734_prompts.csv layout: ',case_number,prompt,evaluation_seed,artist',
    five prompts per artist; the preserve set is its unique artists minus the erased one."""
    rows = [",case_number,prompt,evaluation_seed,artist"]
    for i, artist in enumerate(["Claude Monet", "Van Gogh", "Frida Kahlo"] * 5):
        rows.append(f"{i},{i},Painting in the style of {artist},{i},{artist}")
    csv = tmp_path / "artists.csv"
    csv.write_text("\n".join(rows) + "\n")
    module = UCE(tiny_spec, erase=["van gogh"], guide=["art"], preserve_file=str(csv))
    assert module.preserve == ["Claude Monet", "Frida Kahlo", ""] and module.s_p == max(0.1, 1 / 3)
    with pytest.raises(IGMUError, match="text file 'missing.csv' does not exist"):
        UCE(tiny_spec, erase=["van gogh"], preserve_file="missing.csv").preserve
