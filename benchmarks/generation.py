"""Images per second of our batched sampler plus detector scoring against the way the reference
tools generate: a ``StableDiffusionPipeline`` call per prompt, one image per call, each image then
classified alone. Same model, prompts, seeds, scheduler and steps on both sides; neither writes
files. A second ratio: our sampler's time against the bare cost of its UNet calls (the same number
of UNet forwards at the same shapes, without text encoding, scheduler, VAE or noise setup).

    python benchmarks/generation.py                   # the world's model, 64 images
    python benchmarks/generation.py --model tiny      # a tiny SD-shaped model
    python benchmarks/generation.py --model /path/to/sd-v1-4 --device cuda --images 32 --batch 16
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DDIMScheduler

from igmu_lightning.backbone import Pretrained, TinySD
from igmu_lightning.detectors import load_detector
from igmu_lightning.sampling import Sampler, SamplerSettings
from igmu_lightning.world.prompts import prompt_sets

WORLD_DETECTOR = "checkpoints/world/detectors/shape"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def per_image_pipeline(backbone, detector, settings: SamplerSettings, prompts: list[str], seeds: list[int]):
    """The reference tools' loop: one pipeline call and one classifier call per image."""
    pipe = backbone.pipeline(DDIMScheduler.from_config(backbone.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    images, labels = [], []
    for prompt, seed in zip(prompts, seeds):
        out = pipe(
            prompt,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            generator=torch.Generator().manual_seed(seed),
            height=backbone.image_size,
            width=backbone.image_size,
            output_type="pt",
        ).images
        images.append(out.cpu())
        labels.append(detector.predict(out))
    return torch.cat(images), torch.cat(labels)


def batched(sampler: Sampler, detector, prompts: list[str], seeds: list[int]):
    images = sampler.generate(prompts, seeds).images
    return images, torch.cat([detector.predict(x) for x in images.split(sampler.batch_size)])


@torch.inference_mode()
def bare_unet(backbone, settings: SamplerSettings, n_images: int, batch: int) -> None:
    """The UNet calls our sampler makes for ``n_images``: per padded batch, ``steps`` calls on
    2 x batch latents (CFG's two halves), with stand-in latents, timesteps and text embeddings."""
    shape = (backbone.unet.config.in_channels, backbone.image_size // backbone.vae_scale, backbone.image_size // backbone.vae_scale)
    width = backbone.text_encoder.config.hidden_size
    length = backbone.tokenizer.model_max_length
    latents = torch.randn(2 * batch, *shape, device=backbone.device, dtype=backbone.dtype)
    context = torch.randn(2 * batch, length, width, device=backbone.device, dtype=backbone.dtype)
    for _ in range(-(-n_images // batch)):
        for t in torch.linspace(999, 1, settings.steps).long().to(backbone.device):
            backbone.unet(latents, t, encoder_hidden_states=context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/world/base", help="a diffusers folder, or 'tiny'")
    parser.add_argument("--detector", default=WORLD_DETECTOR, help="a detector folder (scores every image)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="our sampler's batch size")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32 / float16 / bfloat16 (GPU)")
    parser.add_argument("--compile", action="store_true", help="our sampler compiles its UNet (the pipeline does not)")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = TinySD(seed=0) if args.model == "tiny" else Pretrained(args.model, dtype=args.dtype)
    backbone = spec.build().to(device).eval()
    detector = load_detector(args.detector, device)
    sets = prompt_sets("object", n_per_class=args.images).values()
    prompts = [item.prompt for classes in sets for items in classes.values() for item in items][: args.images]
    prompts += prompts[-1:] * (args.images - len(prompts))
    seeds = list(range(args.images))
    settings = SamplerSettings(steps=args.steps)
    print(f"model {args.model} ({backbone.image_size}px, {sum(p.numel() for p in backbone.unet.parameters()) / 1e6:.1f} M UNet "
          f"parameters), {args.images} images, {args.steps} DDIM steps, CFG {settings.guidance_scale}, device {device}")  # fmt: skip

    per_image_pipeline(backbone, detector, settings, prompts[:1], seeds[:1])  # warm-up, before any compiling
    ref_run, ref_s = timed(lambda: per_image_pipeline(backbone, detector, settings, prompts, seeds), device)
    sampler = Sampler(backbone, settings, batch_size=args.batch, compile=args.compile)
    _, warm_s = timed(lambda: batched(sampler, detector, prompts[: args.batch], seeds[: args.batch]), device)
    print(f"warm-up batch ({'compiles the UNet' if args.compile else 'eager'}): {warm_s:.1f} s")
    (ours, ours_labels), ours_s = timed(lambda: batched(sampler, detector, prompts, seeds), device)
    ref, ref_labels = ref_run
    _, sampler_s = timed(lambda: sampler.generate(prompts, seeds), device)
    _, unet_s = timed(lambda: bare_unet(backbone, settings, args.images, min(args.batch, args.images)), device)

    print(f"per-image pipeline + detector: {args.images / ref_s:.3f} images/s ({ref_s:.2f} s)")
    print(f"batched sampler + detector:    {args.images / ours_s:.3f} images/s ({ours_s:.2f} s)")
    print(f"same images: max |difference| {float((ours - ref).abs().max()):.2e}, detector labels agree on "
          f"{int((ours_labels.cpu() == ref_labels.cpu()).sum())}/{args.images}")  # fmt: skip
    print(f"speed-up (batched / per-image pipeline): {ref_s / ours_s:.2f}x")
    print(f"sampler alone: {sampler_s:.2f} s, bare UNet calls: {unet_s:.2f} s")
    print(f"sampler / bare UNet ratio: {sampler_s / unet_s:.3f}")


if __name__ == "__main__":
    main()
