"""Prompts per second of UnlearnDiffAtk run on a batch of prompts at once against the same attack
run one prompt at a time, on the same model, prompts, seeds and settings (the world's forget
prompts of the object target; the model attacks itself, so the targets are its own images). The
judge never succeeds by default, so neither side stops early: the worst case, and equal work.

    python benchmarks/attack.py                                   # the world's model, 64 prompts, quick preset
    python benchmarks/attack.py --single 4                        # the one-at-a-time loop on 4 of them
    python benchmarks/attack.py --model tiny --prompts 4 --single 2 --iterations 1 --timesteps 1
    python benchmarks/attack.py --single 0 --judge world --model outputs/unlearned/esd_object --original checkpoints/world/base
                                                                  # the quick preset on an unlearned model, the world's judge
"""

from __future__ import annotations

import argparse
import time

import torch

from igmu_lightning.attacks import AttackContext, UnlearnDiffAtk
from igmu_lightning.backbone import Pretrained, TinySD
from igmu_lightning.evaluation.world_sets import flatten_sets
from igmu_lightning.sampling import SamplerSettings
from igmu_lightning.world.concepts import FAMILIES, TARGETS
from igmu_lightning.world.prompts import per_class_for_set_size

WORLD_MODEL, WORLD_DETECTOR = "checkpoints/world/base", "checkpoints/world/detectors/shape"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=WORLD_MODEL, help="a diffusers folder, or 'tiny'")
    parser.add_argument("--original", default=None, help="the model before unlearning (default: --model itself)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts attacked as one batch")
    parser.add_argument("--single", type=int, default=4, help="of them, how many the one-at-a-time loop attacks (0: skip it)")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--timesteps", type=int, default=None)
    parser.add_argument("--steps", type=int, default=25, help="sampler steps of the read-outs and targets")
    parser.add_argument("--judge", choices=("never", "world"), default="never", help="never: no early stop; world: the shape detector")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = (TinySD(seed=0, image_size=16) if args.model == "tiny" else Pretrained(args.model)).build().eval()
    original = Pretrained(args.original).build().eval() if args.original else model
    per_class = per_class_for_set_size("object", args.prompts)
    batch = flatten_sets("object", per_class, seed=0)["forget"]
    prompts, seeds = batch.prompts[: args.prompts], batch.seeds[: args.prompts]
    if args.judge == "world":
        from igmu_lightning.detectors import load_detector

        detector, word = load_detector(WORLD_DETECTOR), FAMILIES["shape"].index(TARGETS["object"].word)

        def judge(images):
            return detector.predict(images) == word
    else:

        def judge(images):
            return torch.zeros(len(images), dtype=torch.bool)

    attack = UnlearnDiffAtk(args.preset, iterations=args.iterations, timesteps=args.timesteps)
    settings = SamplerSettings(steps=args.steps)
    print(f"UnlearnDiffAtk {args.preset}: k {attack.k}, {attack.iterations} iterations x {attack.timesteps} timesteps; "
          f"model {args.model}, sampler {args.steps} steps, judge {args.judge}, {torch.get_num_threads()} threads")  # fmt: skip

    def run(p, s):
        return attack.run(AttackContext(model, p, s, original=original, sampler=settings, judge=judge))

    start = time.perf_counter()
    result = run(prompts, seeds)
    batched = time.perf_counter() - start
    wins = sum(d["success"] for d in result.details)
    print(f"batched: {len(prompts)} prompts in {batched:.1f} s = {len(prompts) / batched:.3f} prompts/s "
          f"({batched / len(prompts):.2f} s/prompt; {wins} succeeded)")  # fmt: skip
    if args.single:
        start = time.perf_counter()
        for i in range(args.single):
            run(prompts[i : i + 1], seeds[i : i + 1])
        single = time.perf_counter() - start
        print(f"one at a time: {args.single} prompts in {single:.1f} s = {args.single / single:.3f} prompts/s")
        print(f"speed-up (batched / one at a time): {(len(prompts) / batched) / (args.single / single):.2f}x")


if __name__ == "__main__":
    main()
