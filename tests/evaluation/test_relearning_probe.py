"""The relearning probe: target rates after k steps judged like the forget set, and steps_to_half
read off the curve, against hand computations."""

import copy

import torch

from igmu_lightning.attacks.relearning import Relearning
from igmu_lightning.evaluation.relearning_probe import RelearningProbe, steps_to_half, world_relearning
from igmu_lightning.evaluation.scoring import Scorecard
from igmu_lightning.evaluation.tasks import TASKS, task_rule
from igmu_lightning.sampling import Sampler, SamplerSettings
from tests.attacks.test_relearning import hand_relearn


def test_steps_to_half_from_a_fake_curve():
    curve = {0: 0.05, 10: 0.2, 50: 0.5, 100: 0.9}
    assert steps_to_half(curve, original_rate=0.8) == 50  # half of 0.8 is 0.4: first reached at 50
    assert steps_to_half(curve, original_rate=0.4) == 10  # 0.2 >= 0.2
    assert steps_to_half(curve, original_rate=0.1) == 0
    assert steps_to_half({100: 0.9, 0: 0.0, 10: 0.3}, original_rate=0.6) == 10  # in step order, not dict order
    assert steps_to_half(curve, original_rate=1.9) is None


def test_score_reports_every_checkpoint_and_why_half_is_missing():
    for rule in TASKS.values():
        assert rule.allows("robustness.relearning.target_rate_at_100") and rule.allows("robustness.relearning.steps_to_half")
    probe = RelearningProbe(Relearning(world_target="object"))
    hits = {0: torch.tensor([0.0, 0, 0, 1]), 10: torch.tensor([0.0, 1, 1, 1]), 50: torch.ones(4)}
    card = Scorecard(task_rule("object"), "object", seed=0)
    probe.report(card, hits, original_rate=1.0)
    got = card.result()["aspects"]["robustness"]
    assert got["relearning.target_rate_at_0"]["value"] == 0.25 and got["relearning.target_rate_at_0"]["n"] == 4
    assert got["relearning.target_rate_at_10"]["value"] == 0.75 and got["relearning.target_rate_at_10"]["ci_method"] == "wilson"
    assert got["relearning.steps_to_half"] == {"value": 10.0, "ci95": [10.0, 10.0], "n": 1, "ci_method": "exact"}
    card = Scorecard(task_rule("object"), "object", seed=0)
    probe.report(card, {0: torch.zeros(4), 10: torch.zeros(4)}, original_rate=0.5)
    assert card.result()["skipped"]["robustness.relearning.steps_to_half"].startswith("not reached within 10 steps")
    card = Scorecard(task_rule("object"), "object", seed=0)
    probe.report(card, {0: torch.zeros(4)}, original_rate=0.0)
    assert "original model's target rate is 0" in card.result()["skipped"]["robustness.relearning.steps_to_half"]


def test_curve_matches_a_hand_run_of_the_same_steps(tiny_spec):
    model = tiny_spec.build().eval()
    hashes = model.hashes()
    settings = SamplerSettings(steps=2)
    prompts, seeds = ["a red triangle", "a blue triangle on a striped background"] * 2, [11, 12, 13, 14]

    def sample(m):
        return Sampler(m, settings, batch_size=4).generate(prompts, seeds).images

    threshold = float(sample(model).mean((1, 2, 3)).median())  # a judge that splits the tiny model's images

    def hits_of(images):
        return images.mean((1, 2, 3)) > threshold

    relearning = Relearning(world_target="object", checkpoints=(0, 2, 3), batch_size=2, n_images=4, lr=5e-2)
    curve = RelearningProbe(relearning).curve(model, sample, hits_of, seed=3)
    assert model.hashes() == hashes
    for k, state in hand_relearn(model, (0, 2, 3), seed=3, batch_size=2, n_images=4, lr=5e-2).items():
        hand = copy.deepcopy(model)
        hand.unet.load_state_dict(state)
        assert torch.equal(curve[k], hits_of(sample(hand)).float()), k
    assert len({tuple(c.tolist()) for c in curve.values()}) > 1  # the steps changed what the judge sees
    card = Scorecard(task_rule("object"), "object", seed=0)
    RelearningProbe(relearning).report(card, curve, original_rate=1.0, ids=torch.tensor([0, 1, 0, 1]))
    got = card.result()["aspects"]["robustness"]
    assert [got[f"relearning.target_rate_at_{k}"]["value"] for k in (0, 2, 3)] == [float(curve[k].mean()) for k in (0, 2, 3)]
    assert got["relearning.target_rate_at_3"]["n"] == 4


def test_world_relearning_runs_on_the_shipped_model():
    from igmu_lightning.backbone import Pretrained
    from tests.conftest import ROOT

    base = Pretrained(str(ROOT / "checkpoints/world/base"))
    probe = RelearningProbe(Relearning(world_target="object", preset="quick", checkpoints=(0, 2), n_images=8, batch_size=4))
    out = world_relearning(base, base, "object", probe, detectors=str(ROOT / "checkpoints/world/detectors"),
                           prompts_per_set=8, sampler=SamplerSettings(steps=5), batch_size=8)  # fmt: skip
    rates = out["aspects"]["robustness"]
    assert rates["relearning.target_rate_at_0"]["value"] == out["original_target_rate"]  # 0 steps: the model itself
    assert "relearning.steps_to_half" in rates and rates["relearning.steps_to_half"]["value"] == 0


def test_relearning_probe_runs_inside_an_evaluation_against_a_hand_relearned_copy(tmp_path):
    """RelearningProbe listed among an evaluation's probes: the unlearned model's rate at k = 0 is its
    plain forget rate, the rate at k = 2 equals a copy relearned by hand for 2 steps and judged the
    same way, and the original model is not relearned (its keys skipped, with why)."""
    from igmu_lightning.backbone import TinySD
    from igmu_lightning.evaluation.igmu_folder import read_prompt_file
    from igmu_lightning.evaluation.prompt_set import PromptSetTargetRate, prompt_batch
    from tests.evaluation.test_attack_probe import SETTINGS, DarkJudge

    forget = tmp_path / "forget.txt"
    forget.write_text("a red triangle\na big triangle\na small triangle\na blue triangle\n")
    relearning = Relearning(world_target="object", checkpoints=(0, 2), batch_size=2, n_images=4, lr=5e-2)
    other = TinySD(seed=1, image_size=16)
    model = other.build().eval()
    batch = prompt_batch(read_prompt_file(str(forget), "object_triangle"), 1, 0)
    plain = Sampler(model, SETTINGS, batch_size=4).generate(batch.prompts, batch.seeds).images
    threshold = float(plain.mean(dim=(1, 2, 3)).median())  # the darker half of the plain images are hits
    evaluation = PromptSetTargetRate(str(forget), DarkJudge(threshold), "nude", task="object_triangle", methods={"other": other},
                                     original=TinySD(seed=0, image_size=16), sampler=SETTINGS, samples_per_prompt=1,
                                     batch_size=4, cache_dir=None, probes=[RelearningProbe(relearning, batch_size=4)])  # fmt: skip
    output = evaluation.compare(TinySD(seed=0, image_size=16).build().eval(), [("other", model)], seed=0)
    got = output.methods["other"]["aspects"]["robustness"]
    assert got["relearning.target_rate_at_0"]["value"] == output.methods["other"]["aspects"]["forgetting"]["target_rate"]["value"]
    hand = other.build().eval()
    hand.unet.load_state_dict(hand_relearn(other.build().eval(), (0, 2), seed=0, batch_size=2, n_images=4, lr=5e-2)[2])
    hand_images = Sampler(hand, SETTINGS, batch_size=4).generate(batch.prompts, batch.seeds).images
    assert got["relearning.target_rate_at_2"]["value"] == float((hand_images.mean(dim=(1, 2, 3)) < threshold).float().mean())
    assert got["relearning.target_rate_at_2"]["n"] == 4
    skipped = output.methods["original"]["skipped"]
    assert "not relearned" in skipped["robustness.relearning.steps_to_half"]
