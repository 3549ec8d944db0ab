"""Wall time of the full EvalIGMU of one unlearned world model: every aspect of its target, the
original model scored beside it, from an empty image cache (everything generated), and again with
the cache the first run left (what each further method costs when ten are compared).

    python benchmarks/evaluation_cost.py --model outputs/unlearned/esd_object
    python benchmarks/evaluation_cost.py --model sld --target style     # SLD max on the base model
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from igmu_lightning.algorithms import SafeLatentDiffusion
from igmu_lightning.backbone import Pretrained
from igmu_lightning.evaluation.world import WORLD_MODEL
from igmu_lightning.evaluation.world_eval import WorldEvaluation
from igmu_lightning.world.concepts import TARGETS

BUDGET_S = 300.0  # the goal: at most 5 minutes on a 2-core CPU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="outputs/unlearned/esd_object", help="an unlearned diffusers folder, or 'sld'")
    parser.add_argument("--target", default="object", choices=list(TARGETS))
    parser.add_argument("--prompts_per_set", type=int, default=64, help="as configs/eval/world/*.yaml")
    parser.add_argument("--prompts_per_class", type=int, default=None, help="a fixed count per class instead (quick runs)")
    args = parser.parse_args()
    base = Pretrained(WORLD_MODEL)
    if args.model == "sld":
        model = SafeLatentDiffusion(base, preset="max", safety_concept=TARGETS[args.target].word)
    else:
        model = Pretrained(args.model)
    with tempfile.TemporaryDirectory() as cache:
        times = []
        for _ in range(2):  # cold cache, then the cache the first run wrote
            evaluation = WorldEvaluation(
                args.target, {"unlearned": model}, base, prompts_per_set=args.prompts_per_set,
                prompts_per_class=args.prompts_per_class, cache_dir=cache,
            )  # fmt: skip
            start = time.perf_counter()
            output = evaluation.run(seed=0)
            times.append(time.perf_counter() - start)
        images = len(list(Path(cache).rglob("*.png")))
    size = f"{args.prompts_per_class} prompts per class" if args.prompts_per_class else f">= {args.prompts_per_set} prompts per set"
    print(f"target {args.target}, model {args.model}, {size}: "
          f"{images} images generated for the two models, every aspect scored")  # fmt: skip
    for name, method in output.methods.items():
        forgetting = method["aspects"]["forgetting"]["target_rate"]
        retain = method["aspects"]["preservation"]["retain_accuracy"]
        print(f"  {name}: target rate {forgetting['value']:.3f} {forgetting['ci95']} (n {forgetting['n']}, {forgetting['ci_method']}), "
              f"retain accuracy {retain['value']:.3f} {retain['ci95']} (n {retain['n']})")  # fmt: skip
    print(f"full evaluation, empty cache: {times[0]:.1f} s")
    print(f"again, images cached: {times[1]:.1f} s")
    print(f"ratio to the 5-minute budget: {times[0] / BUDGET_S:.3f}")


if __name__ == "__main__":
    main()
