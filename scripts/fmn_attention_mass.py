"""Where a world model's cross-attention looks, for the object target's forget prompts: the share
of attention probability on the concept word's own token versus on <|endoftext|> and padding,
averaged over every attn2 layer, head and pixel at t = 100, 500, 900 (docs/algorithms.md, FMN).

    python scripts/fmn_attention_mass.py checkpoints/world/base outputs/unlearned/fmn_object
"""

from __future__ import annotations

import sys

import torch

from igmu_lightning.algorithms.fmn import attention_probes
from igmu_lightning.backbone import Pretrained
from igmu_lightning.world.prompts import prompt_sets


def attention_mass(path: str, prompts: list[str], word: str = "triangle") -> tuple[float, float]:
    bb = Pretrained(path).build().eval()
    ids = bb.tokenize(prompts)
    concept_id = bb.tokenizer(word, add_special_tokens=False).input_ids
    concept, tail = torch.zeros_like(ids, dtype=torch.bool), torch.zeros_like(ids, dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        row = ids[b].tolist()
        start = next(i for i in range(len(row)) if row[i : i + len(concept_id)] == concept_id)
        concept[b, start : start + len(concept_id)] = True
        tail[b, len(bb.tokenizer(prompt).input_ids) - 1 :] = True  # EOS and the padding after it
    context, generator = bb.encode_prompts(prompts), torch.Generator().manual_seed(0)
    on_concept, on_tail = [], []
    with torch.no_grad():
        for t in (100, 500, 900):
            size = bb.unet.config.sample_size
            x = torch.randn(len(prompts), bb.unet.config.in_channels, size, size, generator=generator)
            with attention_probes(bb.unet) as probs:
                bb.unet(x, torch.full((len(prompts),), t), encoder_hidden_states=context)
            for p in probs:  # (B, heads, pixels, tokens) -> mean over heads and pixels
                per_token = p.mean((1, 2))
                on_concept.append((per_token * concept).sum(1).mean())
                on_tail.append((per_token * tail).sum(1).mean())
    return float(torch.stack(on_concept).mean()), float(torch.stack(on_tail).mean())


if __name__ == "__main__":
    forget = [item.prompt for item in prompt_sets("object", 16, seed=0)["forget"]["triangle"]]
    for model in sys.argv[1:]:
        concept, tail = attention_mass(model, forget)
        print(f"{model}: attention on 'triangle' {concept:.3f}, on <|endoftext|> + padding {tail:.3f}")
