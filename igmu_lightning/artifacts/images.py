"""Images on disk: 8-bit PNGs written atomically, image grids, and the image cache every part of the
project shares (evaluations, Concept Ablation's anchors), keyed by (model fingerprint, sampler
settings, prompt, seed), with a manifest that maps each cached file back to those keys. Low level:
it knows backbones and the sampler's byte rounding, nothing above them."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from igmu_lightning.backbone import Backbone
from igmu_lightning.data.captioned_folder import load_image
from igmu_lightning.sampling import to_uint8
from igmu_lightning.utils.io import atomic_write_bytes, current_umask

MANIFEST = "manifest.jsonl"  # one JSON line per cached image, at the cache's root


def fingerprint(hashes: dict[str, str], guidance=None) -> str:
    """Weights and sampling-time guidance: what decides a model's images besides the sampler."""
    identity = hashes if guidance is None else [hashes, guidance.to_config()]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def model_identity(backbone: Backbone) -> tuple[dict[str, str], str]:
    """The model's weight hashes and its ``fingerprint``, from one pass over the weights."""
    hashes = backbone.hashes()
    return hashes, fingerprint(hashes, backbone.guidance)


def model_fingerprint(backbone: Backbone) -> str:
    return model_identity(backbone)[1]


class ImageCache:
    """PNG files under ``root/<model>/<settings>/<key>.png`` (lossless: the cached image is the
    8-bit image every metric sees), and ``root/manifest.jsonl``: one line per image, ``{"file"
    (relative to root), "model" (the fingerprint), "prompt", "seed", "settings"}``, appended with one
    ``write`` to a file opened for appending (processes sharing the cache never interleave lines).
    An image cached before the manifest existed gets its line when an evaluation next reads it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._folders: dict[Path, tuple[str, dict]] = {}  # folder -> (model, settings) it was named for
        self._listed: set[str] | None = None  # files the manifest names, read once
        self._lead = ""  # "\n" when the manifest ends in a line cut short

    @staticmethod
    def key(prompt: str, seed: int) -> str:
        return hashlib.sha256(json.dumps([prompt, int(seed)]).encode()).hexdigest()[:32]

    def folder(self, model: str, settings: dict) -> Path:
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        folder = self.root / model[:16] / digest
        self._folders[folder] = (model, dict(settings))
        return folder

    def path(self, folder: Path, prompt: str, seed: int) -> Path:
        return folder / f"{self.key(prompt, seed)}.png"

    def load(self, folder: Path, prompt: str, seed: int) -> torch.Tensor | None:
        path = self.path(folder, prompt, seed)
        if not path.is_file():
            return None
        return load_image(path)

    def save(self, folder: Path, prompt: str, seed: int, image: torch.Tensor) -> None:
        save_png(self.path(folder, prompt, seed), image)
        self.record(folder, prompt, seed)

    def record(self, folder: Path, prompt: str, seed: int) -> None:
        """Append the manifest line of the image of (prompt, seed) in ``folder`` unless the manifest
        names it already (``save`` does; an evaluation does for the images it reads back, so a cache
        older than its manifest gets listed). Reading alone writes nothing."""
        if self._listed is None:
            self._listed = {entry["file"] for entry in read_manifest(self.root)}
            manifest = self.root / MANIFEST
            if manifest.is_file() and manifest.stat().st_size and not manifest.read_bytes().endswith(b"\n"):
                self._lead = "\n"  # a line cut short (a full disk) stays a line of its own, skipped on reading
        file = self.path(folder, prompt, seed).relative_to(self.root).as_posix()
        if file in self._listed:
            return
        model, settings = self._folders.get(folder, (None, None))
        line = json.dumps({"file": file, "model": model, "prompt": prompt, "seed": int(seed), "settings": settings},
                          sort_keys=True, ensure_ascii=False)  # fmt: skip
        try:
            fd = os.open(self.root / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666 & ~current_umask())
        except OSError:  # a read-only cache still serves its images; it stays unlisted
            return
        try:
            os.write(fd, (self._lead + line + "\n").encode("utf-8"))
        finally:
            os.close(fd)
        self._lead = ""
        self._listed.add(file)


def read_manifest(root: str | Path) -> list[dict]:
    """The manifest's entries in the order written, one per file (a line cut short by a crash is skipped)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return []
    entries: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        entries.setdefault(entry["file"], entry)
    return list(entries.values())


def find_images(root: str | Path, prompt: str | None = None, seed: int | None = None, model: str | None = None,
                settings: dict | None = None) -> list[dict]:  # fmt: skip
    """The cached images behind a number: the manifest entries of ``root`` whose prompt, seed, model
    fingerprint (a prefix is enough) and settings (the given keys) match, each with ``path``, the
    file's full path. A model's fingerprint is ``fingerprint(results["run"]["model_hashes"][name])``
    (with its guidance's config for a model with sampling-time guidance, such as SLD)."""
    found = []
    for entry in read_manifest(root):
        if prompt is not None and entry["prompt"] != prompt or seed is not None and entry["seed"] != int(seed):
            continue
        if model is not None and not (entry["model"] or "").startswith(model):
            continue
        if settings and any((entry["settings"] or {}).get(k) != v for k, v in settings.items()):
            continue
        found.append({**entry, "path": str(Path(root) / entry["file"])})
    return found


def save_png(path: Path, image: torch.Tensor) -> None:
    """An image (3, H, W) in [0, 1] as an 8-bit PNG, written atomically."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def image_grid(rows: list[torch.Tensor], padding: int = 2) -> torch.Tensor:
    """Rows of images (each (K, 3, H, W) in [0, 1], K the same for all) as one image (3, H', W'),
    white between images: row r, column c starts at (padding + r (H + padding), padding + c (W + padding))."""
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"image_grid needs rows of one length, got {[len(r) for r in rows]}")
    return make_grid(torch.cat([r.float().cpu() for r in rows]), nrow=len(rows[0]), padding=padding, pad_value=1.0)


def write_grids(folder: str | Path, samples: dict[str, torch.Tensor], combined: str = "_all") -> list[Path]:
    """One 8-bit PNG per method, ``<folder>/<method>.png`` (its kept images in a row), and
    ``<folder>/<combined>.png`` with a row per method in the order of ``samples``; each atomically."""
    folder = Path(folder)
    if not samples:
        return []
    written = []
    for name, images in samples.items():
        save_png(folder / f"{name}.png", image_grid([images]))
        written.append(folder / f"{name}.png")
    save_png(folder / f"{combined}.png", image_grid(list(samples.values())))
    return [*written, folder / f"{combined}.png"]
