#!/usr/bin/env python
"""Compare our SAFREE with the official pipeline on the same weights (docs/parity.md, "SAFREE").

    git clone https://github.com/jaehong31/SAFREE /tmp/SAFREE   # b8b2c3f
    OMP_NUM_THREADS=1 python scripts/safree_official_check.py /tmp/SAFREE [--model checkpoints/world/base]

Loads ``models/modified_stable_diffusion_pipeline.py`` and ``free_lunch_utils.py`` from that
checkout (we ship none of their code), runs them one prompt per call as the official script does
(DDIM 12 steps, CFG 7.5, the keywords as negative prompt), and prints the largest pixel difference
to our ``Sampler`` with ``SafreeGuidance``: svf on and off; lra null (the official registration
without a mode) and ``"low"``. The official re-attention tests SD v1.4's widths (1280 / 640); for a
smaller model they are replaced in the loaded text by its widest / second-widest block widths."""

from __future__ import annotations

import argparse
import importlib.util
import types
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from igmu_lightning.algorithms.safree import SafreeGuidance
from igmu_lightning.backbone import Pretrained, TinySD
from igmu_lightning.sampling import Sampler, SamplerSettings


def load(path: Path, name: str, replace: dict[str, str] | None = None) -> types.ModuleType:
    text = path.read_text()
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module


class _Log:
    def log(self, message: str) -> None:
        pass


def official(pipe_cls, backbone, prompt: str, seed: int, keywords: list[str], steps: int, svf: bool, lra: bool):
    pipe = pipe_cls(backbone.vae, backbone.text_encoder, backbone.tokenizer, backbone.unet,
                    DDIMScheduler.from_config(backbone.scheduler.config), None, None, requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, negative_prompt=", ".join(keywords),
               negative_prompt_space=keywords, height=backbone.image_size, width=backbone.image_size,
               generator=torch.Generator().manual_seed(seed), output_type="np",
               safree_dict={"re_attn_t": [-1, 1001], "alpha": 0.01, "logger": _Log(), "safree": True, "svf": svf,
                            "lra": lra, "up_t": 10, "category": "nudity"})  # fmt: skip
    return torch.from_numpy(out).permute(0, 3, 1, 2).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("official", type=Path, help="a checkout of jaehong31/SAFREE")
    parser.add_argument("--model", default=None, help="a diffusers folder (default: the tiny test model)")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    build = (lambda: Pretrained(args.model).build()) if args.model else (lambda: TinySD(seed=0, image_size=16).build())
    keywords = ["triangle"] if args.model else ["a cat", "nudity"]
    prompts, seeds = ["a red triangle on a plain background", "a red cat on a mat", "a church"], [3, 4, 5]
    pipe_cls = load(
        args.official / "models/modified_stable_diffusion_pipeline.py", "safree_msdp"
    ).ModifiedStableDiffusionPipeline
    backbone = build()
    widths = sorted(set(backbone.unet.config.block_out_channels), reverse=True) + [0]
    wide, narrow = widths[0], widths[1]
    freeu = load(args.official / "free_lunch_utils.py", "safree_freeu", {
        "shape[1] == 1280": f"shape[1] == {wide}", "[:,:640]": f"[:,:{wide // 2}]",
        "shape[1] == 640": f"shape[1] == {narrow}", "[:,:320]": f"[:,:{narrow // 2}]",
    })  # fmt: skip
    settings = SamplerSettings(steps=args.steps, guidance_scale=7.5)
    for svf, lra, b in ((True, None, 1.0), (False, None, 1.0), (True, "low", 1.0), (True, "low", 1.3)):
        theirs_model = build()
        if lra is not None:  # the official registration (generate_safree.py:221-228) with a mode
            holder = types.SimpleNamespace(unet=theirs_model.unet)
            freeu.register_free_upblock2d(holder, b1=b, b2=b, s1=0.9, s2=0.2, safree=lra)
            freeu.register_free_crossattn_upblock2d(holder, b1=b, b2=b, s1=0.9, s2=0.2, safree=lra)
        theirs = torch.cat(
            [official(pipe_cls, theirs_model, p, s, keywords, args.steps, svf, True) for p, s in zip(prompts, seeds)]
        )
        backbone.guidance = SafreeGuidance(keywords, svf=svf, lra=lra, b1=b, b2=b)
        ours = Sampler(backbone, settings, batch_size=1).generate(prompts, seeds).images
        backbone.guidance = None
        plain = Sampler(backbone, settings, batch_size=1).generate(prompts, seeds).images
        print(f"svf {svf}, lra {lra}, b {b}: max |ours - official| = {(ours - theirs).abs().max():.2e} "
              f"(SAFREE's own effect against plain CFG: {(plain - theirs).abs().max():.2e})")  # fmt: skip


if __name__ == "__main__":
    main()
