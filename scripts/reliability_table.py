"""Print docs/reliability.md's table of bad-input cases from a run of tests/test_bad_input.py:

    IGMU_BAD_INPUT_LOG=/tmp/bad_input.json python -m pytest tests/test_bad_input.py
    python scripts/reliability_table.py /tmp/bad_input.json > table.md

Temp paths of the test run are shown as <tmp>; the messages are otherwise verbatim."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (entry point, what was wrong), in the order of the table
CASES = {
    "model_missing": ("evaluate", "model folder that does not exist"),
    "model_unreadable": ("evaluate", "model folder with an unreadable `unet/config.json`"),
    "model_corrupt": ("evaluate", "model folder with truncated UNet weights"),
    "model_wrong_architecture": ("evaluate", "diffusers folder of another architecture (DDPM, unconditional UNet)"),
    "model_path_is_a_file": ("evaluate", "model path that is a file"),
    "method_missing_fails_before_generating": ("evaluate", "world evaluation with a missing method folder (fails before the original model is scored)"),
    "delta_for_another_base": ("evaluate", "delta made from another base (fails before the original model is scored)"),
    "delta_truncated": ("evaluate", "truncated delta file"),
    "ckpt_of_another_algorithm": ("train", "`--ckpt_path` of an ESD run given to a Concept Ablation config"),
    "config_unknown_key": ("train", "config file with a misspelt key"),
    "config_wrong_type": ("train", "config file with a value of the wrong type"),
    "config_missing_required": ("train", "config file without a required value"),
    "config_unknown_trainer_key": ("train", "misspelt trainer key on the command line"),
    "config_missing_file": ("train", "`--config` file that does not exist"),
    "eval_config_unknown_key": ("evaluate", "misspelt evaluation key on the command line"),
    "eval_config_unknown_class": ("evaluate", "misspelt evaluation `class_path`"),
    "eval_config_wrong_type": ("evaluate", "evaluation config with a value of the wrong type"),
    "prompts_empty": ("evaluate", "empty prompt file"),
    "prompts_malformed": ("evaluate", "malformed JSON prompt file"),
    "prompts_wrong_task": ("evaluate", "prompt file of another task"),
    "prompts_missing": ("evaluate", "prompt file that does not exist"),
    "prompt_over_the_token_limit": ("train", "prompt longer than the tokenizer's 77 tokens (a warning; the run goes on)"),
    "images_not_igmu_layout": ("evaluate", "image folder not in IGMU's layout (no `forgot/`)"),
    "images_corrupt_png": ("evaluate", "image folder with a corrupt PNG"),
    "images_non_image_file": ("evaluate", "image folder with a non-image file"),
    "images_mismatched_sizes": ("evaluate", "method folder with images of two sizes"),
    "images_reference_missing": ("evaluate", "`reference` that is no method folder"),
    "detector_for_another_task": ("evaluate", "judge detector of another task (style detector for a triangle target)"),
    "world_detectors_not_a_set": ("evaluate", "one detector given as the world's detectors folder"),
    "results_under_a_file": ("evaluate", "`--results_path` under a regular file (a folder that cannot exist)"),
    "results_path_is_a_folder": ("evaluate", "`--results_path` that is a folder"),
    "concept_absent_from_forget_prompts": ("train", "FMN concept word absent from every forget prompt"),
    "nan_loss": ("train", "NaN loss (ESD on the tiny backbone, lr 1e30): stops at the step, keeps the last good checkpoint"),
    "eval_several_processes_for_a_one_process_evaluation": ("evaluate", "`--devices 2` for a one-process evaluation (Inventory)"),
    "eval_gpu_without_gpu": ("evaluate", "`--accelerator gpu` on a machine without a GPU"),
    "train_gpu_without_gpu": ("train", "`--trainer.accelerator gpu` on a machine without a GPU"),
}


def main(path: str) -> None:
    log = json.loads(Path(path).read_text())
    root = log["root"]
    print("| # | case | entry point | input | message |")
    print("|---|---|---|---|---|")
    for k, (name, (entry, what)) in enumerate(CASES.items(), 1):
        lines = log["lines"].get(name) or ["(missing)"]
        text = " ".join(lines).replace(root, "<tmp>").replace(f"{ROOT}/", "").replace("|", "\\|")
        text = re.sub(r"^\S+\.py:\d+: ", "warning: ", text)  # the warning's source location
        print(f"| {k} | `{name}` | {entry}.py | {what} | `{text}` |")


if __name__ == "__main__":
    main(sys.argv[1])
