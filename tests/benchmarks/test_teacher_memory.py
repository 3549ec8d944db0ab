"""The memory benchmark runs (on the tiny model) and its baseline really holds a second UNet."""

import re

from tests.conftest import run_script


def test_teacher_memory_benchmark_runs_and_our_teacher_is_lighter():
    result = run_script("benchmarks/teacher_memory.py", "--size", "tiny", "--steps", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    teachers = [float(x) for x in re.findall(r"\(teacher ([0-9.]+) GiB\)", result.stdout)]
    ratio = float(re.search(r"peak ratio \(ours / deep copy\): ([0-9.]+)", result.stdout).group(1))
    assert len(teachers) == 2 and teachers[0] < teachers[1]
    assert 0 < ratio < 1
