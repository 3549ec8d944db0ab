"""Peak tensor memory of ESD-x training: our frozen teacher (the live UNet with the originals of
the trained tensors only) against the same training with a deep-copied frozen UNet as teacher.

Counts tensor bytes, not process RSS: the tensors alive before the steps (weights, teacher copy)
by their storages, plus the peak of the CPU allocator's running total during the steps
(activations, gradients, Adam state) from ``torch.profiler`` memory events. Random weights.

    python benchmarks/teacher_memory.py --size sd14 --steps 2    # SD v1.4's UNet (860 M), ~3.4 GB fp32
    python benchmarks/teacher_memory.py --size tiny              # seconds, for a smoke check
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from igmu_lightning.algorithms import ESD
from igmu_lightning.backbone import TinySD

SIZES = {
    # SD v1.4's UNet: 4 levels (320, 640, 1280, 1280), 2 layers per block, 8-channel heads, 768-wide
    # text context, 64x64 latents (a factor-1 VAE and a one-layer text encoder keep the rest small).
    "sd14": dict(image_size=64, unet_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
                 text_width=768, text_layers=1, text_heads=12, vae_channels=(32,), norm_num_groups=32),
    "tiny": dict(image_size=16),
}  # fmt: skip


class DeepCopyTeacherESD(ESD):
    """The baseline: ESD whose teacher is a full frozen copy of the UNet, as the reference code does."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frozen_unet = copy.deepcopy(self.backbone.unet).requires_grad_(False)
        self.originals = {}  # the copy replaces the kept originals

    @torch.no_grad()
    def teacher(self, latents, t, encoder_hidden_states):
        return self.frozen_unet(latents, t, encoder_hidden_states=encoder_hidden_states)


def storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def measure(cls, spec, steps: int) -> dict:
    torch.manual_seed(0)
    module = cls(spec, variant="x", ddim_steps=2, lr=1e-5)
    module.log = lambda *args, **kwargs: None  # no trainer here: the step itself is measured
    optimizer = module.configure_optimizers()
    resident = storage_bytes([*module.parameters(), *module.buffers(), *module.originals.values()])
    teacher = storage_bytes([*module.originals.values()]) if not isinstance(module, DeepCopyTeacherESD) else storage_bytes(module.frozen_unet.parameters())
    batch = {"prompt": ["a photo of a church"]}
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for i in range(steps):
            loss = module.training_step(batch, i)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    seconds = (time.perf_counter() - start) / steps
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    during = max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0)
    return {"resident": resident, "teacher": teacher, "during_steps": during, "peak": resident + during, "s_per_step": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    spec = TinySD(seed=0, **SIZES[args.size])
    ours = measure(ESD, spec, args.steps)
    baseline = measure(DeepCopyTeacherESD, spec, args.steps)
    gib = 2**30
    for name, r in (("ESD-x, teacher = originals of trained tensors", ours), ("ESD-x, teacher = deep-copied UNet", baseline)):
        print(f"{name}: weights+teacher {r['resident'] / gib:.3f} GiB (teacher {r['teacher'] / gib:.3f} GiB), "
              f"peak during steps +{r['during_steps'] / gib:.3f} GiB, peak {r['peak'] / gib:.3f} GiB, {r['s_per_step']:.1f} s/step")  # fmt: skip
    print(f"peak ratio (ours / deep copy): {ours['peak'] / baseline['peak']:.3f}")


if __name__ == "__main__":
    main()
