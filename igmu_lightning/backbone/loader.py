"""Loading a backbone from a hub id or a local diffusers folder, with one-line errors instead of a
40-line traceback from deep inside huggingface_hub."""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from igmu_lightning.backbone.backbone import Backbone, check_prediction_type
from igmu_lightning.backbone.guidance import read_guidance
from igmu_lightning.errors import IGMUError

DType = Literal["float32", "float16", "bfloat16"]
SD14 = "CompVis/stable-diffusion-v1-4"


def torch_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    except KeyError:
        raise IGMUError(f"dtype '{name}' is not one of float32, float16, bfloat16") from None


class BackboneSpec:
    """What a config names to get a backbone: ``build()`` returns a fresh, frozen ``Backbone``."""

    def build(self) -> Backbone:
        raise NotImplementedError

    def check(self) -> None:
        """Raise a one-line ``IGMUError`` now if ``build()`` cannot work (a missing or broken
        folder, a delta for another base), before an evaluation spends time on other models."""

    def describe(self) -> str:
        """A short name for logs and results."""
        return type(self).__name__

    def to_config(self) -> dict:
        """``{"class_path", "init_args"}``, as in a YAML config: stored in checkpoints instead of a
        pickled object, so a checkpoint loads with ``torch.load(weights_only=True)``."""
        return class_config(self)

    @staticmethod
    def from_config(config: BackboneSpec | dict) -> BackboneSpec:
        """The inverse of ``to_config`` (only classes of this project are accepted)."""
        return from_class_config(config, "backbone", BackboneSpec)


def class_config(obj) -> dict:
    """``{"class_path", "init_args"}`` of an object whose attributes are its init arguments."""
    cls = type(obj)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(vars(obj))}


def from_class_config(config, kind: str, base: type):
    """The ``base`` instance a stored ``class_config`` names (an instance passes through); only this
    project's classes (``project_class``), with one error line for anything else."""
    if isinstance(config, base):
        return config
    if not isinstance(config, dict) or "class_path" not in config:
        article = "an" if kind[0] in "aeiou" else "a"
        raise IGMUError(f"{article} {kind} must be a {base.__name__} or a class_path/init_args mapping, got {config!r}")
    return project_class(config["class_path"], kind, base)(**config.get("init_args", {}))


def project_class(class_path: str, kind: str, base: type | None = None) -> type:
    """The class a stored ``class_path`` names; only this project's classes (no arbitrary imports
    from a file a user hands us)."""
    module_name, _, name = class_path.rpartition(".")
    if not module_name.startswith("igmu_lightning."):
        raise IGMUError(f"{kind} class '{class_path}' is not part of igmu_lightning")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not isinstance(cls, type) or (base is not None and not issubclass(cls, base)):
        raise IGMUError(f"'{class_path}' is not a {kind} class")
    return cls


class Pretrained(BackboneSpec):
    """A Stable-Diffusion-shaped model from a local diffusers folder or a hub id.

    Args:
        path: a folder written by ``save_pretrained`` (with ``model_index.json``), or a hub id
            such as ``CompVis/stable-diffusion-v1-4`` (taken from the local HF cache first).
        dtype: dtype of the UNet and text encoder weights.
        vae_dtype: dtype of the VAE (float32 avoids the fp16 VAE's NaNs); defaults to ``dtype``.
        revision: hub revision (branch, tag or commit).
        device: where to put the weights; Lightning moves them again when it trains.
    """

    def __init__(
        self,
        path: str = SD14,
        dtype: DType = "float32",
        vae_dtype: DType | None = None,
        revision: str | None = None,
        device: str | None = None,
    ) -> None:
        self.path = path
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self.revision = revision
        self.device = device

    def describe(self) -> str:
        return self.path

    def check(self) -> None:
        source, _ = resolve_model_source(self.path)
        if Path(source).is_dir():
            check_model_folder(Path(source), self.path)

    def build(self) -> Backbone:
        backbone = load_backbone(self.path, dtype=self.dtype, vae_dtype=self.vae_dtype, revision=self.revision)
        return backbone.to(self.device) if self.device else backbone


def _looks_like_local_path(path: str) -> bool:
    """Hub ids are ``owner/name``; anything else (absolute, relative with ./, deeper) is a path."""
    return path.startswith((".", "/", "~", "\\")) or path.count("/") != 1


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_model_source(
    path: str, markers: tuple[str, ...] = ("model_index.json", "unet/config.json"), kind: str = "diffusers model"
) -> tuple[str, bool]:
    """Return (where to load from, local_files_only). Raise a one-line ``IGMUError`` when it
    cannot possibly load: a missing folder, a folder that is no diffusers model, or a hub id that
    is not cached while the hub is unreachable."""
    local = Path(os.path.expanduser(path))
    if local.is_dir():
        if not any((local / marker).is_file() for marker in markers):
            raise IGMUError(
                f"model folder '{path}' is not a {kind} (no {' or '.join(markers)}): "
                "point to a folder written by save_pretrained"
            )
        return str(local), True
    if local.exists():
        raise IGMUError(
            f"model path '{path}' is a file; give a diffusers folder (convert single-file checkpoints with "
            "diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(folder))"
        )
    if _looks_like_local_path(path):
        raise IGMUError(
            f"model path '{path}' does not exist: give a diffusers folder (with model_index.json) "
            f"or a hub id such as {SD14}"
        )
    return path, not _hub_reachable()


SD_PARTS = {"unet": "UNet2DConditionModel", "text_encoder": "CLIPTextModel", "vae": "AutoencoderKL"}
SD1 = "give an SD v1.x-shaped diffusers folder (unet, text_encoder, tokenizer, vae, scheduler)"


def check_supported(given: str, index: dict, scheduler: dict, unet: dict | None) -> None:
    """Refuse, from the configs alone (before any weights load), the diffusers models this backbone
    would misread: SDXL (a second text encoder, an add-embedding UNet), flow-matching transformers
    (SD3, FLUX) and v-prediction (SD 2.x at 768 px), which would be trained as epsilon-prediction."""
    if "text_encoder_2" in index or (unet or {}).get("addition_embed_type"):
        raise IGMUError(f"model '{given}' is SDXL-shaped (text_encoder_2, an add-embedding UNet): SDXL models "
                        f"are not supported yet: {SD1}")  # fmt: skip
    if "transformer" in index or str(scheduler.get("_class_name", "")).startswith("FlowMatch"):
        raise IGMUError(f"model '{given}' is a flow-matching transformer (transformer/, a FlowMatch scheduler): "
                        f"SD3 / FLUX-style models are not supported yet: {SD1}")  # fmt: skip
    check_prediction_type(scheduler.get("prediction_type", "epsilon"), given)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as err:
        raise IGMUError(f"'{path}' cannot be read ({type(err).__name__}): copy or export the model folder again") from None
    return config if isinstance(config, dict) else {}


def check_model_folder(folder: Path, given: str) -> None:
    """A local diffusers folder holds an SD-shaped pipeline: a conditional UNet, a CLIP text encoder,
    a tokenizer, a VAE and a scheduler, each with a readable config and weights."""
    index = _read_config(folder / "model_index.json")
    index.update({part: None for part in ("text_encoder_2", "transformer") if (folder / part).is_dir()})
    unet = _read_config(folder / "unet" / "config.json")
    check_supported(given, index, _read_config(folder / "scheduler" / "scheduler_config.json"), unet)
    for part in ("unet", "text_encoder", "tokenizer", "vae", "scheduler"):
        if not (folder / part).is_dir():
            kind = _pipeline_class(folder)
            raise IGMUError(
                f"model folder '{given}' has no {part}/ (it holds a {kind}): give a Stable-Diffusion-shaped "
                "diffusers folder (unet, text_encoder, tokenizer, vae, scheduler)"
            )
    for part, expected in SD_PARTS.items():
        config = folder / part / "config.json"
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
            found = data.get("_class_name") or (data.get("architectures") or [expected])[0]  # transformers: architectures
        except (OSError, ValueError, AttributeError) as err:
            raise IGMUError(f"'{config}' cannot be read ({type(err).__name__}): copy or export the model folder again") from None
        if found != expected:
            raise IGMUError(f"model folder '{given}': {part} is a {found}, not a {expected}: give a Stable-Diffusion-shaped diffusers folder")
        if not any(p.suffix in (".safetensors", ".bin") for p in (folder / part).iterdir()):
            raise IGMUError(f"model folder '{given}' has no weights in {part}/: copy or export the model folder again")


def _pipeline_class(folder: Path) -> str:
    try:
        return str(json.loads((folder / "model_index.json").read_text()).get("_class_name", "pipeline"))
    except (OSError, ValueError, AttributeError):
        return "folder with an unreadable model_index.json"


def load_backbone(
    path: str = SD14, dtype: str = "float32", vae_dtype: str | None = None, revision: str | None = None
) -> Backbone:
    """Load UNet, text encoder, tokenizer, VAE and scheduler of an SD-shaped model (frozen)."""
    source, offline = resolve_model_source(path)
    if Path(source).is_dir():
        check_model_folder(Path(source), path)
    weights, vae_weights = torch_dtype(dtype), torch_dtype(vae_dtype or dtype)
    common = {"local_files_only": offline, "revision": revision}
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry chatter is noise once we explain the failure
    try:
        if not Path(source).is_dir():  # a hub model: its configs first, its weights only if supported
            scheduler_config = DDPMScheduler.load_config(source, subfolder="scheduler", **common)
            unet_config = UNet2DConditionModel.load_config(source, subfolder="unet", **common)
            check_supported(path, DiffusionPipeline.load_config(source, **common), scheduler_config, unet_config)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=weights, **common)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=weights, **common)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=vae_weights, **common)
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if offline and source == path and not Path(path).exists():
            raise IGMUError(
                f"model '{path}' is neither a local folder nor a cached hub model, and the hub cannot be "
                "reached: fix the path, or download the model where there is network and pass its folder"
            ) from None
        raise IGMUError(f"cannot load model '{path}': {first_line.rstrip('.')}: copy or export the model folder again") from None
    finally:
        hub_log.setLevel(level)
    backbone = Backbone(unet, text_encoder, tokenizer, vae, scheduler, source=path)
    backbone.guidance = read_guidance(Path(source)) if Path(source).is_dir() else None  # saved with the model (SLD)
    if backbone.guidance is not None:
        backbone.guidance.bind(backbone)
    return backbone
