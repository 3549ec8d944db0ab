"""Unlearning algorithms as LightningModules on the shared backbone, and the data module that makes
Concept Ablation's anchor images with the model being trained (``AnchorData``)."""

from igmu_lightning.algorithms.advunlearn import AdvUnlearn
from igmu_lightning.algorithms.anchors import AnchorData
from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.algorithms.concept_ablation import ConceptAblation
from igmu_lightning.algorithms.esd import ESD
from igmu_lightning.algorithms.fmn import FMN
from igmu_lightning.algorithms.mace import MACE
from igmu_lightning.algorithms.rece import RECE
from igmu_lightning.algorithms.receler import ErasersGuidance, Receler
from igmu_lightning.algorithms.safree import SAFREE
from igmu_lightning.algorithms.salun import SalUn
from igmu_lightning.algorithms.sld import SLD, SafeLatentDiffusion
from igmu_lightning.algorithms.spm import SPM, SPMGate
from igmu_lightning.algorithms.uce import UCE

__all__ = [
    "AdvUnlearn", "ESD", "FMN", "MACE", "RECE", "Receler", "ErasersGuidance", "SAFREE", "SLD", "SPM", "SPMGate", "UCE", "ConceptAblation", "SafeLatentDiffusion", "SalUn", "UnlearningModule", "AnchorData",
]
