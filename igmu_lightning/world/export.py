"""Write the world to disk in DataIGM's layouts: detector images ``World_<Family>/{train,test}/
<label>/*.png`` (class-balanced) and, per target, IGMU-format prompt files."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.io import follow_umask, make_temp_dir
from igmu_lightning.world.concepts import FAMILIES, TARGETS
from igmu_lightning.world.data import sample_scene, split_rng
from igmu_lightning.world.prompts import igmu_json
from igmu_lightning.world.render import render


def task_name(family: str) -> str:
    return f"World_{family.capitalize()}"


def write_detector_images(out: Path, per_class: dict[str, int], image_size: int = 32, seed: int = 0) -> None:
    """Class-balanced labelled images for each family; the other factors are drawn at random."""
    jobs = [(f, c, split, n) for f in FAMILIES for c in FAMILIES[f] for split, n in per_class.items()]
    for family, label, split, n in tqdm(jobs, desc="writing detector images", unit="class"):
        folder = out / task_name(family) / split / label
        folder.mkdir(parents=True, exist_ok=True)
        offset = 1_000_000 * (1 + list(FAMILIES).index(family)) + 10_000 * FAMILIES[family].index(label)
        for i in range(n):
            rng = split_rng(seed, split, offset + i)
            scene = replace(sample_scene(rng), **{family: label})
            Image.fromarray(render(scene, image_size, rng)).save(folder / f"{i:05d}.png")


def write_prompts(out: Path, n_per_class: int, seed: int = 0) -> None:
    """``prompts/<file>.json`` in IGMU's ``{task: {class: [prompt]}}`` format, all targets merged."""
    merged: dict[str, dict] = {}
    for target in TARGETS:
        for file, tasks in igmu_json(target, n_per_class, seed).items():
            merged.setdefault(file, {}).update(tasks)
    (out / "prompts").mkdir(parents=True, exist_ok=True)
    for file, tasks in merged.items():
        (out / "prompts" / f"{file}.json").write_text(json.dumps(tasks, indent=2) + "\n")


def export(out: str | Path, train_per_class: int, test_per_class: int, prompts_per_class: int, seed: int = 0) -> Path:
    """Write everything into a temporary folder and move it into place: never half a world."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise IGMUError(f"'{out}' exists and is not empty: remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)  # with the umask's permissions, not mkdtemp's 0700
    try:
        write_detector_images(tmp, {"train": train_per_class, "test": test_per_class}, seed=seed)
        write_prompts(tmp, prompts_per_class, seed)
        follow_umask(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m igmu_lightning.world", description=__doc__)
    parser.add_argument("--out", default="data/world", help="folder to create (must not hold anything)")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=250)
    parser.add_argument("--prompts-per-class", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.train_per_class, args.test_per_class, args.prompts_per_class) < 1:
        raise IGMUError("--train-per-class, --test-per-class and --prompts-per-class must be >= 1")
    path = export(args.out, args.train_per_class, args.test_per_class, args.prompts_per_class, args.seed)
    print(f"wrote the world to {path}")
