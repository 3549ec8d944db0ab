"""Test fixtures: tiny models only, no network, every W&B and cache folder under a temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def offline_sandbox(tmp_path_factory):
    """Point W&B, Hugging Face and our own caches at a temp folder and forbid hub access."""
    base = tmp_path_factory.mktemp("sandbox")
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(base / "wandb"),
        "WANDB_CACHE_DIR": str(base / "wandb_cache"),
        "WANDB_DATA_DIR": str(base / "wandb_data"),
        "WANDB_CONFIG_DIR": str(base / "wandb_config"),
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(base / "hf"),
        "IGMU_CACHE": str(base / "igmu"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key in ("WANDB_API_KEY",):
        os.environ.pop(key, None)
    os.environ.update(env)
    for value in env.values():
        if value.startswith(str(base)):
            Path(value).mkdir(parents=True, exist_ok=True)
    yield base


@pytest.fixture(scope="session")
def tiny_spec():
    from igmu_lightning.backbone import TinySD

    return TinySD(seed=0, image_size=16)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_spec) -> Path:
    """A tiny SD-shaped model saved with save_pretrained, as a user's model folder would be."""
    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    tiny_spec.build().save_pretrained(path)
    return path


@pytest.fixture
def captioned_folder(tmp_path) -> Path:
    """Eight random 20x20 images with captions in metadata.jsonl."""
    root = tmp_path / "captioned"
    root.mkdir()
    rows = []
    for i in range(8):
        pixels = np.random.RandomState(i).randint(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"a photo of thing {i}"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def run_script(*args: str, cwd: Path = ROOT, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the project's entry points as a user would, in a subprocess (``env``: extra variables)."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def start_script(*args: str, cwd: Path = ROOT, log: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start an entry point in the background (to kill it mid-run); output goes to ``log``."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (the child holds it)
    return subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})  # fmt: skip


def _gloo_worker(rank: int, world: int, port: int, fn, out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fn(rank, world)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def on_gloo_processes(fn, world: int, folder: Path):
    """Rank 0's ``fn(rank, world)`` from ``world`` spawned processes joined in one gloo group
    (``fn``: a module-level function; its result: tensors, numbers, lists and dicts)."""
    import socket

    import torch
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(folder) / "rank0.pt"
    mp.spawn(_gloo_worker, args=(world, port, fn, str(out)), nprocs=world, join=True)
    return torch.load(out, weights_only=True)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a run that stopped on bad input (exit code 2, no traceback)."""
    assert result.returncode == 2, f"exit code {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def run_scripts(jobs: dict[str, list[str]], workers: int = 2, **kw) -> dict[str, subprocess.CompletedProcess]:
    """Run several entry-point command lines at once (``workers`` at a time): name -> result."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(run_script, *args, **kw) for name, args in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes: compare before and after to see nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
