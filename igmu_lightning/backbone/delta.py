"""An unlearned model as a delta: only the tensors an algorithm trained, in one safetensors file
that records the hashes of the base model it applies to. Megabytes for ESD-x or UCE on SD instead
of a 4 GB folder; applied onto its base only after the base's hashes match.

An adapter method's delta also names its adapters (metadata ``adapters``, absent otherwise): the base is
built and checked first, the same adapters are attached, then the tensors (adapter tensors included)
are loaded; a tensor name is accepted only if the base, with those adapters, has it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open
from safetensors.torch import save as save_tensors

from igmu_lightning.backbone.adapters import AdapterSpec
from igmu_lightning.backbone.backbone import COMPONENTS, Backbone
from igmu_lightning.backbone.loader import BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.io import atomic_write_bytes

DELTA_FILE = "igmu_delta.safetensors"
FORMAT = "igmu-delta/1"


def save_delta(
    path: str | Path, tensors: dict[str, torch.Tensor], base_hashes: dict[str, str], base: BackboneSpec, adapters=()
) -> Path:
    """Write ``tensors`` (backbone names such as ``unet.down_blocks...to_k.weight``) atomically, with
    the ``AdapterSpec``s they need attached (none: the file is as it always was)."""
    if not tensors:
        raise IGMUError("nothing to write into a delta: the model changed no tensor")
    metadata = {"format": FORMAT, "base": json.dumps(base.to_config()), "base_hashes": json.dumps(base_hashes, sort_keys=True)}
    if adapters:
        metadata["adapters"] = json.dumps([AdapterSpec.from_config(a).to_config() for a in adapters], sort_keys=True)
    data = save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, canonical_header(data))


def canonical_header(data: bytes) -> bytes:
    """The same safetensors bytes with the JSON header's keys sorted: safetensors writes its metadata
    in a per-process hash order, so two identical runs would otherwise differ in a few header bytes."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(text) > size:  # never: the same keys and values, reordered
        raise IGMUError("could not canonicalise the delta's header")
    return data[:8] + text.ljust(size, b" ") + data[8 + size :]


def apply_tensors(
    backbone: Backbone, tensors: dict[str, torch.Tensor], base_hashes: dict[str, str], culprit: str, check=None, adapters=()
) -> Backbone:
    """Put trained tensors into a freshly built base after checking it is the base they came from
    (``check``: the components to compare; default those the tensors belong to), attaching
    ``adapters`` (specs or their configs) after the check and before the tensors."""
    check = check or {name.split(".", 1)[0] for name in tensors}
    actual = backbone.hashes()
    wrong = sorted(c for c in COMPONENTS if c in check and actual[c] != base_hashes.get(c))
    if wrong:
        raise IGMUError(
            f"'{culprit}' was made from another base model than '{backbone.source}' ({', '.join(wrong)} hashes differ): "
            "load it onto the base it names"
        )
    for adapter in adapters:
        backbone.attach(AdapterSpec.from_config(adapter))
    state = backbone.state_dict()
    for name, value in tensors.items():
        if name not in state:
            kind = "the base model with its adapters" if adapters else "the base model"
            raise IGMUError(f"'{culprit}' holds tensor '{name}', which {kind} lacks: load it onto the base (and adapters) it names")
        if state[name].shape != value.shape:
            raise IGMUError(f"'{culprit}': tensor '{name}' is {tuple(value.shape)}, the base's {tuple(state[name].shape)}")
    backbone.load_state_dict(tensors, strict=False)
    return backbone


def read_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a delta file, with one-line errors for anything else."""
    path = Path(path)
    if path.is_dir():
        path = path / DELTA_FILE
    if not path.is_file():
        raise IGMUError(f"delta '{path}' does not exist: give the {DELTA_FILE} an unlearning run exported")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise IGMUError(f"'{path}' is a safetensors file but not an igmu-lightning delta (no '{FORMAT}' metadata)")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise IGMUError(f"delta '{path}' is not a safetensors file, or a truncated one ({err}): copy it again or export the run again") from None
    adapters = json.loads(metadata["adapters"]) if "adapters" in metadata else []
    return tensors, {"base": metadata["base"], "base_hashes": json.loads(metadata["base_hashes"]), "adapters": adapters}


class WithDelta(BackboneSpec):
    """A base model with an unlearning delta applied (after the base's hashes are checked).

    Args:
        delta: an ``igmu_delta.safetensors`` (or the folder holding it).
        base: the base model (default: the one the delta names, as it was given to training).
    """

    def __init__(self, delta: str, base: BackboneSpec | None = None) -> None:
        self.delta, self.base = delta, base

    def describe(self) -> str:
        return self.delta

    def check(self) -> None:
        """The delta reads, and its base builds with the hashes it records (a delta for another
        base fails here, before an evaluation scores any model)."""
        tensors, meta = read_delta(self.delta)
        base = BackboneSpec.from_config(self.base) if self.base is not None else _spec_from_description(meta["base"])
        base.check()
        apply_tensors(base.build(), tensors, meta["base_hashes"], self.delta, adapters=meta["adapters"])

    def build(self) -> Backbone:
        tensors, meta = read_delta(self.delta)
        base = BackboneSpec.from_config(self.base) if self.base is not None else _spec_from_description(meta["base"])
        backbone = apply_tensors(base.build(), tensors, meta["base_hashes"], self.delta, adapters=meta["adapters"])
        backbone.source = self.delta
        return backbone

    def to_config(self) -> dict:
        base = None if self.base is None else BackboneSpec.from_config(self.base).to_config()
        return {"class_path": f"{__name__}.WithDelta", "init_args": {"delta": self.delta, "base": base}}


def _spec_from_description(base: str) -> BackboneSpec:
    try:
        return BackboneSpec.from_config(json.loads(base))
    except (ValueError, TypeError):
        raise IGMUError(f"the delta names its base as {base!r}, which is no backbone config: pass base explicitly") from None
