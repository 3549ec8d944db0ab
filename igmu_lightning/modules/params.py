"""Choosing trainable parameters by name: presets for the sets the algorithm papers use, or any
regular expression over names such as ``unet.down_blocks.0.attentions.0...attn2.to_k.weight``."""

from __future__ import annotations

import re

from torch import nn

from igmu_lightning.errors import IGMUError

# ESD's names: "xattn" = every cross-attention (attn2) tensor, "noxattn" = the rest of the UNet.
# The official ESD-u sets differ from "noxattn": the paper-era code also leaves out the time
# embedding and the output layers (compvis ``time_embed*``, ``out.*``: diffusers' time_embedding,
# conv_norm_out, conv_out); the 2025 code trains Linear and Conv layers outside attn2 only (no norms).
PRESETS: dict[str, tuple[str, str | None]] = {
    "unet": (r"^unet\.", None),
    "xattn": (r"^unet\..*\.attn2\.", None),
    "xattn_kv": (r"^unet\..*\.attn2\.to_[kv]\.", None),
    "noxattn": (r"^unet\.", r"\.attn2\."),
    "noxattn_compvis": (r"^unet\.", r"\.attn2\.|^unet\.(time_embedding|conv_norm_out|conv_out)\."),
    "noxattn_2025": (r"^unet\.", r"\.attn2\."),  # and Linear / Conv layers only: LAYER_PRESETS
    "selfattn": (r"^unet\..*\.attn1\.", None),
    "attn": (r"^unet\..*\.attn[12]\.to_(q|k|v|out)\.", None),  # CA's nudity set: q/k/v/out of all attention
    "text_encoder": (r"^text_encoder\.", None),
    "embedding": (r"^text_encoder\..*token_embedding\.", None),  # CA's "embedding" group: the token embeddings
    "text_encoder_layers": (r"^text_encoder\.(text_model\.)?(encoder|final_layer_norm)\.", None),
    "lora": (r"\.lora_(A|B)\.", None),  # every LoRA matrix of the attached LoRA adapters (modules.adapters)
}

# Every tensor the attached adapters added, of any kind (LoRA, plain modules): Backbone.adapter_tensor_names.
ADAPTERS = "adapters"


# Presets that keep only parameters of these layer types (their weight and bias).
LAYER_PRESETS: dict[str, tuple[type[nn.Module], ...]] = {"noxattn_2025": (nn.Linear, nn.Conv2d)}


def layer_parameter_names(model: nn.Module, types: tuple[type[nn.Module], ...]) -> set[str]:
    return {f"{m}.{p}" if m else p for m, module in model.named_modules() if isinstance(module, types)
            for p, _ in module.named_parameters(recurse=False)}  # fmt: skip


def select_parameters(model: nn.Module, selection: list[str]) -> dict[str, nn.Parameter]:
    """Named parameters matching any of ``selection`` (preset names or regexes), in model order.
    Raises when a pattern selects nothing: a typo must not silently train nothing."""
    named = dict(model.named_parameters())
    chosen: dict[str, nn.Parameter] = {}
    for item in selection:
        if item == ADAPTERS:
            names = set(getattr(model, "adapter_tensor_names", ()))
            hits = [n for n in named if n in names]
            if not hits:
                raise IGMUError("trainable preset 'adapters' matches no parameter: attach adapters in attach_adapters first")
            chosen.update({n: named[n] for n in hits})
            continue
        include, exclude = PRESETS.get(item, (item, None))
        try:
            inc, exc = re.compile(include), re.compile(exclude) if exclude else None
        except re.error as err:
            raise IGMUError(f"trainable pattern '{item}' is not a valid regular expression: {err}") from None
        hits = [n for n in named if inc.search(n) and not (exc and exc.search(n))]
        if item in LAYER_PRESETS:
            layers = layer_parameter_names(model, LAYER_PRESETS[item])
            hits = [n for n in hits if n in layers]
        if not hits:
            raise IGMUError(
                f"trainable pattern '{item}' matches no parameter: use a preset ({', '.join([*PRESETS, ADAPTERS])}) "
                "or a regex over names like 'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight'"
            )
        chosen.update({n: named[n] for n in hits})
    return {n: p for n, p in named.items() if n in chosen}
