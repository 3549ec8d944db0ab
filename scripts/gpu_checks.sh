#!/usr/bin/env bash
# The checks CI cannot run (it has no GPU): run on a CUDA machine after the README's install.
#   bash scripts/gpu_checks.sh            # ~5 minutes on one GPU; the DDP test needs two
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')"
python -m pytest -m gpu -q -p no:cacheprovider            # 16-mixed / bf16-mixed steps, NCCL DDP, GPU = CPU images
python benchmarks/generation.py --model tiny --device cuda --images 64 --batch 32
if [ -n "${SD14:-}" ]; then                                 # a local SD v1.4 diffusers folder: generation speed at SD scale
  python benchmarks/generation.py --model "$SD14" --device cuda --dtype float16 --images 32 --batch 16
fi
