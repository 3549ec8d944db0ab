"""The base LightningModule every model of the project builds on: one shared backbone, a named
trainable subset, checkpoints that hold only the trained tensors, and export to diffusers."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from lightning.pytorch import LightningModule

from igmu_lightning.artifacts import RUN_RECORD
from igmu_lightning.backbone import Backbone, BackboneSpec
from igmu_lightning.backbone.delta import DELTA_FILE, save_delta
from igmu_lightning.errors import IGMUError
from igmu_lightning.modules.adapters import export_adapter_model
from igmu_lightning.modules.params import select_parameters
from igmu_lightning.utils.io import atomic_write_json
from igmu_lightning.utils.optim import callable_config, lightning_optimization, optimizer_factory


class BackboneModule(LightningModule):
    """Holds ``self.backbone`` (frozen) and unfreezes the parameters named by ``trainable``.

    Checkpoints keep only the trainable tensors (the frozen rest comes from the base model when the
    module is built again), so an SD run's checkpoint is megabytes, not gigabytes, and still resumes.

    Args:
        backbone: which diffusion model to load or build.
        trainable: preset names or regexes of the parameters to train (see ``modules.params``).
        export_dir: when set, the model is saved there as a diffusers folder at the end of fit.
        optimizer: replaces ``OPTIMIZER`` (then ``optimizer_settings`` must all be None: see
            ``utils.optim`` for the rule).
        lr_scheduler: a schedule stepped every optimizer step (default: ``default_lr_scheduler``).
        optimizer_settings: the subclass's shortcut keys (``lr``, ``weight_decay``; None: official).
    """

    # The official optimizer (docs/parity.md) and its official settings, used without ``optimizer``.
    OPTIMIZER: type[torch.optim.Optimizer] = torch.optim.AdamW
    OPTIMIZER_DEFAULTS: dict = {}

    def __init__(self, backbone: BackboneSpec, trainable: list[str] | None = None, export_dir: str | None = None,
                 optimizer=None, lr_scheduler=None, optimizer_settings: dict | None = None):  # fmt: skip
        super().__init__()
        self.optimizer_factory = optimizer_factory(self.OPTIMIZER, self.OPTIMIZER_DEFAULTS, optimizer,
                                                   optimizer_settings or {}, type(self).__name__)  # fmt: skip
        self.lr_scheduler_factory = lr_scheduler
        backbone = BackboneSpec.from_config(backbone)  # a dict when rebuilt by load_from_checkpoint
        self.backbone_spec = backbone
        self.backbone: Backbone = backbone.build()
        self.attach_adapters(self.backbone)  # before the selection: presets may name adapter tensors
        self.export_dir = export_dir
        self.strict_loading = False  # checkpoints hold the trainable tensors only
        self.trainable_names: list[str] = []
        if trainable:
            params = select_parameters(self.backbone, trainable)
            for p in params.values():
                p.requires_grad_(True)
            self.trainable_names = [f"backbone.{name}" for name in params]
        self._base_hashes: dict[str, str] | None = None
        self._wall_before = 0.0  # seconds the earlier parts of a resumed run trained
        self._pending_resume: dict | None = None

    def attach_adapters(self, backbone: Backbone) -> None:
        """Where an adapter method attaches its adapters, with ``backbone.attach(spec)`` (see
        ``modules.adapters``): called once the backbone is built, before ``trainable`` is selected,
        also when a checkpoint is loaded again. Default: none."""

    def base_hashes(self) -> dict[str, str]:
        """Hashes of the backbone as loaded, before any training or adapter (cached: hashing SD
        takes seconds)."""
        if self._base_hashes is None:
            self._base_hashes = self.backbone.base_hashes()
        return self._base_hashes

    def setup(self, stage: str) -> None:
        self.base_hashes()  # record the base model before the first step changes it

    def noised(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, eps) for images in [0, 1]: x_t = q(x_0, t, eps), t ~ U{0..T-1}. Random draws,
        in order: the VAE posterior sample, eps, t."""
        bb = self.backbone
        with torch.no_grad():
            latents = bb.encode_images(images)
        noise = torch.randn_like(latents)
        t = torch.randint(0, bb.noise_scheduler.config.num_train_timesteps, (len(latents),), device=latents.device)
        return bb.noise_scheduler.add_noise(latents, noise, t), t, noise

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        return self.optimization(self.trainable_parameters())

    def optimization(self, params):
        """The configured (or official) optimizer over ``params`` (tensors or groups) and its schedule."""
        optimizer = self.optimizer_factory(params)
        factory = self.lr_scheduler_factory
        return lightning_optimization(optimizer, factory(optimizer) if factory else self.default_lr_scheduler(optimizer))

    def default_lr_scheduler(self, optimizer: torch.optim.Optimizer):
        """The schedule without an ``lr_scheduler`` config: None (a constant lr) unless a subclass's keys make one."""
        return None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = set(self.trainable_names)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        hparams = checkpoint.get("hyper_parameters", {})
        for key, value in hparams.items():  # plain data only: loadable with weights_only=True
            if isinstance(value, BackboneSpec):
                hparams[key] = value.to_config()
            elif key in ("optimizer", "lr_scheduler") and callable(value):
                hparams[key] = callable_config(value)
        cost = self.efficiency_record()  # the peak memory so far: EvalIGMU's efficiency of a checkpoint
        run = {"wall_time_s": self.wall_time(), "peak_memory_mb": cost["peak_memory_mb"],
               "peak_memory_kind": cost["peak_memory_kind"], "logger_version": self._logger_version()}  # fmt: skip
        cls = type(self)
        checkpoint["igmu"] = {
            "module": f"{cls.__module__}.{cls.__qualname__}",  # --ckpt_path refuses a config of another module
            "base": self.backbone_spec.describe(), "base_hashes": self.base_hashes(), "run": run,
            "resume": self.resume_state(),
        }  # fmt: skip
        if self.backbone.adapters:  # FromCheckpoint attaches them again before loading the tensors
            checkpoint["igmu"]["adapters"] = [a.to_config() for a in self.backbone.adapters]

    def _logger_version(self) -> str | None:
        """The run id (W&B) a resumed run continues; None without a logger."""
        logger = self._trainer.logger if self._trainer is not None else None
        version = getattr(logger, "version", None)
        return version if isinstance(version, str) else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        igmu = checkpoint.get("igmu", {})
        self._wall_before = float(igmu.get("run", {}).get("wall_time_s", 0.0))
        self._pending_resume = igmu.get("resume")

    def resume_state(self) -> dict:
        """What an algorithm needs beyond its tensors, optimizer and the global RNG to continue a run
        exactly (its own generators, caches); plain data. Put back by ``load_resume_state``."""
        return {}

    def load_resume_state(self, state: dict) -> None:
        """Put back ``resume_state``; called before the first batch after a resume (after
        ``on_fit_start``, which may have built the objects it restores)."""

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._pending_resume is not None:
            state, self._pending_resume = self._pending_resume, None
            self.load_resume_state(state)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stop at the first non-finite loss, before it reaches the weights: no checkpoint or export
        is written after it, so the last good ``last.ckpt`` stays as it was."""
        if torch.isfinite(loss.detach()).all():
            return
        trainer = self.trainer
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        saved = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        kept = f"the last good checkpoint is '{saved}'" if saved and Path(saved).is_file() else "no checkpoint was written before it"
        raise IGMUError(f"the loss is {loss.detach().float().mean().item()} at step {trainer.global_step + 1}: lower the learning rate "
                        f"(now {lr if lr is None else format(lr, 'g')}) or add trainer.gradient_clip_val; {kept}")  # fmt: skip

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def wall_time(self) -> float:
        """Seconds of training so far, every part of a resumed run summed (an interrupted part counts
        up to its last checkpoint: the steps after it were trained again)."""
        return self._wall_before + time.perf_counter() - getattr(self, "_fit_started", time.perf_counter())

    def efficiency_record(self) -> dict:
        """Wall time (all parts of a resumed run) and peak memory (of this process) of this fit, and
        what was trained: EvalIGMU's efficiency."""
        wall = self.wall_time()
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
        else:  # the whole process's peak resident memory (Linux reports KiB)
            peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
        return {
            "wall_time_s": round(wall, 1),
            "peak_memory_mb": round(peak, 1),
            "peak_memory_kind": kind,
            "trained_tensors": len(self.trainable_names),
            "base": self.backbone_spec.describe(),
            "base_hashes": self.base_hashes(),
        }

    def delta_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors this run may have changed, by backbone name (``unet.…``): the delta. Every
        adapter tensor is in it, trained or not: a delta rebuilds the adapters from it alone."""
        params = dict(self.backbone.named_parameters())
        tensors = {name: params[name] for name in (n.removeprefix("backbone.") for n in self.trainable_names)}
        if self.backbone.adapters:
            state = self.backbone.state_dict(keep_vars=True)
            tensors.update({name: state[name] for name in self.backbone.adapter_tensor_names if name not in tensors})
        return tensors

    def on_train_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.export_model(Path(self.export_dir))

    def save_model_folder(self, path: Path) -> Path:
        """The diffusers folder of ``export_model``: adapters merged into the weights (and their LoRA
        folders), or the plain model; a method whose model is more than weights (SPM's gate) overrides it."""
        if self.backbone.adapters:
            return export_adapter_model(self.backbone, path)
        return self.backbone.save_pretrained(path)

    def export_model(self, path: Path) -> Path:
        """Write the model to ``path``: a diffusers folder (adapters merged into the weights), the
        delta, a diffusers LoRA folder per LoRA adapter, and the run record."""
        path = self.save_model_folder(path)
        delta = self.delta_tensors()
        if delta:  # the same model as a few-MB file that applies onto its base (WithDelta)
            save_delta(path / DELTA_FILE, delta, self.base_hashes(), self.backbone_spec, self.backbone.adapters)
        atomic_write_json(path / RUN_RECORD, self.efficiency_record())
        print(f"exported the trained model to {path}" + (f" (delta: {len(delta)} tensors in {DELTA_FILE})" if delta else ""))
        return path
