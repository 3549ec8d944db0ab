"""Adapter kinds an algorithm attaches in ``attach_adapters`` (LoRA through peft, plain modules such as
an eraser block), and the export of an adapter model: merged weights, and diffusers LoRA folders.

Every kind is an ``AdapterSpec`` named by class path in deltas and checkpoints, so only this
project's classes are ever rebuilt from a file (``backbone.loader.project_class``)."""

from __future__ import annotations

import re
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from igmu_lightning.backbone import Backbone
from igmu_lightning.backbone.adapters import AdapterSpec
from igmu_lightning.backbone.loader import project_class
from igmu_lightning.errors import IGMUError

LORA_DIR = "lora"  # export_dir/lora/<adapter name>/: a folder StableDiffusionPipeline.load_lora_weights reads


# --- LoRA (peft) -------------------------------------------------------------------------------
class LoRA(AdapterSpec):
    """Low-rank adapters W + (alpha / rank) B A on the Linear / Conv layers whose names (within the
    component) fully match ``targets``; B starts at zero, so the model starts as its base.

    Args:
        targets: a regex over module names, e.g. ``.*attn2\\.(to_k|to_v)`` (ESD-x-like: attn2 only).
        rank: r. alpha: lora_alpha (default: rank, a scale of 1).
        component: ``unet`` (diffusers' ``add_adapter``) or ``text_encoder`` (peft's
            ``inject_adapter_in_model``: transformers' own ``add_adapter`` wants a newer peft).
        name: the adapter's name (several LoRAs on one model need different names).
        init: peft's ``init_lora_weights``: True (A as nn.Linear's default, kaiming uniform) or
            ``gaussian`` (A ~ N(0, 1/rank^2), diffusers' ``LoRALinearLayer``); B starts at zero either way.
    """

    mergeable = True

    def __init__(
        self,
        targets: str = r".*\.attn2\.(to_q|to_k|to_v|to_out\.0)",
        rank: int = 4,
        alpha: float | None = None,
        component: str = "unet",
        name: str = "igmu",
        init: bool | str = True,
    ) -> None:
        if init not in (True, "gaussian"):
            raise IGMUError(f"LoRA init '{init}' is not true (kaiming uniform) or gaussian")
        if component not in ("unet", "text_encoder"):
            raise IGMUError(f"LoRA component '{component}' is not unet or text_encoder")
        if rank < 1:
            raise IGMUError(f"LoRA rank must be >= 1, got {rank}")
        self.targets, self.rank, self.alpha, self.component, self.name = targets, rank, alpha, component, name
        if init is not True:  # kept out of the config at the default: earlier deltas and checkpoints read the same
            self.init = init

    def lora_config(self):
        from peft import LoraConfig

        init = getattr(self, "init", True)
        return LoraConfig(r=self.rank, lora_alpha=self.alpha or self.rank, target_modules=self.targets, init_lora_weights=init)

    def attach(self, backbone: Backbone) -> None:
        from peft import inject_adapter_in_model

        module = getattr(backbone, self.component)
        if self.name in getattr(module, "peft_config", {}):
            raise IGMUError(f"the {self.component} already has an adapter named '{self.name}': give each LoRA its own name")
        try:
            if self.component == "unet":
                module.add_adapter(self.lora_config(), adapter_name=self.name)
            else:
                inject_adapter_in_model(self.lora_config(), module, adapter_name=self.name)
        except ValueError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise IGMUError(f"LoRA targets '{self.targets}' on the {self.component}: {first} (fix the regex)") from None
        for layer in tuner_layers(module):  # every LoRA of the component acts, not only the last one added
            layer.set_adapter(sorted(layer.lora_A.keys()))

    def set_enabled(self, backbone: Backbone, enabled: bool) -> None:
        for layer in tuner_layers(getattr(backbone, self.component)):
            layer.enable_adapters(enabled)

    def detach(self, backbone: Backbone) -> None:
        """Remove this LoRA: a layer left without adapters becomes its plain base layer again."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        module = getattr(backbone, self.component)
        for name, layer in list(module.named_modules()):
            if not isinstance(layer, BaseTunerLayer) or self.name not in layer.lora_A:
                continue
            if set(layer.lora_A.keys()) == {self.name}:
                parent, _, child = name.rpartition(".")
                setattr(module.get_submodule(parent), child, layer.get_base_layer())
            else:
                layer.delete_adapter(self.name)
        config = getattr(module, "peft_config", {})
        config.pop(self.name, None)
        if hasattr(module, "peft_config") and not config:
            del module.peft_config
            if hasattr(module, "_hf_peft_config_loaded"):
                module._hf_peft_config_loaded = False


def tuner_layers(module: nn.Module) -> list[nn.Module]:
    """peft's LoRA layers inside ``module``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


# --- plain-module adapters ---------------------------------------------------------------------
class AdapterModule(nn.Module):
    """Base of a plain adapter: ``forward(inputs, output)`` returns the target module's new output.
    ``enabled = False`` passes the output through (the teacher)."""

    enabled = True

    def forward(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def output_features(target: nn.Module) -> int:
    """Width of a target's output: a Linear's ``out_features``, an attention block's output layer's."""
    if isinstance(target, nn.Linear):
        return target.out_features
    linears = [m for m in target.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise IGMUError(f"cannot tell the output width of a {type(target).__name__}: target a Linear or an attention block")
    return linears[-1].out_features


class Eraser(AdapterModule):
    """A residual bottleneck on the target's output, output + up(GELU(down(output))), with ``up`` at
    zero so the model starts as its base (the shape of Receler's concept erasers)."""

    def __init__(self, target: nn.Module, rank: int = 8) -> None:
        super().__init__()
        features = output_features(target)
        self.down, self.up = nn.Linear(features, rank), nn.Linear(rank, features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return output + self.up(F.gelu(self.down(output)))


def _run_adapter(attribute: str, target: nn.Module, args: tuple, kwargs: dict, output):
    adapter = getattr(target, attribute)
    if not adapter.enabled:
        return output
    inputs = args[0] if args else next(iter(kwargs.values()), None)
    return adapter(inputs, output)


class ModuleAdapter(AdapterSpec):
    """Attach an ``AdapterModule`` of this project to every module whose name fully matches
    ``targets``: it becomes the target's child ``igmu_<name>`` (so its tensors are saved and trained
    with the model) and a forward hook hands it the target's input and output.

    Args:
        module: class path of the ``AdapterModule`` (built as ``cls(target, **init_args)``).
        targets: a regex over module names of the component, e.g. ``.*\\.attn2``.
        component: unet or text_encoder. name: its attribute name on each target.
        init_args: keyword arguments of the module (e.g. ``{"rank": 8}``).
    """

    def __init__(self, module: str, targets: str, component: str = "unet", name: str = "adapter", init_args: dict | None = None) -> None:
        if not name.isidentifier():
            raise IGMUError(f"adapter name '{name}' is not a Python identifier: use letters, digits and _")
        self.module, self.targets, self.component, self.name = module, targets, component, name
        self.init_args = dict(init_args or {})

    @property
    def attribute(self) -> str:
        return f"igmu_{self.name}"

    def attach(self, backbone: Backbone) -> None:
        cls = project_class(self.module, "adapter module", AdapterModule)
        root = getattr(backbone, self.component)
        try:
            pattern = re.compile(self.targets)
        except re.error as err:
            raise IGMUError(f"adapter targets '{self.targets}' is not a valid regular expression: {err}") from None
        targets = [m for n, m in root.named_modules() if n and pattern.fullmatch(n)]
        for target in targets:
            if hasattr(target, self.attribute):
                raise IGMUError(f"a {type(target).__name__} already has an adapter '{self.name}': give each adapter its own name")
            weight = next(target.parameters(), None)
            adapter = cls(target, **self.init_args)
            if weight is not None:
                adapter.to(weight.device, weight.dtype)
            target.add_module(self.attribute, adapter)
            target.register_forward_hook(partial(_run_adapter, self.attribute), with_kwargs=True)

    def set_enabled(self, backbone: Backbone, enabled: bool) -> None:
        for module in getattr(backbone, self.component).modules():
            adapter = getattr(module, self.attribute, None)
            if isinstance(adapter, AdapterModule):
                adapter.enabled = enabled


# --- export ------------------------------------------------------------------------------------
def merged_state(module: nn.Module, adapter_names: set[str]) -> dict[str, torch.Tensor]:
    """The state dict ``module`` would have as a plain model with its LoRAs folded into the weights
    (W + sum of the active adapters' delta weights); ``adapter_names``: its adapter tensors."""
    merged = {}
    for name, layer in module.named_modules():
        if hasattr(layer, "get_delta_weight") and not layer.merged and not layer.disable_adapters:
            weight = layer.get_base_layer().weight
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
            merged[f"{name}.weight"] = (weight + delta).detach().to(weight.dtype)
    state = {}
    for key, value in module.state_dict().items():
        if key in adapter_names:
            continue
        plain = key.replace(".base_layer.", ".")
        state[plain] = merged.get(plain, value)
    return state


def plain_copy(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A fresh model of ``module``'s class and config holding ``state`` (built on the meta device, so
    no second random initialisation; non-persistent buffers are taken from ``module``)."""
    with torch.device("meta"):
        plain = type(module).from_config(module.config) if hasattr(type(module), "from_config") else type(module)(module.config)
    plain.load_state_dict(state, strict=True, assign=True)
    buffers = dict(module.named_buffers())
    for name, buffer in list(plain.named_buffers()):
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(leaf, buffers[name].clone(), persistent=False)
    plain.requires_grad_(False)
    return plain.train(module.training)


def merged_backbone(backbone: Backbone) -> Backbone:
    """The adapter model as a plain ``Backbone`` (LoRAs merged; unchanged tensors shared, not copied).
    Raises for an adapter whose effect does not fold into weights (a plain module)."""
    for adapter in backbone.adapters:
        if not adapter.mergeable:
            raise IGMUError(f"adapter {adapter.describe()} does not merge into plain weights: load its delta with WithDelta")
    parts = {}
    for component in ("unet", "text_encoder"):
        module = getattr(backbone, component)
        if any(a.component == component for a in backbone.adapters):
            names = {n.removeprefix(f"{component}.") for n in backbone.adapter_tensor_names if n.startswith(f"{component}.")}
            module = plain_copy(module, merged_state(module, names))
        parts[component] = module
    plain = Backbone(parts["unet"], parts["text_encoder"], backbone.tokenizer, backbone.vae, backbone.scheduler, backbone.source)
    plain.guidance = backbone.guidance
    return plain


def save_lora_folders(backbone: Backbone, folder: Path) -> list[Path]:
    """One folder per LoRA name under ``folder/lora/`` (UNet and text-encoder layers together) that
    ``StableDiffusionPipeline.load_lora_weights`` reads; the config goes in as diffusers' metadata,
    so alpha != rank loads with the right scale."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    written = []
    for name in dict.fromkeys(a.name for a in backbone.adapters if isinstance(a, LoRA)):
        kwargs = {}
        for spec in (a for a in backbone.adapters if isinstance(a, LoRA) and a.name == name):
            module = getattr(backbone, spec.component)
            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(module, adapter_name=name))
            kwargs[f"{spec.component}_lora_layers"] = {k: v.detach().cpu().contiguous() for k, v in layers.items()}
            kwargs[f"{spec.component}_lora_adapter_metadata"] = spec.lora_config().to_dict()
        out = folder / LORA_DIR / name
        StableDiffusionPipeline.save_lora_weights(out, safe_serialization=True, **kwargs)
        written.append(out)
    return written


def export_adapter_model(backbone: Backbone, path: Path) -> Path:
    """The diffusers folder of an adapter model (adapters merged) plus its LoRA folders; with an
    adapter that does not merge, only the folder (the delta written next is the model then)."""
    if all(a.mergeable for a in backbone.adapters):
        path = merged_backbone(backbone).save_pretrained(path)
    else:
        path.mkdir(parents=True, exist_ok=True)
        if (path / "model_index.json").exists():
            warnings.warn(f"'{path}' still holds an earlier diffusers model: this run's model is its delta only", stacklevel=2)
    save_lora_folders(backbone, path)
    return path
