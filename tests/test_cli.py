import json
import time

import wandb
import yaml

from igmu_lightning.cli import IGMUCLI
from tests.conftest import ROOT, run_script

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
    assert config["trainer"]["logger"]["class_path"] == "igmu_lightning.logging.WandbLogger"
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
