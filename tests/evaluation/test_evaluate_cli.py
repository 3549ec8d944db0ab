import json

from tests.conftest import run_script

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
