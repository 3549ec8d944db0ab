"""Adversarial attacks on unlearned models (UnlearnDiffAtk, P4D, Ring-A-Bell, concept inversion,
relearning, AdvUnlearn's soft prompt): the protocol in ``base``, one module per attack."""

from igmu_lightning.attacks.base import Attack, AttackContext, AttackResult, Judge
from igmu_lightning.attacks.soft_prompt import SoftPromptAttack
from igmu_lightning.attacks.unlearndiffatk import UnlearnDiffAtk

__all__ = ["Attack", "AttackContext", "AttackResult", "Judge", "SoftPromptAttack", "UnlearnDiffAtk"]
