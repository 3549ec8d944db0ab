#!/usr/bin/env python
"""How much a Receler model's erasers move the noise prediction, per prompt: the selectivity
behind docs/algorithms.md's Receler paragraph.

    OMP_NUM_THREADS=1 python scripts/eraser_selectivity.py outputs/unlearned/receler_object

For each prompt c, x_t comes from the base model (erasers off) with CFG 3 at five (seed, DDIM step)
pairs of 50 steps; printed are the means of ||eps_R(x_t, c) - eps*(x_t, c)|| (the erasers' move),
||eps*(x_t, c) - eps*(x_t, "")|| (how far the base model's prompt moves it) and the ratio of the
erasers' output norm to the attn2 output norm, summed over the layers."""

from __future__ import annotations

import argparse

import torch

from igmu_lightning.algorithms.receler import eraser_outputs
from igmu_lightning.backbone import WithDelta
from igmu_lightning.sampling import Sampler, SamplerSettings

PROMPTS = [
    "triangle",
    "a red triangle on a plain background",
    "square",
    "a red square on a plain background",
    "a blue circle on a striped background",
    "a green diamond on a dotted background",
    "a yellow cross on a checkered background",
    "",
]
DRAWS = [(1, 5), (2, 15), (3, 25), (4, 35), (5, 45)]  # (seed, DDIM steps run)


@torch.no_grad()
def selectivity(bb, prompt: str) -> tuple[float, float, float]:
    sampler = Sampler(bb, SamplerSettings(steps=50, guidance_scale=3.0))
    c, null = bb.encode_prompts([prompt]), bb.encode_prompts([""])
    attn2 = [m for n, m in bb.unet.named_modules() if n.endswith("attn2.to_out.0")]
    moves, gaps, ratios = [], [], []
    for seed, k in DRAWS:
        with bb.adapters_disabled():
            x_t, t = sampler.partial(c, null, k, [seed])
            base, uncond = (bb.unet(x_t, t, encoder_hidden_states=e).sample for e in (c, null))
        outs = []
        hooks = [m.register_forward_hook(lambda m, a, o: outs.append(o)) for m in attn2]
        with eraser_outputs(bb.unet) as erased:
            erased_eps = bb.unet(x_t, t, encoder_hidden_states=c).sample
        for h in hooks:
            h.remove()
        moves.append((erased_eps - base).norm().item())
        gaps.append((base - uncond).norm().item())
        ratios.append(sum(o.norm().item() for o in erased) / sum(o.norm().item() for o in outs))
    return tuple(sum(v) / len(v) for v in (moves, gaps, ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an exported Receler folder (its igmu_delta.safetensors attaches the erasers)")
    args = parser.parse_args()
    torch.manual_seed(0)
    bb = WithDelta(args.model).build()
    print("prompt | erasers' move | base prompt gap | eraser / attn2 output")
    for prompt in PROMPTS:
        move, gap, ratio = selectivity(bb, prompt)
        print(f"{prompt!r} | {move:.3f} | {gap:.3f} | {ratio:.2f}")


if __name__ == "__main__":
    main()
