"""Lightning's cost per training step: ESD-x steps through ``Trainer.fit`` against the very same
steps in a plain PyTorch loop (same module, data, optimizer; every step reseeded by its index, so
both loops do identical work, including ESD's random number of sampling steps).

    python benchmarks/training_overhead.py                      # the world's model, batch 8
    python benchmarks/training_overhead.py --model tiny --steps 20
"""

from __future__ import annotations

import argparse
import time

import torch
from lightning.pytorch import Callback, Trainer

from igmu_lightning.algorithms import ESD
from igmu_lightning.backbone import Pretrained, TinySD
from igmu_lightning.data import PromptData


class SeededESD(ESD):
    """ESD whose step ``i`` draws the same random numbers in any loop."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        torch.manual_seed(1000 + batch_idx)
        return super().training_step(batch, batch_idx)


class StepTimer(Callback):
    """Wall time from the first batch's start to the last batch's end (no setup, no export)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 1:  # step 0 is the warm-up, as in the plain loop
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def build(spec, batch: int, steps: int) -> tuple[SeededESD, PromptData]:
    torch.manual_seed(0)
    module = SeededESD(spec, variant="x", lr=1e-3)
    return module, PromptData(["triangle"], batch_size=batch, steps_per_epoch=steps)


def lightning_loop(spec, batch: int, steps: int) -> float:
    module, data = build(spec, batch, steps)
    timer = StepTimer()
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])  # fmt: skip
    trainer.fit(module, data)
    return (timer.end - timer.start) / (steps - 1)


def plain_loop(spec, batch: int, steps: int) -> float:
    module, data = build(spec, batch, steps)
    module.log = lambda *args, **kwargs: None
    module.train()
    optimizer = module.configure_optimizers()
    for i, item in enumerate(data.train_dataloader()):
        if i == 1:
            start = time.perf_counter()
        loss = module.training_step(item, i)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / (steps - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="checkpoints/world/base", help="a diffusers folder, or 'tiny'")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=21, help="timed steps + 1 warm-up step")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs; the fastest of each is kept")
    args = parser.parse_args()
    spec = TinySD(seed=0, image_size=16) if args.model == "tiny" else Pretrained(args.model)
    plain, lightning = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(spec, args.batch, args.steps))
        lightning.append(lightning_loop(spec, args.batch, args.steps))
    print(f"plain loop: {min(plain):.4f} s/step   Trainer.fit: {min(lightning):.4f} s/step   (runs: {plain}, {lightning})")
    print(f"overhead ratio (Lightning / plain): {min(lightning) / min(plain):.3f}")


if __name__ == "__main__":
    main()
