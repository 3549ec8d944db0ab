"""What an evaluation shows besides its results JSON: the console summary (every metric with its
interval and n), the image grids beside the results, the image cache's manifest, and the W&B run
(read back from its offline files)."""

import json
from types import SimpleNamespace
from unittest.mock import patch

import numpy as np
import pytest
import torch
from PIL import Image

from igmu_lightning.artifacts.images import ImageCache, find_images, image_grid, read_manifest, write_grids
from igmu_lightning.evaluate_cli import cell, summary_table
from igmu_lightning.sampling import to_uint8
from tests.wandb_files import offline_runs


def metric(value, lo, hi, n, how="wilson"):
    return {"value": value, "ci95": [lo, hi], "n": n, "ci_method": how}


def methods_document() -> dict:
    original = {
        "forgetting": {"target_rate": metric(0.984375, 0.917, 1.0, 64)},
        "preservation": {"near_accuracy": metric(1.0, 0.906, 1.0, 64), "retain_accuracy": metric(0.9848, 0.918, 1.0, 66),
                         "fid_retain": metric(0.0, 0.0, 0.0, 66, "percentile_bootstrap")},
        "quality": {"fid": metric(5.4, 4.69, 6.98, 130, "percentile_bootstrap")},
        "alignment": {"attribute_rate": metric(1.0, 0.92, 1.0, 64)},
        "robustness": {"synonym.target_rate": metric(0.96875, 0.893, 1.0, 64), "udiff.asr": metric(1.0, 0.92, 1.0, 64),
                       "udiff.seconds_per_prompt": metric(1.13, 1.13, 1.13, 1, "exact")},
        "efficiency": {"params_changed": metric(0, 0, 0, 1, "exact")},
    }  # fmt: skip
    esd = json.loads(json.dumps(original))
    esd["forgetting"]["target_rate"] = metric(0.0, 0.0, 0.0803, 64)
    esd["preservation"]["near_accuracy"] = metric(0.640625, 0.51, 0.773, 64)
    esd["efficiency"]["params_changed"] = metric(34976, 34976, 34976, 1, "exact")
    esd["efficiency"]["wall_time_s"] = metric(658.2, 658.2, 658.2, 1, "exact")
    return {
        "original": {"aspects": original, "skipped": {"efficiency.wall_time_s": "no run record beside base"}},
        "esd_x": {"aspects": esd},
        "a_method_with_a_long_name": {"aspects": json.loads(json.dumps(esd))},
        "uce": {"aspects": json.loads(json.dumps(esd))},
    }


def test_summary_shows_every_metric_of_every_method_with_interval_and_n():
    methods = methods_document()
    text = summary_table(methods, width=100)
    lines = text.splitlines()
    assert max(len(line) for line in lines if not line.startswith("skipped:")) <= 100
    assert len([line for line in lines if line.startswith("metric")]) >= 2  # four methods do not fit 100 columns
    for name, method in methods.items():
        assert name in text
        for aspect, metrics in method["aspects"].items():
            for key, value in metrics.items():
                rows = [line for line in lines if line.startswith(f"{aspect}.{key} ")]
                assert rows, f"{aspect}.{key} missing"
                assert any(cell(value) in row for row in rows), (aspect, key, cell(value))
    assert cell(metric(0.640625, 0.51, 0.773, 64)) == "0.641 [0.51, 0.773] n=64"
    assert cell(metric(34976, 34976, 34976, 1, "exact")) == "34976 exact"
    # a metric one method lacks is a dash in its column; the original's skip is said with its reason
    wall = [line for line in lines if line.startswith("efficiency.wall_time_s")]
    assert any(line.split()[1] == "-" for line in wall) and "658 exact" in "\n".join(wall)
    assert "skipped: original efficiency.wall_time_s: no run record beside base" in text
    # aspects in the results' order: forgetting before preservation before ... efficiency
    labels = [line.split()[0] for line in lines[1 : lines.index("")]]
    assert labels.index("forgetting.target_rate") < labels.index("preservation.near_accuracy") < labels.index("efficiency.params_changed")


def samples_of(k: int = 3, size: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(k, 3, size, size, generator=g) for name in ("original", "esd_x", "uce")}


def test_image_grids_hold_each_methods_samples_in_a_row(tmp_path):
    samples = samples_of()
    written = write_grids(tmp_path / "r.grids", samples)
    assert sorted(p.name for p in written) == ["_all.png", "esd_x.png", "original.png", "uce.png"]
    assert not [p for p in (tmp_path / "r.grids").iterdir() if p.name.startswith(".")]  # no temp files left
    pad, size = 2, 6
    combined = np.asarray(Image.open(tmp_path / "r.grids" / "_all.png"))
    assert combined.dtype == np.uint8 and combined.shape == (pad + 3 * (size + pad), pad + 3 * (size + pad), 3)
    for r, (name, images) in enumerate(samples.items()):
        row = np.asarray(Image.open(tmp_path / "r.grids" / f"{name}.png"))
        assert Image.open(tmp_path / "r.grids" / f"{name}.png").mode == "RGB"
        want = to_uint8(images).permute(0, 2, 3, 1).numpy()
        for c in range(3):
            x = pad + c * (size + pad)
            assert (row[pad : pad + size, x : x + size] == want[c]).all()
            y = pad + r * (size + pad)
            assert (combined[y : y + size, x : x + size] == want[c]).all()  # row r of the combined grid is method r
    assert (combined[:pad] == 255).all()  # white between images
    with pytest.raises(ValueError, match="rows of one length"):
        image_grid([samples["original"], samples["esd_x"][:2]])


def test_image_cache_manifest_names_every_image_by_model_prompt_seed_and_settings(tmp_path):
    root = tmp_path / "cache"
    cache = ImageCache(root)
    settings = {"steps": 3, "guidance_scale": 7.5}
    images = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    a = cache.folder("a" * 64, settings)
    b = cache.folder("b" * 64, {**settings, "steps": 4})
    cache.save(a, "a red triangle", 0, images[0])
    cache.save(a, "a red triangle", 1, images[1])
    cache.save(b, "a red triangle", 0, images[2])
    entries = read_manifest(root)
    assert [(e["model"][:1], e["prompt"], e["seed"], e["settings"]["steps"]) for e in entries] == [
        ("a", "a red triangle", 0, 3), ("a", "a red triangle", 1, 3), ("b", "a red triangle", 0, 4)]  # fmt: skip
    assert len((root / "manifest.jsonl").read_text().splitlines()) == 3
    # the image behind a number: by prompt and seed, narrowed by model (a prefix) or settings
    (hit,) = find_images(root, prompt="a red triangle", seed=1)
    assert torch.equal(ImageCache(root).load(a, "a red triangle", 1), to_uint8(images[1]).float() / 255)
    assert hit["path"] == str(a / f"{ImageCache.key('a red triangle', 1)}.png")
    assert [e["model"][0] for e in find_images(root, seed=0, model="bbbb")] == ["b"]
    assert [e["model"][0] for e in find_images(root, seed=0, settings={"steps": 3})] == ["a"]
    assert find_images(root, prompt="a blue circle") == []
    # reading writes nothing; recording a listed image adds no line; an image cached before the
    # manifest gets its line when an evaluation reads it back (generate_images records what it reads)
    from igmu_lightning.evaluation.generation import generate_images

    lines = (root / "manifest.jsonl").read_text()
    again = ImageCache(root)
    assert again.load(again.folder("a" * 64, settings), "a red triangle", 0) is not None
    again.record(again.folder("a" * 64, settings), "a red triangle", 0)
    assert (root / "manifest.jsonl").read_text() == lines
    (root / "manifest.jsonl").unlink()
    old = ImageCache(root)
    assert old.load(old.folder("b" * 64, {**settings, "steps": 4}), "a red triangle", 0) is not None
    assert not (root / "manifest.jsonl").exists()

    class Cached:  # a sampler whose images are all in the cache already: generate_images only reads
        settings, backbone = SimpleNamespace(), SimpleNamespace(device=torch.device("cpu"))

        def generate(self, prompts, seeds):
            raise AssertionError("nothing should be generated")

    with patch("igmu_lightning.evaluation.generation.asdict", lambda _: {**settings, "steps": 4}):
        read = generate_images(Cached(), ["a red triangle"], [0], old, model="b" * 64)
    assert torch.equal(read[0], to_uint8(images[2]).float() / 255)
    assert [(e["model"][0], e["seed"], e["settings"]["steps"]) for e in read_manifest(root)] == [("b", 0, 4)]
    # a line cut short (a full disk) costs that line only
    with open(root / "manifest.jsonl", "a") as f:
        f.write('{"file": "cut')
    late = ImageCache(root)
    late.save(late.folder("a" * 64, settings), "a blue circle", 5, images[0])
    assert [(e["model"][0], e["prompt"]) for e in read_manifest(root)] == [("b", "a red triangle"), ("a", "a blue circle")]


def test_wandb_run_holds_config_aspect_tables_grids_and_adversarial_prompts(tmp_path, capsys):
    from igmu_lightning.eval_wandb import WandbSettings, log_evaluation
    from igmu_lightning.evaluation import results_document
    from igmu_lightning.evaluation.attack_probe import AttackOutcomes

    methods = methods_document()
    document = results_document({"evaluation": {"class_path": "X"}}, 3, {"original": {"unet": "ab" * 32}}, methods,
                                {"ci": {"level": 0.95}})  # fmt: skip
    samples = samples_of(k=2)
    prompts = [("a red triangle", 0), ("a blue triangle", 1)]
    rows = [
        {"prompt": "a red triangle", "seed": 0, "adversarial_prompt": None, "pre": True, "post": None, "success": True},
        {"prompt": "a blue triangle", "seed": 1, "adversarial_prompt": "zx a blue triangle", "pre": False, "post": True,
         "success": True},
    ]  # fmt: skip
    attacks = {"esd_x": {"udiff": AttackOutcomes("udiff", "esd_x", {}, {}, 3, rows)}}
    settings = WandbSettings(mode="offline", save_dir=str(tmp_path / "w"), tags=["t1"])
    figure = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(figure).save(tmp_path / "tradeoff.png")
    figures = {"tradeoff": (tmp_path / "tradeoff.png", "Forgetting vs preservation, n = 64")}
    folder = log_evaluation(settings, document, samples, prompts, attacks, group="object", name="object_wave1", figures=figures)
    assert f"wandb sync {folder}" in capsys.readouterr().out
    (run,) = offline_runs(tmp_path / "w")
    assert run.dir == folder and run.run.run_group == "object" and run.run.display_name == "object_wave1"
    assert run.run.job_type == "evaluation" and run.run.project == "igmu-lightning"
    assert run.config["seed"] == 3 and run.config["model_hashes"]["original"]["unet"] == "ab" * 32
    assert run.config["packages"] == document["run"]["packages"] and run.config["evaluators"]["ci"]["level"] == 0.95
    for aspect in ("forgetting", "preservation", "quality", "alignment", "robustness", "efficiency"):
        table = run.table(f"aspects/{aspect}")
        want = [(name, m, v["value"], v["ci95"][0], v["ci95"][1], v["n"], v["ci_method"])
                for name, method in methods.items() for m, v in method["aspects"][aspect].items()]  # fmt: skip
        assert [tuple(r.values()) for r in table] == want
        assert list(table[0]) == ["method", "metric", "value", "ci_low", "ci_high", "n", "ci_method"]
    near = [r for r in run.table("aspects/preservation") if r["method"] == "esd_x" and r["metric"] == "near_accuracy"]
    assert near == [{"method": "esd_x", "metric": "near_accuracy", "value": 0.640625, "ci_low": 0.51, "ci_high": 0.773,
                     "n": 64, "ci_method": "wilson"}]  # fmt: skip
    for name, images in samples.items():
        pixels, entry = run.image(f"grids/{name}")
        assert (pixels == to_uint8(image_grid([images])).permute(1, 2, 0).numpy()).all()
        assert "a blue triangle (seed 1)" in entry["caption"]
    pixels, entry = run.image("grids/all")
    assert (pixels == to_uint8(image_grid(list(samples.values()))).permute(1, 2, 0).numpy()).all()
    assert entry["caption"].startswith("rows: original, esd_x, uce")
    pixels, entry = run.image("figures/tradeoff")
    assert (pixels == figure).all() and entry["caption"] == "Forgetting vs preservation, n = 64"
    assert run.table("attacks") == [
        {"method": "esd_x", "probe": "udiff", "prompt": "a red triangle", "seed": 0, "adversarial_prompt": None, "pre": True,
         "post": None},
        {"method": "esd_x", "probe": "udiff", "prompt": "a blue triangle", "seed": 1,
         "adversarial_prompt": "zx a blue triangle", "pre": False, "post": True},
    ]  # fmt: skip
    assert run.summary["esd_x/preservation.near_accuracy"] == 0.640625


def test_evaluate_writes_grids_manifest_summary_and_one_wandb_run(tmp_path):
    """evaluate.py on a tiny world evaluation (the original and a second method): the summary shows
    every metric of the results, the grids beside the results hold each method's kept images (the
    original's row is the cached images of the first forget prompts, found through the cache's
    manifest), and the offline W&B run holds the same numbers and images."""
    from igmu_lightning.artifacts import fingerprint
    from igmu_lightning.evaluation.world_sets import flatten_sets, set_sizes
    from igmu_lightning.world.concepts import TARGETS
    from tests.conftest import SYNONYM_ONLY, run_script

    path, cache = tmp_path / "attr.json", tmp_path / "cache"
    copy = {"copy": {"class_path": "igmu_lightning.backbone.Pretrained", "init_args": {"path": "checkpoints/world/base"}}}
    result = run_script(
        "evaluate.py", "--config", "configs/eval/world/attribute.yaml", "--results_path", str(path),
        "--evaluation.init_args.prompts_per_class", "2", "--evaluation.init_args.sampler.steps", "3",
        "--evaluation.init_args.cache_dir", str(cache), "--evaluation.init_args.methods", json.dumps(copy),
        *SYNONYM_ONLY, env={"WANDB_DIR": str(tmp_path / "w"), "COLUMNS": "100"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(path.read_text())
    methods = results["methods"]
    # the summary: every metric of every method with its interval and n
    lines = result.stdout.splitlines()
    for name, method in methods.items():
        for aspect, metrics in method["aspects"].items():
            for key, value in metrics.items():
                assert any(line.startswith(f"{aspect}.{key} ") and cell(value) in line for line in lines), (name, aspect, key)
    assert "preservation.near_accuracy" in result.stdout and "robustness.synonym.target_rate" in result.stdout
    # the grids: 8 forget images per method, same prompts and seeds; the original's are its cached images
    grids = tmp_path / "attr.grids"
    assert sorted(p.name for p in grids.iterdir()) == ["_all.png", "copy.png", "original.png"]
    target = TARGETS["attribute"]
    forget = flatten_sets(target.name, set_sizes(target.name, 64, None, 2), 0)["forget"]
    model = fingerprint(results["run"]["model_hashes"]["original"])
    row = np.asarray(Image.open(grids / "original.png"))
    size, pad = 32, 2
    assert row.shape == (size + 2 * pad, pad + 8 * (size + pad), 3)
    for c, (prompt, seed) in enumerate(zip(forget.prompts[:8], forget.seeds[:8])):
        (entry,) = find_images(cache, prompt=prompt, seed=seed, model=model[:16], settings={"steps": 3})
        x = pad + c * (size + pad)
        assert (row[pad : pad + size, x : x + size] == np.asarray(Image.open(entry["path"]))).all(), (prompt, seed)
    combined = np.asarray(Image.open(grids / "_all.png"))
    assert (combined[: size + 2 * pad] == row).all() and (combined[size + pad :] == np.asarray(Image.open(grids / "copy.png"))).all()
    # the W&B run: one, grouped by the config's name, with the results' provenance, numbers and grids
    (run,) = offline_runs(tmp_path / "w")
    assert run.run.run_group == "attribute" and run.run.display_name == "attr" and run.run.job_type == "evaluation"
    for key in ("config", "seed", "model_hashes", "evaluators"):
        assert run.config[key] == results["run"][key], key
    for aspect in ("forgetting", "preservation", "quality", "alignment", "robustness", "efficiency"):
        logged = {(r["method"], r["metric"]): r for r in run.table(f"aspects/{aspect}")}
        want = {(name, m): v for name, method in methods.items() for m, v in method["aspects"][aspect].items()}
        assert set(logged) == set(want), aspect
        for k, v in want.items():
            got = logged[k]
            assert (got["value"], [got["ci_low"], got["ci_high"]], got["n"], got["ci_method"]) == (v["value"], v["ci95"], v["n"], v["ci_method"])
    for name in ("original", "copy"):
        assert (run.image(f"grids/{name}")[0] == np.asarray(Image.open(grids / f"{name}.png"))).all()
    assert (run.image("grids/all")[0] == combined).all()
    # the report's figures beside the results, and the same in the run
    figures = tmp_path / "attr.figures"
    assert sorted(p.name for p in figures.iterdir()) == [f"attr_{k}.png" for k in ("grid", "profile", "tradeoff")]
    for kind in ("grid", "profile", "tradeoff"):
        pixels, entry = run.image(f"figures/{kind}")
        assert (pixels == np.asarray(Image.open(figures / f"attr_{kind}.png").convert("RGB"))).all(), kind
        assert "Config:" in entry["caption"], kind
    assert "figure 'attacks' not made" in result.stdout  # no attack probe in this evaluation
    assert not (tmp_path / "attr.partial").exists()  # the methods kept while it ran go once all is written
    assert f"wandb sync {run.dir}" in result.stdout
    # --wandb false: no run (a quick evaluation: the tiny model's inventory)
    again = run_script("evaluate.py", "--config", "configs/eval/inventory.yaml", "--evaluation.init_args.backbone",
                       "configs/backbone/tiny.yaml", "--results_path", str(tmp_path / "b.json"), "--wandb", "false",
                       env={"WANDB_DIR": str(tmp_path / "w2")})  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (tmp_path / "w2").exists() and "W&B" not in again.stdout


def test_without_wandb_one_line_says_nothing_was_logged(tmp_path, monkeypatch, capsys):
    import sys

    from igmu_lightning.eval_wandb import WandbSettings, log_evaluation

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    document = {"run": {}, "methods": methods_document()}
    assert log_evaluation(WandbSettings(save_dir=str(tmp_path / "w")), document, {}, [], {}, group="g", name="n") is None
    assert capsys.readouterr().out == "W&B: wandb is not installed, nothing logged (pip install wandb, or pass --wandb false)\n"
    assert not (tmp_path / "w").exists()
