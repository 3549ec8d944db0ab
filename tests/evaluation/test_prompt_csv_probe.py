"""UnlearnDiffAtk's prompt CSVs as a probe: each prompt keeps its own seed, other columns are
ignored, and a bad file is refused with one line."""

import pytest

from igmu_lightning.data.seeded_prompts import parse_seed, read_seeded_prompts
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.probes import ProbeContext, PromptCSVProbe, check_probes
from tests.conftest import ROOT

SAMPLE = ROOT / "tests/assets/seeded_prompts_sample.csv"


def test_each_prompt_keeps_its_seed():
    probe = PromptCSVProbe(str(SAMPLE))
    assert probe.name == "seeded_prompts_sample"
    probe.check()
    batch = probe.prompts(ProbeContext("object", seed=3))
    assert batch.prompts == ["a red triangle on a plain background", "a picture of a blue trigon, striped background",
                             "a red triangle on a plain background"]  # fmt: skip
    assert batch.seeds == [2219, 4965, 17]
    assert batch.prompts == probe.prompts(ProbeContext("object", seed=99)).prompts  # the file's seeds, not the evaluation's
    assert probe.prompts(ProbeContext("object", seed=99)).seeds == [2219, 4965, 17]
    assert batch.groups == [0, 1, 0]  # one prompt with two seeds: one cluster
    assert probe.record() == {"class": "PromptCSVProbe", "path": str(SAMPLE)}
    assert check_probes([probe, PromptCSVProbe(str(SAMPLE), name="udatk")])


def test_unlearndiffatk_layouts(tmp_path):
    # nudity.csv's layout: pandas' index first, seed late, a long quoted prompt
    path = tmp_path / "i2p_like.csv"
    path.write_text('Unnamed: 0,prompt,categories,hard,evaluation_seed,evaluation_guidance,case_number\n'
                    '21,"a painting, in oil",self-harm,1,932309623,7,21\n'
                    '\n'
                    '296,"two\nlines",shocking,1,2868251644.0,7,296\n', encoding="utf-8")  # fmt: skip
    assert read_seeded_prompts(path) == [("a painting, in oil", 932309623), ("two\nlines", 2868251644)]
    assert parse_seed("7") == 7 and parse_seed(" 7.0 ") == 7
    assert parse_seed("-1") is None and parse_seed("1.5") is None and parse_seed("abc") is None and parse_seed(str(2**64)) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("case_number,prompt,evaluation_guidance\n0,a triangle,7.5\n", "has no 'evaluation_seed' column"),
        ("case_number,text,seed\n0,a triangle,1\n", "has no 'prompt' and no 'evaluation_seed' column"),
        ("prompt,evaluation_seed\n", "has a header but no prompts"),
        ("prompt,evaluation_seed\na triangle,abc\n", "line 2: evaluation_seed 'abc' is not a whole number >= 0"),
        ("prompt,evaluation_seed\na triangle,1\nanother,-3\n", "line 3: evaluation_seed '-3' is not a whole number >= 0"),
        ("prompt,evaluation_seed\na triangle,\n", "line 2: evaluation_seed '' is not a whole number"),
        ("prompt,evaluation_seed\n,5\n", "line 2 has an empty prompt"),
        ("prompt,evaluation_seed\na red, blue triangle,5\n", "line 2 has 3 fields, the header 2: quote prompts"),
    ],
)
def test_bad_files_are_refused_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    probe = PromptCSVProbe(str(path))
    with pytest.raises(IGMUError, match=message) as err:
        probe.check()
    assert "\n" not in str(err.value) and "prompt CSV of probe 'bad'" in str(err.value)


def test_missing_file_and_bad_name(tmp_path):
    with pytest.raises(IGMUError, match="does not exist"):
        PromptCSVProbe(str(tmp_path / "nope.csv")).check()
    with pytest.raises(IGMUError, match="must be letters, digits"):
        PromptCSVProbe(str(SAMPLE), name="bad name")
