"""Why a world MACE model erases what it erases (docs/algorithms.md, MACE on the object target):
(1) its masked attention loss on the 8 training scenes of the config (t = 250, 300, 400, 600,
prompt "a red triangle on a plain background") with the official marking (pooler all) and with the
concept token alone, and the attention mass on those positions (mean over layers, heads, pixels); (2) how far the refinement alone and the exported model move the keys and
values (every attn2 to_k / to_v) of retain and target prompts, words and padding apart, relative to
the base model's. No image is generated or judged.

    python scripts/mace_diagnostics.py configs/unlearn/world/mace_object.yaml outputs/unlearned/mace_object
"""

from __future__ import annotations

import sys

import torch
import yaml

from igmu_lightning.algorithms.fmn import attention_probes
from igmu_lightning.algorithms.mace import MACE, masked_attention_norm
from igmu_lightning.backbone import Pretrained
from igmu_lightning.data import WorldConceptImages

BASE = "checkpoints/world/base"
PROMPT = "a red triangle on a plain background"


def module(config: dict, path: str) -> MACE:
    mace = MACE(Pretrained(path), **config)
    mace.backbone.detach_adapters()
    return mace


@torch.no_grad()
def attention_losses(config: dict, path: str, images) -> dict[str, float]:
    mace = module(config, path)
    bb, generator = mace.backbone, torch.Generator().manual_seed(0)
    totals = dict.fromkeys(["loss all", "loss none", "mass all", "mass none"], 0.0)
    steps = [(image, mask, t) for image, mask in images for t in (250, 300, 400, 600)]
    for image, mask, t in steps:
        latents = bb.encode_images(image[None], generator)
        noise = torch.randn(latents.shape, generator=generator)
        x_t = bb.noise_scheduler.add_noise(latents, noise, torch.tensor([t]))
        with attention_probes(bb.unet) as probs:
            bb.unet(x_t, torch.tensor([t]), encoder_hidden_states=bb.encode_prompts([PROMPT]))
        for pooler in ("all", "none"):
            mace.pooler = pooler
            marked = mace.concept_mask([PROMPT], 0)
            totals[f"loss {pooler}"] += masked_attention_norm(probs, marked, mask[None]).item() / len(steps)
            mass = sum(p[..., marked[0]].sum(-1).mean().item() for p in probs) / len(probs)  # layers, heads, pixels
            totals[f"mass {pooler}"] += mass / len(steps)
    return totals


@torch.no_grad()
def shifts(config: dict, path: str) -> dict[str, float]:
    """Relative change ||x (W - W0)^T|| / ||x W0^T|| over every projection, for words and padding."""
    mace = module(config, BASE)
    base = {n: lin.weight.double().clone() for n, lin in mace.projections()}
    mace.refine()
    refined = {n: lin.weight.double().clone() for n, lin in mace.projections()}
    params = dict(Pretrained(path).build().unet.named_parameters())
    exported = {n: params[f"{n}.weight"].double() for n in base}
    sets = {
        "retain": [
            f"a {c} {s} on a {b} background"
            for c in ("red", "blue")
            for s in ("circle", "square", "cross", "diamond")
            for b in ("plain", "dotted")
        ],  # fmt: skip
        "target": [f"a {c} triangle on a {b} background" for c in ("red", "blue") for b in ("plain", "dotted")],
    }
    out = {}
    for name, texts in sets.items():
        e = mace.embed(texts)
        parts = {"words": e[:, :9].flatten(0, 1), "padding": e[:, 9:].flatten(0, 1)}  # 9: BOS, 7 words, EOS
        for stage, weights in (("refined", refined), ("exported", exported)):
            for part, x in parts.items():
                num = sum(((x @ (weights[n] - base[n]).T).norm() ** 2).item() for n in base)
                den = sum(((x @ base[n].T).norm() ** 2).item() for n in base)
                out[f"{name} {stage} {part}"] = (num / den) ** 0.5
    return out


def main(config_path: str, exported: str) -> None:
    config = yaml.safe_load(open(config_path))["model"]["init_args"]
    config.pop("backbone"), config.pop("export_dir", None)
    data = WorldConceptImages(config["concepts"][:1], n_images=8, steps_per_concept=1, image_size=32)
    data.setup()
    for path in (BASE, exported):
        print(
            path, "attention loss", {k: round(v, 3) for k, v in attention_losses(config, path, data.images[0]).items()}
        )
    for key, value in shifts(config, exported).items():
        print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
