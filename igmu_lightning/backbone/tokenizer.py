"""The CLIP BPE tokenizer of Stable Diffusion v1.x, built offline from the vocabulary that the
``open_clip_torch`` wheel ships (no hub download), with SD's token ids (BOS 49406, EOS 49407)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from igmu_lightning.errors import IGMUError

# 49152 BPE entries = 256 bytes + 256 bytes with "</w>" + 48894 merges + 2 special tokens.
NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP BPE uses for raw bytes, in vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shift)
            shift += 1
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


def open_clip_bpe_file() -> Path:
    """Path of the gzipped CLIP merges file inside the installed ``open_clip`` package."""
    try:
        import open_clip
    except ImportError as err:  # pragma: no cover - it is a hard dependency
        raise IGMUError("the CLIP tokenizer needs the 'open_clip_torch' package: pip install open_clip_torch") from err
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise IGMUError(f"open_clip ships no BPE file at {path}: reinstall open_clip_torch")
    return path


def write_clip_tokenizer_files(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` in the layout ``transformers.CLIPTokenizer`` reads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(open_clip_bpe_file(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is a version header
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab_file, merges_file = out / "vocab.json", out / "merges.txt"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def _cache_dir() -> Path:
    root = os.environ.get("IGMU_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "igmu_lightning"))
    return Path(root) / "clip_tokenizer"


@lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    """SD v1.x's tokenizer: lower-cased CLIP BPE, 77 tokens, padded with ``<|endoftext|>``."""
    folder = _cache_dir()
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        # Build in a private folder, then move it into place, so parallel workers never read half a file.
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        write_clip_tokenizer_files(tmp)
        try:
            tmp.replace(folder)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return CLIPTokenizer.from_pretrained(
        str(folder), bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=MAX_LENGTH
    )
