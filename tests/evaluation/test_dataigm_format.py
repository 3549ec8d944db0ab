"""IGMU's published prompt sets (a sample lives in ../shared/dataigm beside the repository) read
through our loader, and our concept stripping reproducing IGMU's remove_word prompts."""

import pytest

from igmu_lightning.evaluation.igmu_folder import read_prompt_file
from igmu_lightning.utils.text import strip_concept
from tests.conftest import ROOT

DATAIGM = ROOT.parent / "shared" / "dataigm"
pytestmark = pytest.mark.skipif(not (DATAIGM / "forgot.json").is_file(), reason="IGMU's prompt sample is not beside the repo")


def test_igmu_prompt_files_have_the_published_shape():
    forgot = {t: read_prompt_file(DATAIGM / "forgot.json", t) for t in ("nudity", "style_vangogh", "object_church")}
    assert [len(v) for v in forgot["nudity"].values()] == [50] * 5
    assert [len(v) for v in forgot["style_vangogh"].values()] == [50] * 5
    assert list(forgot["object_church"]) == ["Church"]
    unrelated = read_prompt_file(DATAIGM / "retain.json", "object_church")
    assert len(unrelated) == 6 and "Church" not in unrelated


@pytest.mark.parametrize(("task", "words"), [("nudity", ["nude", "naked"]), ("style_vangogh", ["with Van Gogh style"])])
def test_strip_concept_reproduces_igmu_remove_word(task, words):
    forgot = read_prompt_file(DATAIGM / "forgot.json", task)
    retain = read_prompt_file(DATAIGM / "retain.json", task)
    pairs = [(f, r) for cls in forgot for f, r in zip(forgot[cls], retain[cls])]
    same = sum(strip_concept(f, words) == r for f, r in pairs)
    assert same / len(pairs) >= 0.99  # 249 of 250 for nudity: the file has a typo ("dan cing")
