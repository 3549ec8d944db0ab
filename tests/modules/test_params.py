import pytest

from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.params import select_parameters


def test_presets_pick_the_papers_parameter_sets(tiny_spec):
    model = tiny_spec.build()
    xattn = select_parameters(model, ["xattn"])
    assert xattn and all(".attn2." in n and n.startswith("unet.") for n in xattn)
    kv = select_parameters(model, ["xattn_kv"])
    assert kv and set(kv) < set(xattn) and all(n.split(".")[-2] in ("to_k", "to_v") for n in kv)
    attn = select_parameters(model, ["attn"])  # CA's nudity set: q/k/v/out of self- and cross-attention
    assert set(kv) < set(attn) and any(".attn1.to_out." in n for n in attn) and all(".to_" in n for n in attn)
    noxattn = select_parameters(model, ["noxattn"])
    unet = select_parameters(model, ["unet"])
    assert set(noxattn) | set(xattn) == set(unet) and not set(noxattn) & set(xattn)
    text = select_parameters(model, ["text_encoder_layers"])
    assert text and not any("embeddings" in n for n in text)


def test_regex_and_union(tiny_spec):
    model = tiny_spec.build()
    both = select_parameters(model, ["xattn_kv", r"^unet\.conv_in\."])
    assert "unet.conv_in.weight" in both and len(both) == len(select_parameters(model, ["xattn_kv"])) + 2


def test_pattern_that_selects_nothing_is_refused(tiny_spec):
    with pytest.raises(IGMUError, match="'xatn' matches no parameter"):
        select_parameters(tiny_spec.build(), ["xatn"])
    with pytest.raises(IGMUError, match="not a valid regular expression"):
        select_parameters(tiny_spec.build(), ["unet.("])
