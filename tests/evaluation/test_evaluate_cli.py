import json

from tests.conftest import SYNONYM_ONLY, run_script

CONFIG = "configs/eval/inventory.yaml"


def test_evaluate_writes_identical_results_twice(tiny_folder, tiny_spec, tmp_path):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        result = run_script("evaluate.py", "--config", CONFIG, "--results_path", str(path),
                            "--evaluation.init_args.backbone.init_args.path", str(tiny_folder))  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert paths[0].read_bytes() == paths[1].read_bytes()
    results = json.loads(paths[0].read_text())
    assert results["run"]["seed"] == 0 and results["run"]["packages"]["torch"]
    assert results["run"]["model_hashes"]["model"] == tiny_spec.build().hashes()
    assert results["run"]["config"]["evaluation"]["init_args"]["backbone"]["init_args"]["path"] == str(tiny_folder)
    params = results["methods"]["model"]["aspects"]["efficiency"]["params.unet"]
    assert params["value"] == sum(p.numel() for p in tiny_spec.build().unet.parameters()) and params["n"] == 1


def test_failed_evaluation_leaves_existing_results_untouched(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"previous": true}\n')
    result = run_script("evaluate.py", "--config", CONFIG, "--results_path", str(path),
                        "--evaluation.init_args.backbone.init_args.path", str(tmp_path / "missing"))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: model path")
    assert path.read_text() == '{"previous": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_evaluate_requires_an_evaluation():
    result = run_script("evaluate.py")
    assert result.returncode != 0 and "evaluation" in result.stderr


def test_a_killed_evaluation_resumes_from_its_image_cache_to_the_same_results(tmp_path):
    """kill -9 evaluate.py once its image cache holds some images, run it again: it generates only
    what is missing and writes the uninterrupted run's results JSON byte for byte."""
    import signal
    import time

    from tests.conftest import start_script

    def args(name: str) -> list[str]:
        return ["evaluate.py", "--config", "configs/eval/world/object.yaml", "--results_path", str(tmp_path / f"{name}.json"),
                "--evaluation.init_args.prompts_per_class", "3", "--evaluation.init_args.sampler.steps", "4",
                "--evaluation.init_args.batch_size", "2", "--evaluation.init_args.cache_dir", str(tmp_path / name),
                *SYNONYM_ONLY]  # fmt: skip (the attack probe reports wall time, which differs run to run)

    whole = run_script(*args("whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    proc = start_script(*args("part"), log=tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while len(list((tmp_path / "part").rglob("*.png"))) < 4:  # two batches of the original's images
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cached = len(list((tmp_path / "part").rglob("*.png")))
    assert not (tmp_path / "part.json").exists() and cached < len(list((tmp_path / "whole").rglob("*.png")))
    resumed = run_script(*args("part"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # byte for byte, once the one thing told apart on purpose, the cache folder's name, is swapped
    whole_bytes = (tmp_path / "whole.json").read_bytes().replace(str(tmp_path / "whole").encode(), str(tmp_path / "part").encode())
    assert (tmp_path / "part.json").read_bytes() == whole_bytes
    assert len(list((tmp_path / "part").rglob("*.png"))) == len(list((tmp_path / "whole").rglob("*.png")))


def test_a_probe_list_on_the_command_line_replaces_the_configs_without_inheriting_its_names(tmp_path):
    """object.yaml's second probe is AttackProbe(name=udiff); a PromptFileProbe given in its place
    must be named after its file, not report its rates as robustness.udiff.*."""
    from igmu_lightning.evaluate_cli import build_parser, replace_lists
    from tests.conftest import ROOT

    prompts = tmp_path / "junk_prefix.txt"
    prompts.write_text("qpr a red triangle\n")
    probes = json.dumps([{"class_path": "igmu_lightning.evaluation.probes.SynonymProbe"},
                         {"class_path": "igmu_lightning.evaluation.probes.PromptFileProbe", "init_args": {"path": str(prompts)}}])  # fmt: skip
    for given in (["--evaluation.init_args.probes", probes], [f"--evaluation.init_args.probes={probes}"]):
        args = replace_lists(["--config", str(ROOT / "configs/eval/world/object.yaml"), *given])
        config = build_parser(args).parse_args(args)
        listed = config.evaluation.init_args.probes
        assert [p.class_path.rpartition(".")[2] for p in listed] == ["SynonymProbe", "PromptFileProbe"]
        assert listed[1].init_args.name is None  # the file's stem, junk_prefix, at construction
