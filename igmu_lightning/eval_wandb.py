"""evaluate.py's Weights & Biases run: one run per evaluation, offline unless an API key is
configured (as training's logger; ``wandb sync <run dir>`` uploads it later), grouped by the
benchmark (the config's name) so the evaluations of one benchmark compare in one workspace. It logs

    config                 the results document's ``run`` block: the resolved config, seed, package
                           versions, model hashes, evaluators (judges, FID features, interval methods)
    aspects/<aspect>       a table per aspect: method, metric, value, ci_low, ci_high, n, ci_method
    grids/<method>         the method's first forget-prompt images (the same prompts and seeds for
                           every method), and grids/all with a row per method
    attacks                the adversarial prompts the attack probes found: method, probe, prompt,
                           seed, adversarial_prompt, pre, post
    figures/<kind>         the benchmark report's figures of these results (trade-off with the
                           Pareto front, profile over the aspects, plain vs attacked, image grid),
                           as evaluate.py writes them beside the results, each with its caption
    summary                <method>/<aspect>.<metric>: each value, for the workspace's run table"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from igmu_lightning.artifacts.images import image_grid
from igmu_lightning.evaluation.results import ASPECT_COLUMNS, aspect_rows
from igmu_lightning.sampling import to_uint8
from igmu_lightning.utils.wandb_mode import wandb_offline

ATTACK_COLUMNS = ["method", "probe", "prompt", "seed", "adversarial_prompt", "pre", "post"]


@dataclass
class WandbSettings:
    """The W&B run of an evaluation (``--wandb.project ...``, or a ``wandb:`` block in the config;
    ``--wandb false`` logs nothing).

    Args:
        project: W&B project (training's default, so both sit side by side).
        group: the benchmark the run belongs to (default: the config's name, e.g. ``object``).
        name: run name (default: the results file's name).
        entity: W&B entity (team or user).
        tags: run tags.
        mode: ``offline`` or ``online``; unset: offline unless ``WANDB_MODE=online`` or an API key
            is configured.
        save_dir: where the run folder goes (default: ``$WANDB_DIR``, else ``logs``, as training's).
    """

    project: str = "igmu-lightning"
    group: str | None = None
    name: str | None = None
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: Literal["offline", "online"] | None = None
    save_dir: str | None = None


def attack_rows(attacks: dict) -> list[list]:
    """One row per attacked forget prompt of every method and attack probe: ``ATTACK_COLUMNS``."""
    return [
        [method, probe, row["prompt"], int(row["seed"]), row.get("adversarial_prompt"), bool(row["pre"]),
         None if row.get("post") is None else bool(row["post"])]  # fmt: skip
        for method, probes in attacks.items()
        for probe, found in probes.items()
        for row in found.rows
    ]


def log_evaluation(settings: WandbSettings, document: dict, samples: dict, sample_prompts: list, attacks: dict,
                   group: str, name: str, figures: dict[str, tuple[Path, str]] | None = None) -> Path | None:  # fmt: skip
    """Log one evaluation as one W&B run (see the module's docstring); the run's folder, or None when
    wandb is not installed or the run could not be made (one line says why; the results on disk
    are untouched). ``group`` and ``name`` stand in for the settings' unset ones; ``figures``:
    kind -> (PNG, caption)."""
    try:
        import wandb
    except ImportError:
        print("W&B: wandb is not installed, nothing logged (pip install wandb, or pass --wandb false)")
        return None
    offline = wandb_offline(None if settings.mode is None else settings.mode == "offline")
    save_dir = Path(settings.save_dir or os.environ.get("WANDB_DIR") or "logs")
    methods = document["methods"]
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=settings.project, entity=settings.entity, group=settings.group or group, name=settings.name or name,
            tags=list(settings.tags) or None, job_type="evaluation", dir=str(save_dir), config=document["run"],
            mode="offline" if offline else "online",
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - wandb's own errors (no network, a bad entity): the results are written already
        print(f"W&B: no run was made ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}); "
              "the results are written: pass --wandb.mode offline, or --wandb false")  # fmt: skip
        return None
    with run:
        logged = {}
        for aspect in sorted({a for m in methods.values() for a in m.get("aspects", {})}):
            logged[f"aspects/{aspect}"] = wandb.Table(columns=ASPECT_COLUMNS, data=aspect_rows(methods, aspect))
        if samples:
            caption = "; ".join(f"{p} (seed {s})" for p, s in sample_prompts)
            for method, images in samples.items():
                logged[f"grids/{method}"] = wandb.Image(_pixels(image_grid([images])), caption=caption)
            logged["grids/all"] = wandb.Image(_pixels(image_grid(list(samples.values()))),
                                              caption=f"rows: {', '.join(samples)}; columns: {caption}")  # fmt: skip
        for kind, (png, caption) in (figures or {}).items():
            logged[f"figures/{kind}"] = wandb.Image(str(png), caption=caption)
        if attacks:
            logged["attacks"] = wandb.Table(columns=ATTACK_COLUMNS, data=attack_rows(attacks))
        run.log(logged)
        for method, entry in methods.items():
            for aspect, metrics in entry.get("aspects", {}).items():
                for metric, v in metrics.items():
                    run.summary[f"{method}/{aspect}.{metric}"] = v["value"]
        folder = Path(run.dir).parent
    how = f"offline; upload with: wandb sync {folder}" if offline else "online"
    print(f"W&B run ({how}): {folder}")
    return folder


def _pixels(grid: torch.Tensor):
    """The grid as the 8-bit (H, W, 3) array the PNGs on disk hold."""
    return to_uint8(grid).permute(1, 2, 0).numpy()
