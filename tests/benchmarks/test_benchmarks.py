"""The benchmark scripts run on the tiny model (they are measured on real sizes by hand, not in CI)."""

import re

import pytest

from tests.conftest import run_script


def test_teacher_memory_benchmark_runs_and_our_teacher_is_lighter():
    result = run_script("benchmarks/teacher_memory.py", "--size", "tiny", "--steps", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    teachers = [float(x) for x in re.findall(r"\(teacher ([0-9.]+) GiB\)", result.stdout)]
    ratio = float(re.search(r"peak ratio \(ours / deep copy\): ([0-9.]+)", result.stdout).group(1))
    assert len(teachers) == 2 and teachers[0] < teachers[1]
    assert 0 < ratio < 1


def test_training_overhead_benchmark_runs_both_loops_on_the_tiny_model():
    result = run_script("benchmarks/training_overhead.py", "--model", "tiny", "--steps", "3", "--repeats", "1", "--batch", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    plain, fit = (float(x) for x in re.search(r"plain loop: ([0-9.]+) s/step\s+Trainer.fit: ([0-9.]+) s/step", result.stdout).groups())
    assert plain > 0 and fit > 0 and re.search(r"overhead ratio \(Lightning / plain\): [0-9.]+", result.stdout)


def test_generation_benchmark_compares_both_loops_on_the_same_images():
    result = run_script("benchmarks/generation.py", "--model", "tiny", "--images", "3", "--batch", "2", "--steps", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(re.search(r"max \|difference\| ([0-9.e+-]+)", result.stdout).group(1)) < 1e-4  # same model, seeds, steps
    assert re.search(r"labels agree on 3/3", result.stdout)
    assert float(re.search(r"speed-up \(batched / per-image pipeline\): ([0-9.]+)x", result.stdout).group(1)) > 0
    assert float(re.search(r"sampler / bare UNet ratio: ([0-9.]+)", result.stdout).group(1)) > 0


@pytest.mark.slow
def test_evaluation_cost_benchmark_runs_a_full_world_evaluation():
    result = run_script("benchmarks/evaluation_cost.py", "--model", "sld", "--prompts_per_class", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    cold, warm = (float(x) for x in re.findall(r": ([0-9.]+) s\n", result.stdout))
    assert 0 < warm < cold and re.search(r"\d+ images generated", result.stdout)


def test_attack_benchmark_compares_the_batched_attack_with_one_prompt_at_a_time():
    result = run_script("benchmarks/attack.py", "--model", "tiny", "--prompts", "3", "--single", "2", "--iterations", "1",
                        "--timesteps", "1", "--steps", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"batched: 3 prompts in [0-9.]+ s = [0-9.]+ prompts/s", result.stdout)
    assert float(re.search(r"speed-up \(batched / one at a time\): ([0-9.]+)x", result.stdout).group(1)) > 0


@pytest.mark.slow  # a subprocess that builds two tiny models and the whole-word vocabulary: ~25-45 s on 2 cores
def test_attack_cost_benchmark_runs_both_attacks_on_the_tiny_model():
    result = run_script("benchmarks/attack_cost.py", "--model", "tiny", "--prompts", "2", "--p4d_steps", "2",
                        "--rab_generations", "2", "--sampler_steps", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"p4d: [0-9.]+ s per prompt", result.stdout) and re.search(r"ring_a_bell: [0-9.]+ s per prompt", result.stdout)
    assert result.stdout.count('"all_read_back": true') == 2
