"""Bad input, as a user meets it: every case runs train.py or evaluate.py in a subprocess and must
stop with exit code 2 and exactly one ``error:`` line that names the culprit and the fix, print no
traceback, and leave every output that existed before (a results file, an export folder) byte for
byte as it was. The command lines are prepared in one module fixture and run two at a time."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, one_error_line, run_script, run_scripts, snapshot

WORLD_EVAL = "configs/eval/world/object.yaml"
INVENTORY = "configs/eval/inventory.yaml"
ESD = "configs/unlearn/world/esd_object.yaml"
CA = "configs/unlearn/world/ca_object.yaml"
FMN = "configs/unlearn/world/fmn_object.yaml"
MACE = "configs/unlearn/world/mace_object.yaml"
TINY = str(ROOT / "configs/backbone/tiny.yaml")
WORLD_BASE = str(ROOT / "checkpoints/world/base")
DETECTORS = ROOT / "checkpoints/world/detectors"
LONG_PROMPT = "a small red triangle " + " ".join(f"and a blue square number {i}" for i in range(30))
PREVIOUS = '{"previous": true}\n'


def draw(path: Path, shape: str, seed: int, size: int = 32) -> None:
    from igmu_lightning.world.concepts import Scene
    from igmu_lightning.world.render import render

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(Scene(shape, "red", "plain"), size, np.random.default_rng(seed))).save(path)


def spec(class_path: str, **init_args) -> dict:
    return {"class_path": class_path, "init_args": init_args}


def write_json(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_folder, tiny_spec) -> SimpleNamespace:
    """Every broken input the cases hand over: model folders, deltas, prompt files, image folders, configs."""
    from igmu_lightning.backbone.delta import save_delta

    root = tmp_path_factory.mktemp("bad_input")
    m = SimpleNamespace(root=root, tiny=str(tiny_folder))
    # model folders: corrupt weights, an unreadable config, a diffusers folder of another architecture
    corrupt = root / "corrupt"
    shutil.copytree(tiny_folder, corrupt)
    weights = next((corrupt / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    unreadable = root / "unreadable"
    shutil.copytree(tiny_folder, unreadable)
    (unreadable / "unet" / "config.json").write_text("{not json")
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)  # fmt: skip
    DDPMPipeline(unet, DDPMScheduler()).save_pretrained(root / "ddpm")
    m.corrupt, m.unreadable, m.ddpm = str(corrupt), str(unreadable), str(root / "ddpm")
    # deltas: one made from the tiny model (so for another base than the world's), one truncated
    tiny = tiny_spec.build()
    delta = save_delta(root / "tiny_delta.safetensors", {"unet.conv_in.weight": tiny.unet.conv_in.weight}, tiny.hashes(), tiny_spec)
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(delta.read_bytes()[: delta.stat().st_size // 2])
    m.delta, m.truncated = str(delta), str(truncated)
    m.inventory_truncated = write_json(root / "inventory_truncated.json", {"evaluation": spec(
        "igmu_lightning.evaluation.Inventory", backbone=spec("igmu_lightning.backbone.WithDelta", delta=str(truncated)))})  # fmt: skip
    # prompt files
    prompts = root / "prompts"
    m.prompts_good = write_json(prompts / "forgot.json", {"object_triangle": {"triangle": [f"a red triangle {j}" for j in range(3)]}})
    (prompts / "empty.json").write_text("")
    (prompts / "malformed.json").write_text('{"object_triangle": {"triangle": ["a red triangle",\n')
    m.prompts_empty, m.prompts_malformed = str(prompts / "empty.json"), str(prompts / "malformed.json")
    m.prompts_nudity = write_json(prompts / "nudity.json", {"nudity": {"nude": ["a nude person"]}})
    # IGMU image folders: a good one, then one broken copy per case
    good = root / "images" / "good"
    for j in range(3):
        draw(good / "Triangle/forgot/ORG/triangle" / f"0_{j}_0.png", "triangle", j)
        draw(good / "Triangle/forgot/ESD/triangle" / f"0_{j}_0.png", "square", j)
    m.images_good = str(good)
    for name in ("corrupt", "nonimage", "sizes"):
        shutil.copytree(good, root / "images" / name)
    (root / "images/corrupt/Triangle/forgot/ESD/triangle/0_1_0.png").write_bytes(b"not a png at all")
    (root / "images/nonimage/Triangle/forgot/ESD/triangle/notes.txt").write_text("seeds used: 0 1 2\n")
    draw(root / "images/sizes/Triangle/forgot/ESD/triangle/0_2_0.png", "square", 2, size=48)
    flat = root / "images" / "flat"
    draw(flat / "Triangle/ORG/0_0_0.png", "triangle", 0)  # method folders without forgot/
    m.images = {name: str(root / "images" / name) for name in ("corrupt", "nonimage", "sizes")} | {"flat": str(flat)}
    m.igmu = write_json(root / "igmu.json", {"seed": 0, "evaluation": spec(
        "igmu_lightning.evaluation.igmu_folder.IGMUFolder", root=str(good), concept="Triangle", prompts=m.prompts_good,
        task="object_triangle", judge=spec("igmu_lightning.evaluation.judges.SavedDetector", path=str(DETECTORS / "shape")),
        target="triangle", reference="ORG", fid_features=None)})  # fmt: skip
    # configs with a typo, a wrong type, a missing required value
    esd = (ROOT / ESD).read_text().replace("../../", f"{ROOT / 'configs'}/")  # its fragments, from another folder
    (root / "typo.yaml").write_text(esd.replace("negative_guidance:", "negative_guidence:"))
    (root / "wrong_type.yaml").write_text(esd.replace("lr: 1.0e-03", "lr: fast"))
    (root / "missing.yaml").write_text(esd.replace("    prompts: [triangle]\n", ""))
    (root / "eval_type.yaml").write_text((ROOT / WORLD_EVAL).read_text().replace("prompts_per_set: 64", "prompts_per_set: many"))
    a_file = root / "a_file"
    a_file.write_text("not a folder\n")
    m.a_file = str(a_file)
    return m


@pytest.fixture(scope="module")
def esd_run(made) -> SimpleNamespace:
    """A 2-step ESD run on the tiny backbone whose concept is longer than the tokenizer's limit: it
    must warn and finish, and its checkpoint is the "checkpoint of another algorithm" below."""
    out = made.root / "esd_run"
    result = run_script("train.py", "fit", "--config", ESD, "--model.init_args.backbone", TINY,
                        "--data.init_args.prompts", json.dumps([LONG_PROMPT]), "--model.init_args.ddim_steps", "2",
                        "--data.init_args.batch_size", "1", "--trainer.max_steps", "2", "--trainer.logger", "false",
                        "--trainer.default_root_dir", str(out / "logs"), "--model.init_args.export_dir", str(out / "export"))  # fmt: skip
    return SimpleNamespace(result=result, ckpt=out / "logs" / "checkpoints" / "last.ckpt")


def cases(m: SimpleNamespace, esd: SimpleNamespace) -> dict[str, list[str]]:
    """name -> command line. ``{out}``: the case's own folder, holding results.json and export/ from
    before; evaluate.py writes to {out}/results.json and train.py exports to {out}/export unless the
    case says otherwise."""
    world = ["evaluate.py", "--config", WORLD_EVAL, "--evaluation.init_args.cache_dir", "{out}/cache"]
    inventory = ["evaluate.py", "--config", INVENTORY, "--evaluation.init_args.backbone.init_args.path"]
    igmu = ["evaluate.py", "--config", m.igmu]
    tiny_train = ["--model.init_args.backbone", TINY, "--model.init_args.ddim_steps", "2", "--data.init_args.batch_size", "1"]
    delta_on_world = spec("igmu_lightning.backbone.WithDelta", delta=m.delta, base=spec("igmu_lightning.backbone.Pretrained", path=WORLD_BASE))
    missing_method = spec("igmu_lightning.backbone.Pretrained", path="{out}/no_such_model")
    return {
        # models
        "model_missing": [*inventory, "{out}/no_such_model"],
        "model_unreadable": [*inventory, m.unreadable],
        "model_corrupt": [*inventory, m.corrupt],
        "model_wrong_architecture": [*inventory, m.ddpm],
        "model_path_is_a_file": [*inventory, m.a_file],
        "method_missing_fails_before_generating": [*world, "--evaluation.init_args.methods", json.dumps({"mine": missing_method})],
        "delta_for_another_base": [*world, "--evaluation.init_args.methods", json.dumps({"mine": delta_on_world})],
        "delta_truncated": ["evaluate.py", "--config", m.inventory_truncated],
        "ckpt_of_another_algorithm": ["train.py", "fit", "--config", CA, "--ckpt_path", str(esd.ckpt)],
        # configs
        "config_unknown_key": ["train.py", "fit", "--config", str(m.root / "typo.yaml")],
        "config_wrong_type": ["train.py", "fit", "--config", str(m.root / "wrong_type.yaml")],
        "config_missing_required": ["train.py", "fit", "--config", str(m.root / "missing.yaml")],
        "config_unknown_trainer_key": ["train.py", "fit", "--config", ESD, "--trainer.max_stepz", "3"],
        "config_missing_file": ["train.py", "fit", "--config", "{out}/no_such_config.yaml"],
        "eval_config_unknown_key": [*world, "--evaluation.init_args.prompts_per_sett", "4"],
        "eval_config_unknown_class": [*world, "--evaluation.class_path", "igmu_lightning.evaluation.world_eval.WorldEval"],
        "eval_config_wrong_type": ["evaluate.py", "--config", str(m.root / "eval_type.yaml")],
        # prompt files
        "prompts_empty": [*igmu, "--evaluation.init_args.prompts", m.prompts_empty],
        "prompts_malformed": [*igmu, "--evaluation.init_args.prompts", m.prompts_malformed],
        "prompts_wrong_task": [*igmu, "--evaluation.init_args.prompts", m.prompts_nudity],
        "prompts_missing": [*igmu, "--evaluation.init_args.prompts", "{out}/forgot.json"],
        # image folders
        "images_not_igmu_layout": [*igmu, "--evaluation.init_args.root", m.images["flat"]],
        "images_corrupt_png": [*igmu, "--evaluation.init_args.root", m.images["corrupt"]],
        "images_non_image_file": [*igmu, "--evaluation.init_args.root", m.images["nonimage"]],
        "images_mismatched_sizes": [*igmu, "--evaluation.init_args.root", m.images["sizes"]],
        "images_reference_missing": [*igmu, "--evaluation.init_args.reference", "SD14"],
        # judges
        "detector_for_another_task": [*igmu, "--evaluation.init_args.judge.init_args.path", str(DETECTORS / "style")],
        "world_detectors_not_a_set": [*world, "--evaluation.init_args.detectors", str(DETECTORS / "shape")],
        # where results go
        "results_under_a_file": [*inventory, m.tiny, "--results_path", "{out}/results.json/results.json"],
        "results_path_is_a_folder": [*inventory, m.tiny, "--results_path", "{out}/export"],
        # training data and losses
        "concept_absent_from_forget_prompts": ["train.py", "fit", "--config", FMN, "--model.init_args.concept", "hexagon"],
        "mace_images_for_another_concept_list": ["train.py", "fit", "--config", MACE, "--data.init_args.concepts", "[triangle, striped]"],
        "nan_loss": ["train.py", "fit", "--config", ESD, *tiny_train, "--model.init_args.lr", "1e30", "--trainer.max_steps", "4", "--checkpoint_every", "1"],
        # devices
        "eval_several_processes_for_a_one_process_evaluation": [*inventory, m.tiny, "--accelerator", "cpu", "--devices", "2"],
        "eval_gpu_without_gpu": [*inventory, m.tiny, "--accelerator", "gpu"],
        "train_gpu_without_gpu": ["train.py", "fit", "--config", ESD, *tiny_train, "--trainer.accelerator", "gpu"],
    }


@pytest.fixture(scope="module")
def outcomes(made, esd_run) -> dict[str, SimpleNamespace]:
    """Run every case (two at a time); each gets a folder with a results file and an export from before."""
    jobs, folders = {}, {}
    for name, args in cases(made, esd_run).items():
        out = made.root / "out" / name
        (out / "export").mkdir(parents=True)
        (out / "results.json").write_text(PREVIOUS)
        (out / "export" / "model_index.json").write_text('{"exported": "before"}\n')
        argv = [a.replace("{out}", str(out)) for a in args]
        if argv[0] == "evaluate.py" and "--results_path" not in argv:
            argv += ["--results_path", str(out / "results.json")]
        if argv[0] == "train.py":  # never the config's outputs/ or logs/ in the repository
            argv += ["--trainer.logger", "false", "--trainer.default_root_dir", str(out / "logs"),
                     "--model.init_args.export_dir", str(out / "export")]  # fmt: skip
        jobs[name], folders[name] = argv, out
    before = {name: snapshot(out) for name, out in folders.items()}
    results = run_scripts(jobs)
    if os.environ.get("IGMU_BAD_INPUT_LOG"):  # docs/reliability.md is made from these lines
        lines = {name: [line for line in r.stderr.splitlines() if line.startswith("error:")] for name, r in results.items()}
        lines["prompt_over_the_token_limit"] = [line for line in esd_run.result.stderr.splitlines() if "tokenizer's limit" in line]
        Path(os.environ["IGMU_BAD_INPUT_LOG"]).write_text(json.dumps({"root": str(made.root), "argv": jobs, "lines": lines}, indent=1))
    return {name: SimpleNamespace(result=results[name], out=folders[name], before=before[name]) for name in jobs}


def error_of(outcomes: dict, name: str) -> str:
    """The case's one error line, after checking exit code, traceback and that nothing changed."""
    case = outcomes[name]
    line = one_error_line(case.result)
    after = {k: v for k, v in snapshot(case.out).items() if not k.startswith("logs/")}
    assert after == {k: v for k, v in case.before.items()}, f"{name} changed {sorted(set(after) ^ set(case.before))}"
    return line


def nothing_generated(outcomes: dict, name: str) -> None:
    cache = outcomes[name].out / "cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), "images were generated before the error"


# --- models ---------------------------------------------------------------------------------------
def test_model_missing(outcomes):
    line = error_of(outcomes, "model_missing")
    assert "no_such_model' does not exist" in line and "give a diffusers folder" in line


def test_model_unreadable(outcomes, made):
    line = error_of(outcomes, "model_unreadable")
    assert f"'{made.unreadable}/unet/config.json' cannot be read" in line and "export the model folder again" in line


def test_model_corrupt(outcomes, made):
    line = error_of(outcomes, "model_corrupt")
    assert f"cannot load model '{made.corrupt}'" in line and "export the model folder again" in line


def test_model_wrong_architecture(outcomes, made):
    line = error_of(outcomes, "model_wrong_architecture")
    assert made.ddpm in line and "DDPMPipeline" in line and "Stable-Diffusion-shaped diffusers folder" in line


def test_model_path_is_a_file(outcomes, made):
    line = error_of(outcomes, "model_path_is_a_file")
    assert f"model path '{made.a_file}' is a file" in line and "give a diffusers folder" in line


def test_method_missing_fails_before_generating(outcomes):
    line = error_of(outcomes, "method_missing_fails_before_generating")
    assert "no_such_model' does not exist" in line
    nothing_generated(outcomes, "method_missing_fails_before_generating")


def test_delta_for_another_base_fails_before_generating(outcomes, made):
    line = error_of(outcomes, "delta_for_another_base")
    assert f"'{made.delta}' was made from another base model" in line and "load it onto the base it names" in line
    nothing_generated(outcomes, "delta_for_another_base")


def test_delta_truncated(outcomes, made):
    line = error_of(outcomes, "delta_truncated")
    assert f"delta '{made.truncated}'" in line and "truncated" in line and "export the run again" in line


def test_ckpt_of_another_algorithm(outcomes, esd_run):
    line = error_of(outcomes, "ckpt_of_another_algorithm")
    assert f"'{esd_run.ckpt}' is a checkpoint of ESD, but this config trains ConceptAblation" in line
    assert "drop --ckpt_path" in line


# --- configs --------------------------------------------------------------------------------------
def test_config_unknown_key_names_file_and_closest_key(outcomes, made):
    line = error_of(outcomes, "config_unknown_key")
    assert "'model.init_args.negative_guidence'" in line and f"'{made.root / 'typo.yaml'}'" in line
    assert "did you mean 'negative_guidance'" in line


def test_config_wrong_type(outcomes, made):
    line = error_of(outcomes, "config_wrong_type")
    assert "'model.init_args.lr'" in line and f"'{made.root / 'wrong_type.yaml'}'" in line and "must be a float, got 'fast'" in line


def test_config_missing_required(outcomes, made):
    line = error_of(outcomes, "config_missing_required")
    assert "'prompts' of PromptData has no value" in line and f"set data.init_args.prompts in '{made.root / 'missing.yaml'}'" in line


def test_config_unknown_trainer_key(outcomes):
    line = error_of(outcomes, "config_unknown_trainer_key")
    assert "'trainer.max_stepz' on the command line" in line and "did you mean 'trainer.max_steps'" in line


def test_config_missing_file(outcomes):
    line = error_of(outcomes, "config_missing_file")
    assert "no_such_config.yaml' does not exist" in line and "fix the --config path" in line


def test_eval_config_unknown_key(outcomes):
    line = error_of(outcomes, "eval_config_unknown_key")
    assert "'evaluation.init_args.prompts_per_sett'" in line and "did you mean 'prompts_per_set'" in line


def test_eval_config_unknown_class(outcomes):
    line = error_of(outcomes, "eval_config_unknown_class")
    assert "'igmu_lightning.evaluation.world_eval.WorldEval'" in line and "did you mean 'WorldEvaluation'" in line


def test_eval_config_wrong_type(outcomes, made):
    line = error_of(outcomes, "eval_config_wrong_type")
    assert "prompts_per_set" in line and "eval_type.yaml" in line and "must be an int, got 'many'" in line


# --- prompt files ---------------------------------------------------------------------------------
def test_prompts_empty(outcomes, made):
    line = error_of(outcomes, "prompts_empty")
    assert f"prompt file '{made.prompts_empty}' is empty" in line and "give IGMU's JSON" in line


def test_prompts_malformed(outcomes, made):
    line = error_of(outcomes, "prompts_malformed")
    assert f"prompt file '{made.prompts_malformed}' is not valid JSON" in line and "line 2" in line


def test_prompts_wrong_task(outcomes, made):
    line = error_of(outcomes, "prompts_wrong_task")
    assert f"'{made.prompts_nudity}' has no task 'object_triangle' (it has nudity)" in line and "set task" in line


def test_prompts_missing(outcomes):
    line = error_of(outcomes, "prompts_missing")
    assert "forgot.json' does not exist: fix the path" in line


def test_prompt_over_the_token_limit_warns_and_runs(esd_run):
    """Not an error: the run finishes, and the warning shows the token count and the truncation."""
    result = esd_run.result
    assert result.returncode == 0, result.stderr[-3000:]
    assert "error:" not in result.stderr and esd_run.ckpt.is_file()
    assert "tokens, over the tokenizer's limit of 77: truncated to '" in result.stderr
    assert result.stderr.count("over the tokenizer's limit") == 1  # once per prompt, not once per step


# --- image folders --------------------------------------------------------------------------------
def test_images_not_in_igmu_layout(outcomes, made):
    line = error_of(outcomes, "images_not_igmu_layout")
    assert f"'{made.images['flat']}/Triangle/forgot' does not exist" in line and "IGMU's layout" in line


def test_images_corrupt_png(outcomes, made):
    line = error_of(outcomes, "images_corrupt_png")
    assert f"image '{made.images['corrupt']}/Triangle/forgot/ESD/triangle/0_1_0.png' cannot be read" in line
    assert "remove or replace it" in line


def test_images_non_image_file(outcomes, made):
    line = error_of(outcomes, "images_non_image_file")
    assert "ESD/triangle/notes.txt' is not an image" in line and "move it out of the image folder" in line


def test_images_mismatched_sizes(outcomes):
    line = error_of(outcomes, "images_mismatched_sizes")
    assert "0_2_0.png' is 48x48, but" in line and "is 32x32" in line and "one size" in line


def test_images_reference_missing(outcomes):
    line = error_of(outcomes, "images_reference_missing")
    assert "reference 'SD14' is not a method folder" in line and "(found: ESD, ORG)" in line


# --- judges ---------------------------------------------------------------------------------------
def test_detector_for_another_task(outcomes):
    line = error_of(outcomes, "detector_for_another_task")
    assert "target 'triangle' is not a class of the judge" in line and "detectors/style'" in line
    assert "trained for this task" in line


def test_world_detectors_not_a_set(outcomes):
    line = error_of(outcomes, "world_detectors_not_a_set")
    assert "detectors/shape' is a single detector" in line and "shape/, colour/" in line
    nothing_generated(outcomes, "world_detectors_not_a_set")


# --- results paths --------------------------------------------------------------------------------
def test_results_under_a_file(outcomes):
    line = error_of(outcomes, "results_under_a_file")
    assert "lies under" in line and "results.json', which is a file" in line and "give a path in a folder" in line


def test_results_path_is_a_folder(outcomes):
    line = error_of(outcomes, "results_path_is_a_folder")
    assert "export' is a folder" in line and "give a file path" in line


def test_results_in_a_read_only_folder(tmp_path, monkeypatch, capsys, tiny_folder):
    """Root ignores chmod, so the read-only folder is os.access saying no; checked before the run."""
    from igmu_lightning import evaluate_cli
    from igmu_lightning.errors import run_main

    folder = tmp_path / "readonly"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(evaluate_cli.os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    args = ["--config", str(ROOT / INVENTORY), "--evaluation.init_args.backbone.init_args.path", str(tiny_folder),
            "--results_path", str(folder / "r.json")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: evaluate_cli.main(args))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --results_path '{folder / 'r.json'}': folder '{folder}' is not writable: give a path in a writable folder"]
    assert not any(folder.iterdir())


def test_disk_full_prints_the_table_and_saves_the_results_beside_the_run(tmp_path, monkeypatch, capsys, tiny_folder):
    """A write that fails with ENOSPC after the evaluation: the summary is printed, the results land in
    the working directory, and the one error line says where and why; the old results stay."""
    from igmu_lightning import evaluate_cli
    from igmu_lightning.errors import run_main

    target = tmp_path / "results" / "inventory.json"
    target.parent.mkdir()
    target.write_text(PREVIOUS)
    real = evaluate_cli.write_results

    def full(path, document):
        if Path(path) == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, document)

    monkeypatch.setattr(evaluate_cli, "write_results", full)
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / INVENTORY), "--evaluation.init_args.backbone.init_args.path", str(tiny_folder),
            "--results_path", str(target)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: evaluate_cli.main(args))
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert "params.unet" in out  # the summary table came first
    saved = list(tmp_path.glob("inventory.unsaved-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["methods"]["model"]["aspects"]["efficiency"]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    expected = (f"error: results could not be written to '{target}' (No space left on device): they were written "
                f"to '{saved[0]}' instead; free space or fix the folder and copy them over")  # fmt: skip
    assert lines == [expected]
    assert target.read_text() == PREVIOUS


# --- training -------------------------------------------------------------------------------------
def test_concept_absent_from_every_forget_prompt(outcomes):
    line = error_of(outcomes, "concept_absent_from_forget_prompts")
    assert "none of the" in line and "forget prompts holds the FMN concept ['hexagon']" in line and "set concept" in line


def test_mace_data_for_another_number_of_concepts(outcomes):
    line = error_of(outcomes, "mace_images_for_another_concept_list")
    assert line == "error: the data module serves 2 concepts but MACE erases 1: give one image set per concept"


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(outcomes):
    import torch

    case = outcomes["nan_loss"]
    line = error_of(outcomes, "nan_loss")
    ckpt = case.out / "logs" / "checkpoints" / "last.ckpt"
    assert "the loss is nan at step 2" in line or "the loss is inf at step 2" in line
    assert "lower the learning rate (now 1e+30)" in line and f"the last good checkpoint is '{ckpt}'" in line
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 1 and all(torch.isfinite(t).all() for t in state["state_dict"].values())


# --- devices --------------------------------------------------------------------------------------
def test_several_processes_for_a_one_process_evaluation(outcomes):
    line = error_of(outcomes, "eval_several_processes_for_a_one_process_evaluation")
    assert "Inventory runs in one process (2 were asked for): drop --devices" in line


NO_GPU = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")


@NO_GPU
def test_eval_gpu_without_gpu(outcomes):
    line = error_of(outcomes, "eval_gpu_without_gpu")
    assert "--accelerator gpu" in line and "use --accelerator cpu" in line


@NO_GPU
def test_train_gpu_without_gpu(outcomes):
    line = error_of(outcomes, "train_gpu_without_gpu")
    assert "trainer.accelerator gpu" in line and "use --trainer.accelerator cpu" in line
