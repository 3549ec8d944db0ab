#!/usr/bin/env python
"""Train (or validate, test, predict with) any igmu-lightning module from a YAML config.

    python train.py fit --config configs/finetune/sd14_captioned_folder.yaml
    python train.py fit --config C --print_config
"""

from igmu_lightning.cli import main
from igmu_lightning.errors import run_main

if __name__ == "__main__":
    run_main(main)
