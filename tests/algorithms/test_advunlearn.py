"""AdvUnlearn against hand computations on TinySD: one training step after warm-up (the attack's
two Adam steps on the soft prompt, pgd and fast_at, with the official never-zeroed gradient; the
defence's Adam step on the text encoder's layers) recomputed with plain torch, the frozen set."""

import copy

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch.func import functional_call

from igmu_lightning.algorithms import AdvUnlearn
from igmu_lightning.attacks.soft_prompt import random_vocab_init
from igmu_lightning.data import PromptData
from igmu_lightning.errors import IGMUError


def fit(module, steps: int = 1, prompt: str = "a cat") -> None:
    Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    ).fit(module, PromptData([prompt], steps_per_epoch=steps))


def adam(p, g, m, v, step, lr, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam's update written out (no weight decay, no amsgrad)."""
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    return p - lr * (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps), m, v


def test_trains_the_encoder_layers_only_and_exports(tiny_spec, tmp_path):
    module = AdvUnlearn(tiny_spec, retain_prompts=["a {red,blue} dog"], retain_batch=2, warmup_iter=1, attack_step=1, ddim_steps=4,
                        lr=1e-3, export_dir=str(tmp_path / "out"))  # fmt: skip
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    fit(module, steps=2)
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert any(".final_layer_norm." in n for n in changed) and any(".encoder.layers." in n for n in changed)
    assert all(
        n.startswith("text_encoder.") and "embedding" not in n for n in changed
    )  # no UNet, no token/position table
    assert module.iteration == 2 and module.delta.shape == (1, 1, 32)  # the second iteration was attacked
    assert (tmp_path / "out" / "model_index.json").is_file()


def test_xattn_trains_the_cross_attention_only_and_samples_with_it(tiny_spec, tmp_path):
    """The official UNet option (util.py:433-436): every attn2 tensor trains, the text encoder and
    the rest of the UNet do not; x_t comes from the trained UNet (the official ``model``)."""
    module = AdvUnlearn(tiny_spec, retain_prompts=["a {red,blue} dog"], retain_batch=2, warmup_iter=1, attack_step=1, ddim_steps=4,
                        lr=1e-3, train_method="xattn", export_dir=str(tmp_path / "out"))  # fmt: skip
    assert module.sample_with == "trained"
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    fit(module, steps=2)
    changed = {n for n, p in module.backbone.named_parameters() if not torch.equal(p, before[n])}
    attn2 = {n for n in before if n.startswith("unet.") and ".attn2." in n}
    assert changed and changed <= attn2 and any(n.endswith("to_k.weight") for n in changed)
    assert module.delta is not None and (tmp_path / "out" / "model_index.json").is_file()
    with pytest.raises(IGMUError, match="unknown AdvUnlearn train_method 'full'"):
        AdvUnlearn(tiny_spec, retain_prompts=["a dog"], train_method="full")


@pytest.mark.parametrize("method", ["pgd", "fast_at"])
def test_one_step_after_warmup_equals_the_hand_computation(tiny_spec, method):
    torch.manual_seed(0)
    module = AdvUnlearn(tiny_spec, retain_prompts=["a red dog"], retain_batch=1, retain_loss_w=0.3, warmup_iter=0, attack_step=2,
                        attack_lr=0.05, attack_method=method, attack_init="latest", ddim_steps=4, lr=1e-2)  # fmt: skip
    bb = module.backbone
    te0, unet0 = copy.deepcopy(bb.text_encoder), copy.deepcopy(bb.unet)
    delta0 = torch.randn(1, 1, 32) * 0.02
    module.delta = delta0.clone()
    draws = [
        (torch.randn(1, 4, 8, 8), torch.tensor([t])) for t in (700, 300, 500, 100)
    ]  # attack 1, attack 2, forget, retain
    queue = list(draws)
    module.sample_xt = lambda c, null, k, batch: queue.pop(0)
    fit(module, steps=1, prompt="a cat")
    assert not queue

    # --- by hand: the prompt with delta as the embedding of an unused token j after the start token
    ids = bb.tokenize(["a cat"])
    j = 1000  # an ordinary token, absent from the prompt
    assert j not in ids.tolist()[0]
    ids_adv = torch.cat([ids[:, :1], torch.tensor([[j]]), ids[:, 1:-1]], dim=1)
    params0 = {n: p.detach() for n, p in te0.named_parameters()}
    TABLE = next(n for n in params0 if n.endswith("token_embedding.weight"))
    table0 = params0[TABLE]

    def encode(params, delta, token_ids):
        table = table0.index_put((torch.tensor([j]),), delta.reshape(1, -1))
        return functional_call(te0, {**params, TABLE: table}, (token_ids,))[0]

    def eps(x, t, cond):
        return unet0(x, t, encoder_hidden_states=cond).sample

    with torch.no_grad():
        c, null, c_r = te0(ids)[0], te0(bb.tokenize([""]))[0], te0(bb.tokenize(["a red dog"]))[0]
    delta, m, v, acc = delta0.clone(), torch.zeros_like(delta0), torch.zeros_like(delta0), torch.zeros_like(delta0)
    for step, (x, t) in enumerate(draws[:2], start=1):
        d = delta.clone().requires_grad_(True)
        loss = F.mse_loss(eps(x, t, encode(params0, d, ids_adv)), eps(x, t, c).detach())
        (g,) = torch.autograd.grad(loss, [d])
        acc = acc + g  # never zeroed
        if method == "fast_at":
            acc = acc.sign()
        delta, m, v = adam(delta, acc, m, v, step, 0.05)
    assert torch.allclose(module.delta, delta, atol=1e-6), (module.delta - delta).abs().max()

    (x, t), (x_r, t_r) = draws[2], draws[3]
    trained = {
        n: p.detach().clone().requires_grad_(True)
        for n, p in params0.items()
        if n.removeprefix("text_model.").startswith(("encoder.", "final_layer_norm."))
    }
    with torch.no_grad():
        e0, ec, er = eps(x, t, null), eps(x, t, c), eps(x_r, t_r, c_r)
    forget = F.mse_loss(eps(x, t, encode({**params0, **trained}, delta, ids_adv)), e0 - 1.0 * (ec - e0))
    retain = F.mse_loss(
        eps(x_r, t_r, functional_call(te0, {**params0, **trained}, (bb.tokenize(["a red dog"]),))[0]), er
    )
    grads = torch.autograd.grad(forget + 0.3 * retain, list(trained.values()))
    live = dict(bb.text_encoder.named_parameters())
    for (name, p), g in zip(trained.items(), grads):
        expected, _, _ = adam(p.detach(), g, 0, 0, 1, 1e-2)  # ~ p - lr sign(g): compared where |g| >> Adam's eps
        clear = g.abs() > 1e-6  # (k_proj's bias has a zero gradient in exact arithmetic: float noise there)
        assert clear.any() or "k_proj.bias" in name, name
        assert torch.allclose(live[name][clear], expected[clear], atol=1e-5), name
        assert (live[name] - p).abs().max() <= 1e-2 + 1e-6, name
    for name, p in te0.named_parameters():
        if name not in trained:  # token and position embeddings
            assert torch.equal(live[name], p), name
    assert all(torch.equal(p, q) for p, q in zip(bb.unet.parameters(), unet0.parameters()))


def test_random_init_is_a_vocabulary_row_and_retain_prompts_are_drawn_without_replacement(tiny_spec):
    module = AdvUnlearn(tiny_spec, retain_prompts=["a {red,green,blue,yellow} {dog,cat}"], retain_batch=4)
    table = module.backbone.text_encoder.get_input_embeddings().weight
    delta = random_vocab_init(module.backbone, 2, 3)
    assert delta.shape == (2, 3, 32) and all((table == row).all(-1).any() for row in delta.reshape(-1, 32))
    first, second = module.draw_retain(), module.draw_retain()
    assert len(first) == len(second) == 4 and set(first) | set(second) == set(module.retain)  # without replacement
    assert len(module.draw_retain()) == 4 and len(module._unseen) == 4  # none left: all eight again


def test_bad_advunlearn_arguments(tiny_spec, tmp_path):
    with pytest.raises(IGMUError, match="retain prompts"):
        AdvUnlearn(tiny_spec)
    with pytest.raises(IGMUError, match="attack_method"):
        AdvUnlearn(tiny_spec, retain_prompts=["a dog"], attack_method="free_at")
    with pytest.raises(IGMUError, match="retain_train"):
        AdvUnlearn(tiny_spec, retain_prompts=["a dog"], retain_train="both")
    with pytest.raises(IGMUError, match="does not exist"):
        AdvUnlearn(tiny_spec, retain_file=str(tmp_path / "coco_object_retain.csv")).setup("fit")
    (tmp_path / "retain.csv").write_text("case_number,prompt\n1,a dog\n2,a bus\n")
    assert AdvUnlearn(tiny_spec, retain_prompts=["a cat"], retain_file=str(tmp_path / "retain.csv")).retain == [
        "a cat",
        "a dog",
        "a bus",
    ]


def test_prompt_length_in_words_drops_the_tokens_past_the_word_count(tiny_spec):
    from igmu_lightning.attacks.soft_prompt import prefixed_ids

    model = AdvUnlearn(tiny_spec, retain_prompts=["a dog"]).backbone
    ids = model.tokenize(["nudity", "a red dog"])  # "nudity" is two CLIP tokens ("nu", "dity"), one word
    sot, nu, dity, eos = ids[0, :4].tolist()
    words, tokens = (
        prefixed_ids(model, ["nudity", "a red dog"], 1, "words"),
        prefixed_ids(model, ["nudity", "a red dog"], 1),
    )
    assert dity != eos and words[0, :4].tolist() == [sot, 0, nu, eos]  # the official split: "dity" is gone
    assert tokens[0, :5].tolist() == [sot, 0, nu, dity, eos] and words.shape == tokens.shape == ids.shape
    assert torch.equal(words[1], tokens[1])  # one token a word: the two layouts agree


def test_soft_prompt_attack_for_the_evaluation_is_seeded_and_returns_embeddings(tiny_spec):
    from igmu_lightning.attacks import AttackContext, SoftPromptAttack

    model = tiny_spec.build()
    attack = SoftPromptAttack(k=2, steps=2, lr=0.05, ddim_steps=4)
    context = AttackContext(model=model, prompts=["a cat", "a red dog"], seeds=[0, 1], original=model, seed=3)
    first, second = attack.run(context), attack.run(context)
    assert first.embeddings.shape == (2, 77, 32) and torch.equal(first.embeddings, second.embeddings)
    assert first.prompts == second.prompts and first.prompts[1].endswith(" a red dog")
    with torch.no_grad():  # the conditioning is the prompt behind the soft prompt, not the prompt alone
        assert not torch.allclose(first.embeddings, model.encode_prompts(["a cat", "a red dog"]))
    with pytest.raises(IGMUError, match="before unlearning"):
        attack.run(AttackContext(model=model, prompts=["a cat"], seeds=[0]))
    with pytest.raises(IGMUError, match="soft-prompt attack"):
        SoftPromptAttack(method="free_at")


def test_iter_mode_takes_a_retain_step_after_each_defence_step(tiny_spec):
    module = AdvUnlearn(
        tiny_spec, retain_prompts=["a red dog"], retain_batch=1, retain_train="iter", warmup_iter=5, ddim_steps=4
    )
    calls = []
    retain_loss = module.retain_loss
    module.retain_loss = lambda retain, k: calls.append(retain) or retain_loss(retain, k)
    fit(module, steps=4)  # 4 optimizer steps: 2 iterations of (defence, retain)
    assert module.iteration == 2 and calls == [["a red dog"], ["a red dog"]] and module.delta is None  # still warm-up
