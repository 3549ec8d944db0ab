"""The tokens a discrete attack may pick, and how its prompts are written back as text.

An attack that searches over token ids (P4D's nearest-token projection, Ring-A-Bell's genetic search)
must hand back text that the tokenizer reads as the same ids, or the evaluation would judge another
prompt than the one found. A CLIP BPE token is safe on its own when it ends a word (``</w>``) and its
text, tokenized alone, is that one token: such tokens joined by spaces tokenize back to themselves.
The official codes draw from the whole vocabulary (ids 0..49407, or 1..49405 for Ring-A-Bell) and
decode with ``tokenizer.decode``, which can merge word pieces into other tokens; ``vocab="all"``
keeps that choice."""

from __future__ import annotations

from typing import Literal

import torch

from igmu_lightning.errors import IGMUError

Vocab = Literal["words", "all"]
_CACHE: dict[tuple, torch.Tensor] = {}


def decode(tokenizer, ids) -> str:
    """Token ids as text, words separated by single spaces. A deep-copied CLIP tokenizer decodes
    without its ``</w>`` handling (transformers 5), so word ends are turned into spaces here too."""
    return " ".join(tokenizer.decode([int(i) for i in ids]).replace("</w>", " ").split())


def _key(tokenizer) -> tuple:
    return (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer))


def word_token_ids(tokenizer) -> torch.Tensor:
    """Sorted ids (long) of the tokens that end a word and tokenize back to themselves alone."""
    key = _key(tokenizer)
    if key not in _CACHE:
        special = set(tokenizer.all_special_ids)
        ids, texts = [], []
        for token, i in tokenizer.get_vocab().items():
            if i in special or not token.endswith("</w>"):
                continue
            text = decode(tokenizer, [i])
            if text and not any(c.isspace() for c in text):
                ids.append(i)
                texts.append(text)
        encoded = tokenizer(texts, add_special_tokens=False).input_ids
        kept = sorted(i for i, enc in zip(ids, encoded) if enc == [i])
        if not kept:
            raise IGMUError("the tokenizer has no whole-word tokens to search over: use vocab='all'")
        _CACHE[key] = torch.tensor(kept, dtype=torch.long)
    return _CACHE[key]


def candidate_ids(tokenizer, vocab: Vocab, low: int = 0, high: int | None = None) -> torch.Tensor:
    """The ids an attack draws from: whole-word tokens (``words``) or the id range [low, high)."""
    if vocab == "words":
        return word_token_ids(tokenizer)
    if vocab == "all":
        return torch.arange(low, len(tokenizer) if high is None else high)
    raise IGMUError(f"unknown vocab '{vocab}': choose 'words' or 'all'")


def token_text(tokenizer, token_id: int) -> str:
    """One token's text as it reads in a prompt (no ``</w>``, no surrounding space)."""
    return decode(tokenizer, [int(token_id)])


def word_groups(tokenizer, prompt: str) -> list[list[int]]:
    """The prompt's token ids (without start and end tokens), grouped by word: a group ends with a
    token ending in ``</w>``, so inserting tokens between groups never splits a word."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    groups, current = [], []
    for i, token in zip(ids, tokens):
        current.append(i)
        if token.endswith("</w>"):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def group_text(tokenizer, group: list[int]) -> str:
    return decode(tokenizer, group)
