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


def test_the_official_esd_u_sets(tiny_spec):
    """Paper-era train-esd.py (b8aeab6:167-172) leaves out names starting 'out.' and containing 'attn2'
    or 'time_embed' (diffusers: conv_norm_out, conv_out, time_embedding); the 2025 esd_sd.py (:34-37)
    keeps Linear/Conv layers outside attn2 only: no norm, but time_embedding, conv_in and conv_out."""
    model = tiny_spec.build()
    everything_else = set(select_parameters(model, ["noxattn"]))
    compvis = set(select_parameters(model, ["noxattn_compvis"]))
    assert everything_else - compvis == {
        f"unet.{layer}.{p}" for layer in ("time_embedding.linear_1", "time_embedding.linear_2", "conv_norm_out", "conv_out")
        for p in ("weight", "bias")
    }  # fmt: skip
    assert "unet.conv_in.weight" in compvis and "unet.down_blocks.0.resnets.0.norm1.weight" in compvis
    esd_2025 = set(select_parameters(model, ["noxattn_2025"]))
    assert {"unet.conv_in.weight", "unet.conv_out.bias", "unet.time_embedding.linear_1.weight"} <= esd_2025
    assert "unet.down_blocks.0.resnets.0.time_emb_proj.weight" in esd_2025 and esd_2025 < everything_else
    assert not any("norm" in n.split(".")[-2] for n in esd_2025)  # GroupNorm / LayerNorm weights stay frozen


def test_regex_and_union(tiny_spec):
    model = tiny_spec.build()
    both = select_parameters(model, ["xattn_kv", r"^unet\.conv_in\."])
    assert "unet.conv_in.weight" in both and len(both) == len(select_parameters(model, ["xattn_kv"])) + 2


def test_pattern_that_selects_nothing_is_refused(tiny_spec):
    with pytest.raises(IGMUError, match="'xatn' matches no parameter"):
        select_parameters(tiny_spec.build(), ["xatn"])
    with pytest.raises(IGMUError, match="not a valid regular expression"):
        select_parameters(tiny_spec.build(), ["unet.("])
