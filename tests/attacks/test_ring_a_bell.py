"""Ring-A-Bell on TinySD's text encoder: the concept vector, the genetic search, determinism."""

import pytest
import torch
import torch.nn.functional as F

from igmu_lightning.attacks import AttackContext
from igmu_lightning.attacks.ring_a_bell import RingABell, concept_pairs, concept_vector, remove_concept
from igmu_lightning.errors import IGMUError

COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
TEMPLATE = "a {} triangle on a plain background"


@pytest.fixture(scope="module")
def model(tiny_spec):
    return tiny_spec.build()


def test_pairs_from_the_context_drop_the_concept_words():
    assert remove_concept("A Red triangle, on a plain background", "triangle") == "A Red , on a plain background"
    assert remove_concept("a stop sign here", "stop sign") == "a here"
    assert concept_pairs(["a red triangle", "a square"], "triangle") == [("a red triangle", "a red")]
    with pytest.raises(IGMUError, match="explicit pairs"):
        concept_pairs(["a square"], "triangle")


def test_the_concept_vector_points_from_without_to_with(model):
    pairs = [(TEMPLATE.format(c), remove_concept(TEMPLATE.format(c), "triangle")) for c in COLORS[:5]]
    vector = concept_vector(model, pairs)
    with torch.no_grad():
        by_hand = torch.stack([model.encode_prompts([w])[0] - model.encode_prompts([wo])[0] for w, wo in pairs]).mean(0)
        held_out = (
            model.encode_prompts([TEMPLATE.format(COLORS[5])])[0]
            - model.encode_prompts(["a orange on a plain background"])[0]
        )
    assert torch.allclose(vector, by_hand, atol=1e-5)
    cosine = F.cosine_similarity(vector.flatten(), held_out.flatten(), dim=0)
    randoms = [F.cosine_similarity(torch.randn(vector.numel(), generator=torch.Generator().manual_seed(s)), held_out.flatten(), dim=0)
               for s in range(20)]  # fmt: skip
    assert cosine > 0.5 and cosine > max(randoms)


def test_the_search_improves_monotonically_and_reads_back(model):
    attack = RingABell("quick", population=24, generations=15)
    context = AttackContext(
        model=model, prompts=[TEMPLATE.format("red"), "a blue triangle"], seeds=[1, 2], concept="triangle"
    )
    result = attack.run(context)
    for prompt, details in zip(result.prompts, result.details):
        history = details["history"]
        assert len(history) == 15 and all(b <= a for a, b in zip(history, history[1:]))
        assert details["distance_final"] < details["distance_initial"] == history[0]
        assert (
            model.tokenizer(prompt, add_special_tokens=False).input_ids == details["tokens"]
            and len(details["tokens"]) == 8
        )
        # the reported distance is the prompt's own: ||E(prompt) - target||^2 with the target rebuilt
        _, targets = attack.targets(model, context)
        with torch.no_grad():
            ids = attack.sequences(model.tokenizer, torch.tensor([details["tokens"]]))
            distance = (model.text_encoder(ids)[0].float() - targets[result.prompts.index(prompt)]).pow(2).sum()
        assert float(distance) == pytest.approx(details["distance_final"], rel=1e-4)


def test_deterministic_under_a_seed_and_batch_independent_with_fixed_pairs(model):
    pairs = [(TEMPLATE.format(c), remove_concept(TEMPLATE.format(c), "triangle")) for c in COLORS]
    attack = RingABell("quick", population=16, generations=6, pairs=pairs, chunk=10)  # chunks split prompts
    prompts, seeds = ["a red triangle", "a green triangle on a plain background"], [3, 4]
    first = attack.run(AttackContext(model=model, prompts=prompts, seeds=seeds, seed=7))
    again = attack.search(AttackContext(model=model, prompts=prompts, seeds=seeds, seed=7))  # a second search, not the memo
    other = attack.run(AttackContext(model=model, prompts=prompts, seeds=seeds, seed=8))
    assert first.prompts == again.prompts and first.details == again.details
    assert other.prompts != first.prompts
    for i in range(2):
        alone = attack.run(AttackContext(model=model, prompts=prompts[i : i + 1], seeds=seeds[i : i + 1], seed=7))
        assert alone.prompts[0] == first.prompts[i]
        assert alone.details[0]["distance_final"] == pytest.approx(first.details[i]["distance_final"], rel=1e-5)


def test_presets_and_refusals():
    official = RingABell()
    assert (official.population, official.generations, official.mutation_rate, official.crossover_rate,
            official.tokens, official.strength) == (200, 3000, 0.25, 0.5, 16, 3.0)  # fmt: skip
    assert RingABell("quick", strength=5).strength == 5 and RingABell(pairs=[["a b", "a"]]).pairs == [("a b", "a")]
    for bad in ({"preset": "nope"}, {"population": 1}, {"tokens": 76}):
        with pytest.raises(IGMUError):
            RingABell(**bad)


def test_a_second_model_with_the_same_text_encoder_reuses_the_search_and_another_does_not(model):
    """Ring-A-Bell reads only the text encoder: a model with the same text-encoder weights gets the
    first search's prompts (marked reused), one whose encoder changed is searched again."""
    import copy

    attack = RingABell("quick", population=8, generations=3)
    context = dict(prompts=["a red triangle", "a blue triangle"], seeds=[1, 2], concept="triangle", seed=0)
    first = attack.run(AttackContext(model=model, **context))
    same_encoder = copy.deepcopy(model)
    with torch.no_grad():
        next(same_encoder.unet.parameters()).add_(1.0)  # another UNet: Ring-A-Bell never reads it
    reused = attack.run(AttackContext(model=same_encoder, **context))
    assert reused.prompts == first.prompts and all(d["reused"] for d in reused.details)
    other_encoder = copy.deepcopy(model)
    with torch.no_grad():
        other_encoder.text_encoder.get_input_embeddings().weight.mul_(1.5)
    searched = attack.run(AttackContext(model=other_encoder, **context))
    assert not any(d.get("reused") for d in searched.details)
    assert [d["distance_final"] for d in searched.details] != [d["distance_final"] for d in first.details]
    assert "_found" not in attack.to_config()["init_args"]
