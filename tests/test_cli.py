import json
import signal
import time
from pathlib import Path

import pytest
import wandb
import yaml

from igmu_lightning.cli import IGMUCLI
from tests.conftest import ROOT, run_script, start_script

CONFIG = "configs/finetune/sd14_captioned_folder.yaml"
TINY = str(ROOT / "configs/backbone/tiny.yaml")


def test_help_lists_the_four_subcommands():
    result = run_script("train.py", "--help")
    assert result.returncode == 0
    for sub in ("fit", "validate", "test", "predict"):
        assert f"    {sub}" in result.stdout


def test_print_config_resolves_a_shipped_config():
    result = run_script("train.py", "fit", "--config", CONFIG, "--print_config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    backbone = config["model"]["init_args"]["backbone"]
    assert backbone["class_path"] == "igmu_lightning.backbone.Pretrained"  # the composed file was inlined
    assert backbone["init_args"]["path"] == "CompVis/stable-diffusion-v1-4"
    assert config["trainer"]["logger"]["class_path"] == "igmu_lightning.loggers.WandbLogger"
    assert config["seed_everything"] == 0


def test_config_typo_exits_non_zero_naming_the_key():
    result = run_script("train.py", "fit", "--config", CONFIG, "--model.init_args.learning_rate", "1")
    assert result.returncode != 0 and "learning_rate" in result.stderr


def test_fit_logs_to_offline_wandb_and_records_the_run(tiny_spec, captioned_folder, tmp_path):
    logs = tmp_path / "logs"
    cli = IGMUCLI(
        args=[
            "fit", "--config", CONFIG, "--model.init_args.backbone", TINY,
            "--data.init_args.root", str(captioned_folder), "--data.init_args.image_size", "16",
            "--data.init_args.batch_size", "4", "--trainer.max_steps", "2", "--trainer.precision", "32-true",
            "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(logs),
            "--model.init_args.export_dir", str(tmp_path / "export"), "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    try:
        run = cli.trainer.logger.experiment
        assert run.settings.mode in ("offline", "dryrun")  # wandb names offline mode "dryrun" internally
        assert run.config["model"]["init_args"]["backbone"]["class_path"] == "igmu_lightning.backbone.TinySD"
        assert run.config["run"]["model_hashes"] == tiny_spec.build().hashes()
        run_dir = logs / "igmu-lightning" / run.id
    finally:
        wandb.finish()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 2 and saved["data"]["init_args"]["root"] == str(captioned_folder)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["seed"] == 0 and record["packages"]["torch"] and record["model_hashes"]["unet"]
    assert list((run_dir / "checkpoints").glob("*.ckpt"))  # checkpoints sit beside the config
    assert (tmp_path / "export" / "model_index.json").is_file()
    assert list((logs / "wandb").glob("offline-run-*"))


def test_runs_without_a_logger_never_share_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(ROOT / "configs/unlearn/world/uce_object.yaml"), "--model.init_args.backbone", TINY,
            "--model.init_args.export_dir", str(tmp_path / "out"), "--trainer.enable_progress_bar", "false"]  # fmt: skip
    IGMUCLI(args=args)
    time.sleep(1.1)  # folders are named by the second (and the process id)
    IGMUCLI(args=args)
    runs = sorted((tmp_path / "logs" / "offline").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert json.loads((run / "run.json").read_text())["model_hashes"]["unet"]
        assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["default_root_dir"] == f"logs/offline/{run.name}"


WORLD_ESD = str(ROOT / "configs/unlearn/world/esd_object.yaml")
# ESD-x on the tiny backbone, 24 steps of 2 prompts, a checkpoint every 4 steps: a few seconds.
RESUME_ARGS = [str(ROOT / "train.py"), "fit", "--config", WORLD_ESD, "--model.init_args.backbone", TINY, "--trainer.max_steps", "24",
               "--checkpoint_every", "4", "--data.init_args.batch_size", "2", "--model.init_args.ddim_steps", "4",
               "--trainer.enable_progress_bar", "false"]  # fmt: skip


def delta_bytes(export: Path) -> tuple[dict, dict]:
    """(metadata, {name: raw bytes}) of an export's ``igmu_delta.safetensors``."""
    from safetensors import safe_open

    with safe_open(str(export / "igmu_delta.safetensors"), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


@pytest.mark.timeout(600)
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """kill -9 after a step checkpoint, then ``--ckpt_path last``: the exported delta is byte for byte
    the uninterrupted run's, the W&B run id is the same, and the run record sums both parts' time."""
    import torch

    # Each process its own W&B service, as separate commands have (an in-process test may have
    # started one in pytest's: the killed run's id would stay registered there).
    monkeypatch.delenv("WANDB_SERVICE", raising=False)

    full = run_script(*RESUME_ARGS, "--model.init_args.export_dir", str(tmp_path / "full"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    runs = tmp_path / "logs" / "igmu-lightning"
    first = set(runs.iterdir())
    args = [*RESUME_ARGS, "--model.init_args.export_dir", str(tmp_path / "part")]
    proc = start_script(*args, cwd=tmp_path, log=tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while not [p for p in runs.glob("*/checkpoints/last.ckpt") if p.parents[1] not in first]:  # the first step checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = [r for r in runs.iterdir() if r not in first]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < state["global_step"] < 24 and not (tmp_path / "part").exists()  # killed mid-run

    resumed = run_script(*args, "--ckpt_path", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at logs/igmu-lightning/{run.name}/" in resumed.stderr + resumed.stdout
    assert "not resumable" not in resumed.stderr
    # The files are byte for byte the same (save_delta sorts the header safetensors writes in hash order).
    part, whole = (tmp_path / d / "igmu_delta.safetensors" for d in ("part", "full"))
    assert part.read_bytes() == whole.read_bytes(), delta_bytes(tmp_path / "part") == delta_bytes(tmp_path / "full")
    assert set(runs.iterdir()) == first | {run}  # the same run folder, no new one
    assert len(list((tmp_path / "logs" / "wandb").glob(f"offline-run-*-{run.name}"))) == 2  # one W&B id, two parts
    wall = json.loads((tmp_path / "part" / "igmu_run.json").read_text())["wall_time_s"]
    assert wall >= round(state["igmu"]["run"]["wall_time_s"], 1) + 0.1  # the first part's time is in it


def test_a_missing_ckpt_path_is_one_error_line(tmp_path):
    result = run_script("train.py", "fit", "--config", WORLD_ESD, "--ckpt_path", str(tmp_path / "none.ckpt"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --ckpt_path")
    assert "Traceback" not in result.stderr and "none.ckpt" in result.stderr


def test_ckpt_path_last_without_an_earlier_run_is_one_error_line(tmp_path):
    result = run_script(str(ROOT / "train.py"), "fit", "--config", WORLD_ESD, "--ckpt_path", "last", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --ckpt_path last: no run under 'logs/igmu-lightning'" in result.stderr


def test_step_checkpoints_of_a_manually_optimised_module_are_written_without_lightnings_warning(tmp_path):
    """AdvUnlearn optimises by hand: Lightning's ModelCheckpoint warns at every step checkpoint that
    the state is the one after the step (15 lines a time); RunCheckpoint writes it without that."""
    import warnings

    import torch
    from lightning.pytorch import LightningModule, Trainer

    from igmu_lightning.cli import RunCheckpoint

    class Manual(LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(self.layer(batch[0]).pow(2).mean())
            optimizer.step()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=1)

    checkpoint = RunCheckpoint(every_n_train_steps=2, dirpath=tmp_path)
    trainer = Trainer(max_steps=4, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Manual())
    assert not [w for w in caught if "manual optimization" in str(w.message)]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 4
