"""Optimizers and learning-rate schedules from config, with one rule for which setting wins.

A module takes ``optimizer`` (LightningCLI's ``OptimizerCallable``: ``class_path`` + ``init_args``
in YAML) and ``lr_scheduler`` (``LRSchedulerCallable``). The rule: an ``optimizer`` config is
complete (its class and init_args, the class's own defaults filling the rest); without one, the
module's official optimizer is built from its shortcut keys (``lr``, ``weight_decay``), each unset
key taking the official value. Setting both an ``optimizer`` and a shortcut key is refused: a
learning rate is written in one place. A configured schedule is stepped every optimizer step."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from igmu_lightning.errors import IGMUError

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
# diffusers' get_scheduler names (the warmup / decay family); "constant" holds the lr after warmup.
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine",
             "cosine_with_restarts": "cosine_with_restarts", "polynomial": "polynomial"}  # fmt: skip


def optimizer_factory(official: type[torch.optim.Optimizer], defaults: dict, optimizer: OptimizerFactory | None,
                      shortcuts: dict[str, Any], owner: str) -> OptimizerFactory:  # fmt: skip
    """params -> optimizer, by the module docstring's rule: ``optimizer`` when given (then every
    shortcut must be None), else ``official`` with ``defaults`` updated by the set shortcuts."""
    given = {key: value for key, value in shortcuts.items() if value is not None}
    if optimizer is None:
        return functools.partial(official, **{**defaults, **given})
    if given:
        keys = " and ".join(given)
        raise IGMUError(f"{owner} sets both optimizer ({describe(optimizer)}) and {keys}: set {keys} in the optimizer's "
                        f"init_args, or drop optimizer to use the official {official.__name__}")  # fmt: skip
    return optimizer


def built_class(factory: Callable) -> type | None:
    """The class a config callable builds: itself, or the class inside jsonargparse's partial."""
    parts = [factory, *getattr(factory, "args", ()), getattr(factory, "func", None)]
    return next((p for p in parts if isinstance(p, type)), None)


def describe(factory: Callable) -> str:
    return getattr(built_class(factory), "__name__", repr(factory))


def warmup_schedule(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int | None):
    """diffusers' ``get_scheduler(name)``: linear warmup from 0 over ``warmup_steps``, then ``name``'s
    shape (``constant`` holds the peak; the decays reach 0 at ``total_steps``)."""
    from diffusers.optimization import get_scheduler

    if name not in SCHEDULES:
        raise IGMUError(f"unknown lr_schedule '{name}': choose one of {', '.join(SCHEDULES)}")
    if name != "constant" and not total_steps:
        raise IGMUError(f"lr_schedule {name} decays to 0 at trainer.max_steps: set trainer.max_steps, "
                        "or use lr_schedule constant")  # fmt: skip
    return get_scheduler(SCHEDULES[name], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def lightning_optimization(optimizer: torch.optim.Optimizer, scheduler) -> torch.optim.Optimizer | dict:
    """What ``configure_optimizers`` returns: the optimizer, with its schedule stepped per step."""
    if scheduler is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def callable_config(factory: Callable) -> dict | str:
    """A config callable as plain ``{"class_path", "init_args"}`` data, as in YAML (checkpoints hold
    it instead of a pickled partial, so they load with ``weights_only=True``)."""
    cls = built_class(factory)
    if cls is None:
        return repr(factory)
    init_args = dict(getattr(factory, "keywords", None) or {})
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
