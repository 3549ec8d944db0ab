"""Drawing one scene: a coloured shape (filled, hollow or outlined) on a textured background,
with jittered size, position, rotation and colours. Drawn 4x larger and box-filtered down, so
edges are anti-aliased like real images."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from igmu_lightning.world.concepts import Scene

SUPERSAMPLE = 4
COLOUR_RGB = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (235, 200, 30)}


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius r centred at (cx, cy), rotated by ``angle`` radians."""
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        r = r / math.sqrt(2)
    elif shape == "triangle":  # apex up
        corners = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        cy += 0.2 * r  # centre the triangle's bounding box
    elif shape == "diamond":  # a tall rhombus: pointy like the triangle, four-sided like the square
        corners = [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    elif shape == "cross":
        w = 0.34
        corners = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    else:
        raise ValueError(f"no polygon for shape '{shape}'")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in corners]


def _background(style: str, size: int, rng: np.random.Generator) -> Image.Image:
    s = SUPERSAMPLE
    base = tuple(int(v) for v in rng.integers(205, 240, 3))
    ink = tuple(int(v * rng.uniform(0.55, 0.7)) for v in base)
    image = Image.new("RGB", (size * s, size * s), base)
    draw = ImageDraw.Draw(image)
    period = int(rng.integers(4, 6)) * s
    offset = int(rng.integers(0, period))
    if style == "striped":  # horizontal bands
        for y in range(-period + offset, size * s, period):
            draw.rectangle([0, y, size * s, y + period // 2 - 1], fill=ink)
    elif style == "checkered":
        for i, y in enumerate(range(-period + offset, size * s, period)):
            for j, x in enumerate(range(-period + offset, size * s, period)):
                if (i + j) % 2 == 0:
                    draw.rectangle([x, y, x + period - 1, y + period - 1], fill=ink)
    elif style == "dotted":
        radius = 0.9 * s
        for y in range(offset // 2, size * s, period):
            for x in range(offset // 2, size * s, period):
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=ink)
    elif style != "plain":
        raise ValueError(f"unknown style '{style}'")
    return image


def render_with_mask(scene: Scene, size: int = 32, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The scene as an (size, size, 3) uint8 array and the exact mask of its shape, an (size, size)
    float array in [0, 1] (the share of each pixel the shape's silhouette covers: its filled
    outline, interior included for a hollow shape, rim included for an outlined one); ``rng``
    decides every jitter, and drawing the mask draws nothing from it."""
    rng = rng or np.random.default_rng(0)
    s = SUPERSAMPLE
    image = _background(scene.style, size, rng)
    draw = ImageDraw.Draw(image)
    silhouette = Image.new("L", image.size, 0)
    mask_draw = ImageDraw.Draw(silhouette)
    colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOUR_RGB[scene.colour])
    r = rng.uniform(0.30, 0.40) * size * s
    cx = size * s / 2 + rng.uniform(-0.08, 0.08) * size * s
    cy = size * s / 2 + rng.uniform(-0.08, 0.08) * size * s
    angle = math.radians(rng.uniform(-10, 10))
    width = int(round(0.11 * size * s))  # hollow wall / outline thickness

    def outline(fill, scale: float = 1.0, line=None, line_width: int = 0) -> None:
        for canvas, paint, rim in ((draw, fill, line), (mask_draw, 255, 255 if line else None)):
            if scene.shape == "circle":
                rr = r * 0.85 * scale
                canvas.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=paint, outline=rim, width=line_width)
            else:
                canvas.polygon(_polygon(scene.shape, cx, cy, r * scale, angle), fill=paint, outline=rim, width=line_width)

    if scene.attribute == "hollow":  # a thick coloured wall, the background shows inside
        outline(None, line=colour, line_width=width)
    elif scene.attribute == "outlined":  # filled, with a white rim
        outline(colour, line=(255, 255, 255), line_width=max(1, width // 2))
    else:
        outline(colour)
    small = image.resize((size, size), Image.BOX)
    mask = np.asarray(silhouette.resize((size, size), Image.BOX), dtype=np.float32) / 255
    return np.asarray(small, dtype=np.uint8), mask


def render(scene: Scene, size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """The scene as an (size, size, 3) uint8 array; ``rng`` decides every jitter."""
    return render_with_mask(scene, size, rng)[0]


def render_tensor(scene: Scene, size: int = 32, rng: np.random.Generator | None = None) -> torch.Tensor:
    """``render`` as a (3, size, size) float tensor in [0, 1], as datasets and metrics take it."""
    return torch.from_numpy(render(scene, size, rng).copy()).permute(2, 0, 1).float() / 255
