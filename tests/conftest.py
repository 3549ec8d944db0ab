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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped on a machine without CUDA (CI has none: docs/gpu-checks.md)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (docs/gpu-checks.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


# --- helpers shared by several test modules -------------------------------------------------
def build_tiny_clip(path):
    """A random CLIP model with SD's tokenizer, saved as a hub model folder would be."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from igmu_lightning.backbone.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": 49407},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(path)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=clip_tokenizer(),
    )
    processor.save_pretrained(path)
    return path


SHAPE = str(ROOT / "checkpoints/world/detectors/shape")
# The world eval configs list an attack probe (UnlearnDiffAtk): one process only, and it reports wall
# time, which differs run to run. Tests of several processes or of identical bytes keep the synonym probe.
SYNONYM_ONLY = ("--evaluation.init_args.probes", '[{"class_path": "igmu_lightning.evaluation.probes.SynonymProbe"}]')


def draw(path, shape, seed):
    """A world scene of ``shape`` (red, plain background) saved as a 32 px PNG at ``path``."""
    from igmu_lightning.world.concepts import Scene
    from igmu_lightning.world.render import render

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(Scene(shape, "red", "plain"), 32, np.random.default_rng(seed))).save(path)


WORLD_DATA = {"n_forget": 4, "n_retain": 4, "image_size": 16, "batch_size": 2, "steps_per_epoch": 4}


def build_algorithm(name: str, spec, tmp_path):
    """(module, data, the parameter names it may change) for one algorithm on the tiny backbone."""
    from dataclasses import replace

    from igmu_lightning.algorithms import ESD, FMN, AnchorData, ConceptAblation, SalUn
    from igmu_lightning.data import PromptData, WorldForgetRetain

    if name == "esd":
        module = ESD(spec, lr=1e-2, ddim_steps=2)
        return module, PromptData(["a cat"], batch_size=2, steps_per_epoch=4), "xattn"
    if name == "ca":
        module = ConceptAblation(spec, target="triangle", anchor="square", prior_weight=1.0, lr=1e-2)
        data = AnchorData(["a red square"], images_per_prompt=2, generation_batch_size=2,
                          anchor_dir=str(tmp_path / "anchors"), batch_size=2, steps_per_epoch=4)  # fmt: skip
        data.sampling = replace(data.sampling, steps=2)  # quick anchors
        return module, data, "xattn_kv"
    if name == "fmn":
        return FMN(spec, concept="triangle", trainable="xattn", lr=1e-2), WorldForgetRetain("object", **WORLD_DATA), "xattn"
    module = SalUn(spec, pseudo_words={"triangle": "square"}, lr=1e-2, mask_batches=1)
    return module, WorldForgetRetain("object", **WORLD_DATA), "unet"


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


def resolved_config(path: Path | str, *args: str) -> dict:
    """A train.py config as the CLI resolves it (included fragments inlined, defaults filled in), as
    plain data; parsed only: nothing is built, so SD configs resolve without SD weights."""
    from igmu_lightning.cli import IGMUCLI

    class ParseOnly(IGMUCLI):
        def before_instantiate_classes(self) -> None:
            ParseOnly.config_seen = self.config.as_dict()
            raise StopIteration

    try:
        ParseOnly(args=["--config", str(path), *args], run=False)
    except StopIteration:
        return ParseOnly.config_seen
    raise AssertionError("the CLI went past parsing")
