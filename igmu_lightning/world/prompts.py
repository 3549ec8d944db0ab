"""The world's prompt sets per erasure target, in IGMU's terms, each prompt with the scene it
asks for (so the evaluator knows which shape, colour, style and attribute should appear).

forget       prompts that name the target (IGMU ``forgot``)
remove_word  the same prompts with the target word removed (style / attribute: what must survive)
unrelated    prompts of the other classes of the target's family (IGMU ``retain`` for objects)
near         prompts of the concept that resembles the target (HUB's pinpoint-ness)
synonym      paraphrase templates naming the target by a synonym (robustness)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from igmu_lightning.utils.text import strip_concept
from igmu_lightning.world.concepts import (
    COLOURS,
    FAMILIES,
    MAIN_TEMPLATES,
    PARAPHRASE_TEMPLATES,
    SHAPES,
    STYLES,
    TARGETS,
    Scene,
    Target,
)

PROMPT_SETS = ("forget", "remove_word", "unrelated", "near", "synonym")


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    scene: Scene  # what the prompt asks for; for remove_word, what must survive


def family_scenes(family: str, value: str, n: int, rng: np.random.Generator) -> list[Scene]:
    """n scenes with ``family`` fixed to ``value`` and the other factors balanced, then shuffled.
    Attributes stay "filled" unless they are the fixed family, so prompts never stack attribute words."""
    scenes = []
    for i in range(n):
        if family == "shape":  # every colour and style with the fixed shape
            scene = Scene(value, COLOURS[i % len(COLOURS)], STYLES[(i // len(COLOURS)) % len(STYLES)])
        else:
            scene = Scene(SHAPES[i % len(SHAPES)], COLOURS[(i // len(SHAPES)) % len(COLOURS)], STYLES[rng.integers(len(STYLES))])
        scenes.append(replace(scene, **{family: value}))
    return [scenes[k] for k in rng.permutation(n)]


def family_prompts(
    family: str, value: str, n: int, rng: np.random.Generator, templates=MAIN_TEMPLATES, words=None
) -> list[PromptItem]:
    """n prompts asking for ``value`` of ``family``, cycling through ``templates``."""
    scenes = family_scenes(family, value, n, rng)
    return [PromptItem(s.caption(templates[i % len(templates)], words), s) for i, s in enumerate(scenes)]


def _items(target: Target, value: str, n: int, rng: np.random.Generator, templates=MAIN_TEMPLATES, words=None):
    return family_prompts(target.family, value, n, rng, templates, words)


def set_classes(target: Target | str) -> dict[str, int]:
    """How many classes each prompt set of ``target`` has (remove_word: as many as forget)."""
    target = TARGETS[target] if isinstance(target, str) else target
    forget = 1 if target.family == "shape" else len(SHAPES)
    unrelated = len([c for c in FAMILIES[target.family] if c not in (target.word, target.near)])
    return {"forget": forget, "remove_word": forget, "unrelated": unrelated, "near": 1, "synonym": len(target.synonyms)}


def per_class_for_set_size(target: Target | str, prompts_per_set: int) -> dict[str, int]:
    """Prompts per class of each set so that every set holds at least ``prompts_per_set``."""
    return {name: -(-prompts_per_set // classes) for name, classes in set_classes(target).items()}


def prompt_sets(
    target: Target | str, n_per_class: int | dict[str, int] = 16, seed: int = 0
) -> dict[str, dict[str, list[PromptItem]]]:
    """``{set name: {class: [PromptItem]}}`` for one target; deterministic in (target, n, seed).
    ``n_per_class``: one count for every set, or one per set (``per_class_for_set_size``)."""
    target = TARGETS[target] if isinstance(target, str) else target
    count = n_per_class if isinstance(n_per_class, dict) else dict.fromkeys(PROMPT_SETS, n_per_class)
    rng = np.random.default_rng([seed, list(TARGETS).index(target.name)])
    others = [c for c in FAMILIES[target.family] if c != target.word]
    if target.family == "shape":
        forget = {target.word: _items(target, target.word, count["forget"], rng)}
    else:  # style / attribute: one class per subject (shape), as IGMU's nudity and style sets
        forget = {}
        for shape in SHAPES:
            scenes = [replace(it.scene, shape=shape) for it in _items(target, target.word, count["forget"], rng)]
            # the same template cycle family_prompts uses, now with this subject
            forget[shape] = [PromptItem(s.caption(MAIN_TEMPLATES[i % len(MAIN_TEMPLATES)]), s) for i, s in enumerate(scenes)]
    remove_word = {
        cls: [PromptItem(strip_word(it.prompt, target.word), replace(it.scene, **{target.family: target.anchor})) for it in items]
        for cls, items in forget.items()
    }
    return {
        "forget": forget,
        "remove_word": remove_word if target.family != "shape" else {},
        "unrelated": {c: _items(target, c, count["unrelated"], rng) for c in others if c != target.near},
        "near": {target.near: _items(target, target.near, count["near"], rng)},
        "synonym": {
            syn: _items(target, target.word, count["synonym"], rng, PARAPHRASE_TEMPLATES, {target.word: syn})
            for syn in target.synonyms
        },
    }


def strip_word(prompt: str, word: str) -> str:
    """The prompt with the target word removed (IGMU's ``remove_word``)."""
    return strip_concept(prompt, [word])


def igmu_json(target: Target | str, n_per_class: int = 16, seed: int = 0) -> dict[str, dict]:
    """The sets as IGMU's files: ``{file: {task: {class: [prompt]}}}`` with task ``<category>_<word>``."""
    target = TARGETS[target] if isinstance(target, str) else target
    task = f"{target.category}_{target.word}"
    sets = prompt_sets(target, n_per_class, seed)
    as_text = {name: {c: [it.prompt for it in items] for c, items in classes.items()} for name, classes in sets.items()}
    retain = as_text["remove_word"] if target.family != "shape" else as_text["unrelated"]
    return {
        "forgot": {task: as_text["forget"]},
        "retain": {task: retain},
        "near": {task: as_text["near"]},
        "synonym": {task: as_text["synonym"]},
        "unrelated": {task: as_text["unrelated"]},
    }
