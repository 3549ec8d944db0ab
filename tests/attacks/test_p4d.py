"""P4D on TinySD: the "unlearned" model is a perturbed copy of the original, so a prompt whose noise
prediction matches the original's exists to be searched for."""

import copy

import pytest
import torch

from igmu_lightning.attacks import AttackContext
from igmu_lightning.attacks.p4d import P4D
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import SamplerSettings

PROMPTS = ["a red triangle", "a blue square on a plain background"]
SEEDS = [3, 4]


@pytest.fixture(scope="module")
def models(tiny_spec):
    original = tiny_spec.build()
    model = copy.deepcopy(original)  # a deep copy also checks decoding with a copied tokenizer
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return original, model


def context(models, prompts=PROMPTS, seeds=SEEDS):
    original, model = models
    return AttackContext(model=model, original=original, prompts=list(prompts), seeds=list(seeds),
                         sampler=SamplerSettings(steps=2), seed=5)  # fmt: skip


@pytest.mark.parametrize("insertion", ["replace", "prefix", "every_k"])
def test_the_matching_loss_falls_and_the_prompts_read_back(models, insertion):
    attack = P4D("quick", insertion=insertion, steps=30, eval_every=10)
    result = attack.run(context(models))
    tokenizer = models[1].tokenizer
    assert len(result.prompts) == 2 and result.seconds > 0
    for prompt, details, original in zip(result.prompts, result.details, PROMPTS):
        assert details["loss_final"] < details["loss_initial"]
        # the text reads back as exactly the optimised sequence
        assert tokenizer(prompt, add_special_tokens=False).input_ids == details["token_ids"]
        assert details["retokenizes"] and set(details["tokens"]) <= set(details["token_ids"])
        n = len(details["tokens"])
        if insertion == "replace":
            assert n == 8 and prompt.split() != original.split()
        elif insertion == "prefix":
            assert n == 8 and prompt.endswith(original)
        else:  # one token first, then one after every 3 prompt tokens (len // 3 + 1 in all)
            assert n == len(original.split()) // 3 + 1 and prompt.split()[1] == original.split()[0]


def test_a_batch_equals_its_prompts_one_at_a_time(models):
    attack = P4D("quick", insertion="every_k", steps=12, eval_every=4)  # every_k: prompts of different widths
    batch = attack.run(context(models))
    for i in range(2):
        alone = attack.run(context(models, PROMPTS[i : i + 1], SEEDS[i : i + 1]))
        assert alone.prompts[0] == batch.prompts[i]
        assert alone.details[0]["tokens"] == batch.details[i]["tokens"]
        assert alone.details[0]["loss_final"] == pytest.approx(batch.details[i]["loss_final"], rel=1e-4, abs=1e-6)


def test_presets_and_refusals():
    official = P4D()
    assert (official.insertion, official.tokens, official.steps, official.lr, official.weight_decay) == (
        "replace",
        16,
        3000,
        0.1,
        0.1,
    )
    mu = P4D("mu_attack")
    assert (mu.insertion, mu.tokens, mu.optimizer, mu.lr, mu.schedule, mu.steps) == (
        "prefix",
        3,
        "adam",
        0.01,
        "sequential",
        2000,
    )
    assert P4D("quick", steps=7).steps == 7 and P4D(eval_every=None).eval_every is None
    assert P4D().to_config()["init_args"]["tokens"] == 16
    with pytest.raises(IGMUError, match="preset"):
        P4D("nope")
    with pytest.raises(IGMUError, match="insertion"):
        P4D(insertion="middle")
    with pytest.raises(IGMUError, match="before unlearning"):
        P4D("quick").run(AttackContext(model=None, prompts=["a"], seeds=[0]))
