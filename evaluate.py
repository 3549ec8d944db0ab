#!/usr/bin/env python
"""Evaluate models or folders of generated images with EvalIGMU and write a results JSON.

    python evaluate.py --config configs/eval/inventory.yaml [--results_path results/x.json]
"""

from igmu_lightning.errors import run_main
from igmu_lightning.evaluate_cli import main

if __name__ == "__main__":
    run_main(main)
