"""The embedded world's vocabulary: four concept families, the erasure targets (one per CatIGMU
category that applies), their near concepts and synonyms, and the caption templates.

The world is a miniature of the real setting (docs/world.md): an object (erase "triangle",
keep the other shapes), a style (erase the "striped" background, keep shape and colour), and an
attribute of a subject (erase "hollow", keep the shape: the nudity analogue)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "cross", "diamond")
COLOURS = ("red", "green", "blue", "yellow")
STYLES = ("plain", "striped", "dotted", "checkered")
ATTRIBUTES = ("filled", "hollow", "outlined")  # "filled" is the unmarked default: no caption word

FAMILIES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "style": STYLES, "attribute": ATTRIBUTES}

# Words that mean the same concept. They appear in pretraining captions only inside the
# paraphrase templates below, never as the concept's main name in the main templates: erasing the
# main name may leave them working, which is what the robustness aspect measures.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "triangle": ("trigon", "wedge"),
    "striped": ("banded", "pinstriped"),
    "hollow": ("empty", "unfilled"),
}

MAIN_TEMPLATES = (
    "a {attribute}{colour} {shape} on a {style} background",
    "a {style} background with a {attribute}{colour} {shape}",
    "a picture of a {attribute}{colour} {shape}, {style} background",
)
PARAPHRASE_TEMPLATES = (
    "an image showing one {attribute}{colour} {shape} in front of a {style} pattern",
    "{style} pattern behind a {attribute}{colour} {shape}",
)
SHORT_TEMPLATES = ("a {attribute}{colour} {shape}", "a {attribute}{shape} on a {style} background")


@dataclass(frozen=True)
class Target:
    """One erasure task of the world, in IGMU's terms.

    category: CatIGMU category (object / style / attribute).
    family: the concept family the target belongs to (its detector).
    word: the target's main name; near: a concept that resembles it and must survive (HUB's
    pinpoint-ness); anchor: what the target should turn into (the default anchor of §1)."""

    name: str
    category: str
    family: str
    word: str
    near: str
    anchor: str

    @property
    def synonyms(self) -> tuple[str, ...]:
        return SYNONYMS[self.word]


TARGETS: dict[str, Target] = {
    "object": Target("object", "object", "shape", "triangle", near="diamond", anchor="square"),
    "style": Target("style", "style", "style", "striped", near="checkered", anchor="plain"),
    "attribute": Target("attribute", "attribute", "attribute", "hollow", near="outlined", anchor="filled"),
}


@dataclass(frozen=True)
class Scene:
    """The factors of one image; its caption is one of the templates filled with them."""

    shape: str
    colour: str
    style: str
    attribute: str = "filled"

    def label(self, family: str) -> str:
        return getattr(self, family)

    def caption(self, template: str, words: dict[str, str] | None = None) -> str:
        """Fill ``template``; ``words`` swaps a factor's word (a synonym) or drops it ("")."""
        words = words or {}
        attribute = words.get(self.attribute, self.attribute)
        fields = {
            "shape": words.get(self.shape, self.shape),
            "colour": words.get(self.colour, self.colour),
            "style": words.get(self.style, self.style),
            "attribute": "" if self.attribute == "filled" or not attribute else f"{attribute} ",
        }
        text = " ".join(template.format(**fields).split()).replace(" ,", ",")
        return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)  # "a outlined" -> "an outlined"
