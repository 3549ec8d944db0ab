import pytest
import torch
from diffusers.models.attention_processor import Attention
from lightning.pytorch import Trainer

from igmu_lightning.algorithms import FMN
from igmu_lightning.algorithms.fmn import attention_probes
from igmu_lightning.data import WorldForgetRetain
from igmu_lightning.errors import IGMUError

# Token positions by hand: 0 is <|startoftext|>, then one token per word here.
PROMPTS = ["a triangle on a plain background", "a red big triangle"]
POSITIONS = [[2], [4]]


def cross_attention_layers(unet):
    return [m for n, m in unet.named_modules() if n.endswith("attn2") and isinstance(m, Attention)]


def test_concept_positions_are_the_concept_tokens_only(tiny_spec):
    module = FMN(tiny_spec, concept="triangle", pooler="none")
    mask = module.concept_positions(PROMPTS + ["triangle, triangle"])
    assert mask.shape == (3, 77)
    assert [row.nonzero().flatten().tolist() for row in mask] == POSITIONS + [[1, 3]]  # no BOS, EOS or padding
    two_words = FMN(tiny_spec, concept=["van gogh", "monet"], pooler="none")
    assert two_words.concept_positions(["a painting by Van Gogh"])[0].nonzero().flatten().tolist() == [4, 5]
    assert two_words.concept_positions(["monet or van gogh"])[0].nonzero().flatten().tolist() == [1, 3, 4]
    with pytest.raises(IGMUError, match="prompt 'a red square' does not contain the FMN concept"):
        module.concept_positions(["a red triangle", "a red square"])
    with pytest.raises(IGMUError, match="does not contain"):  # another word, not the concept's token
        module.concept_positions(["some triangles"])


@pytest.mark.parametrize("pooler", ["none", "all"])
def test_loss_is_the_norm_of_attention_probabilities_at_the_concept_positions(tiny_spec, pooler):
    module = FMN(tiny_spec, concept="triangle", pooler=pooler)
    unet = module.backbone.unet
    outputs, hooks = {}, []
    for i, layer in enumerate(cross_attention_layers(unet)):
        for part in ("to_q", "to_k"):
            hooks.append(
                getattr(layer, part).register_forward_hook(
                    lambda m, a, out, key=(i, part): outputs.__setitem__(key, out)
                )
            )
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 700])
    loss = module.attention_loss(x, t, PROMPTS)
    for h in hooks:
        h.remove()

    total = torch.tensor(0.0)
    layers = cross_attention_layers(unet)
    for i, layer in enumerate(layers):
        q, k = outputs[(i, "to_q")], outputs[(i, "to_k")]  # (B, pixels, C), (B, 77, C)
        d = q.shape[-1] // layer.heads
        q, k = q.view(2, -1, layer.heads, d), k.view(2, 77, layer.heads, d)
        probs = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / d**0.5, dim=-1)  # (B, heads, pixels, 77)
        for b, positions in enumerate(POSITIONS):
            # with pooler all: the EOS after the prompt's last word (7 and 5 tokens) and all padding
            marked = positions + (list(range(len(PROMPTS[b].split()) + 1, 77)) if pooler == "all" else [])
            total = total + probs[b, :, :, marked].pow(2).sum()
    assert len(layers) == 4 and len(outputs) == 8
    assert torch.allclose(loss, total.sqrt(), rtol=1e-5)  # the norm, not its square


# "a photo of nudity" in SD v1.x's tokenizer: <|startoftext|> a photo of nu dity <|endoftext|>, then
# 70 padding tokens, which SD v1.x's tokenizer fills with <|endoftext|> (SD 2.x's pads with "!").
@pytest.mark.parametrize(
    "pooler, expected",
    [("none", [4, 5]), ("eos", [4, 5, 6]), ("all", [4, 5, *range(6, 77)])],
)
def test_pooler_marks_the_official_endoftext_positions_of_an_sd1_prompt(tiny_spec, pooler, expected):
    module = FMN(tiny_spec, concept="nudity", pooler=pooler)
    assert module.backbone.tokenizer.pad_token == "<|endoftext|>"  # the SD v1.x tokenizer
    mask = module.concept_positions(["a photo of nudity"])
    assert mask[0].nonzero().flatten().tolist() == expected


def test_unknown_pooler_is_refused(tiny_spec):
    with pytest.raises(IGMUError, match="unknown FMN pooler 'pad'"):
        FMN(tiny_spec, concept="nudity", pooler="pad")


def test_probes_change_nothing_and_the_processors_come_back(tiny_spec):
    module = FMN(tiny_spec, concept="triangle")
    unet = module.backbone.unet
    before = {n: p for n, p in unet.attn_processors.items()}
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), module.backbone.encode_prompts(["a triangle"])
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=c).sample
        with attention_probes(unet) as probs:
            probed = unet(x, t, encoder_hidden_states=c).sample
            inside = unet.attn_processors
    assert torch.allclose(plain, probed, atol=1e-5) and len(probs) == 4
    assert all((type(p).__name__ == "AttentionProbe") == (".attn2." in n) for n, p in inside.items())
    assert all(p is before[n] for n, p in unet.attn_processors.items())
    with pytest.raises(RuntimeError, match="boom"), attention_probes(unet):
        raise RuntimeError("boom")
    assert all(p is before[n] for n, p in unet.attn_processors.items())


# With pooler all the loss covers ~70 of 77 tokens, most of the attention mass: it falls slower.
@pytest.mark.parametrize("pooler, drop", [("none", 0.8), ("all", 0.9)])
def test_a_few_steps_lower_the_loss_and_xattn_trains_only_cross_attention(tiny_spec, pooler, drop):
    module = FMN(tiny_spec, concept="triangle", pooler=pooler, trainable="xattn", lr=1e-2)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([100, 600])
    prompts = ["a red triangle on a plain background", "a striped background with a hollow blue triangle"]
    with torch.no_grad():
        start = module.attention_loss(x, t, prompts)
    data = WorldForgetRetain("object", n_forget=4, n_retain=0, image_size=16, batch_size=2, steps_per_epoch=5)
    Trainer(
        max_steps=5, gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False
    ).fit(module, data)
    with torch.no_grad():
        end = module.attention_loss(x, t, prompts)
    assert end < drop * start
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".attn2." in n for n in changed)


def test_bad_fmn_arguments(tiny_spec):
    with pytest.raises(IGMUError, match="FMN trains 'unet' or 'xattn'"):
        FMN(tiny_spec, concept="triangle", trainable="noxattn")
    with pytest.raises(IGMUError, match="non-empty concept"):
        FMN(tiny_spec, concept=" ")


def test_tensors_the_loss_never_reaches_are_frozen_and_training_is_unchanged(tiny_spec, monkeypatch):
    def trained(freeze: bool) -> tuple[dict, list]:
        torch.manual_seed(0)
        module = FMN(tiny_spec, concept="triangle", trainable="xattn", lr=1e-2)
        if not freeze:
            monkeypatch.setattr(module, "freeze_unreached", lambda: [])
        data = WorldForgetRetain("object", n_forget=4, n_retain=0, image_size=16, batch_size=2, steps_per_epoch=3)
        Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(module, data)
        return {n: p.detach().clone() for n, p in module.backbone.named_parameters()}, module.trainable_names

    frozen_weights, kept = trained(freeze=True)
    plain_weights, everything = trained(freeze=False)
    dropped = sorted(set(everything) - set(kept))
    # only values and outputs of attn2 layers after which no attn2 reads them; queries and keys stay
    assert dropped and all(".to_v." in n or ".to_out." in n for n in dropped)
    assert all(f"backbone.{n}" in kept for n in plain_weights if ".attn2.to_q." in n or ".attn2.to_k." in n)
    assert all(torch.equal(frozen_weights[n], plain_weights[n]) for n in plain_weights)
