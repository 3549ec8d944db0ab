"""HUB's prompt files, in the formats HUB ships them: headerless target CSVs and adversarial
files (one prompt a line) and the multilingual CSV; bad files are one-line errors."""

import pytest

from igmu_lightning.data.prompts import read_multilingual_csv, read_prompt_lines
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.igmu_folder import read_prompt_file

HEADER = "Original,Spanish,French,German,Italian,Portuguese,Index"


def test_headerless_target_csv_one_prompt_a_line(tmp_path):
    path = tmp_path / "nudity.csv"
    path.write_text('a nude woman on a beach\n"a naked man, oil painting"\n\n"she said ""hi"", nude"\r\nbare skin portrait\n')
    assert read_prompt_lines(path) == ["a nude woman on a beach", "a naked man, oil painting", 'she said "hi", nude', "bare skin portrait"]
    # as a generate-and-score prompt source: one class named after the file
    assert read_prompt_file(path, task="ignored") == {"nudity": read_prompt_lines(path)}


def test_adversarial_file_keeps_unquoted_commas_and_odd_tokens(tmp_path):
    path = tmp_path / "adversarial.txt"
    path.write_text("\ufeffnuditiy bodyl, photoreal ,, 8k\nxzq ~ nakd ' woman\n")  # a BOM from a spreadsheet export
    assert read_prompt_lines(path) == ["nuditiy bodyl, photoreal ,, 8k", "xzq ~ nakd ' woman"]


def test_multilingual_csv_one_list_per_language(tmp_path):
    path = tmp_path / "multilingual.csv"
    path.write_text(f'{HEADER}\n"a nude woman, beach",una mujer desnuda,une femme nue,eine nackte Frau,una donna nuda,uma mulher nua,0\n'
                    "a naked man,un hombre desnudo,un homme nu,ein nackter Mann,un uomo nudo,um homem nu,1\n")  # fmt: skip
    languages = read_multilingual_csv(path)
    assert list(languages) == ["original", "spanish", "french", "german", "italian", "portuguese"]
    assert languages["original"] == ["a nude woman, beach", "a naked man"]
    assert languages["german"] == ["eine nackte Frau", "ein nackter Mann"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "is empty: give one prompt a line"),
        ("\n  \n", "is empty"),
        ('"never closed\n', "line 1 is not a valid CSV field"),
        ('"a","b"\n', "line 1 holds 2 CSV fields: one prompt a line"),
        ('ok\n""\n', "line 2 is an empty quoted prompt"),
    ],
)
def test_bad_one_a_line_files(tmp_path, text, message):
    path = tmp_path / "target.csv"
    path.write_text(text)
    with pytest.raises(IGMUError, match=message):
        read_prompt_lines(path)


def test_undecodable_binary_and_missing_files(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("una mujer desnuda en la playa, se\xf1ora\n".encode("latin-1"))
    with pytest.raises(IGMUError, match="is not UTF-8 text .*save it as UTF-8"):
        read_prompt_lines(tmp_path / "latin1.csv")
    (tmp_path / "image.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(IGMUError, match="binary file"):
        read_prompt_lines(tmp_path / "image.csv")
    with pytest.raises(IGMUError, match="'.*missing.csv' does not exist"):
        read_prompt_lines(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "is empty"),
        (f"{HEADER}\n", "has a header but no prompts"),
        ("a nude woman\n", "has header a nude woman; HUB's multilingual CSV has Original,Spanish"),
        ("Original,Spanish,French,German,Italian,Index\n", "has header Original,Spanish,French,German,Italian,Index"),
        (f"{HEADER}\na nude woman, beach,una mujer,une femme,eine Frau,una donna,uma mulher,0\n", "line 2 has 8 fields, not 7: quote prompts"),
        (f"{HEADER}\na,b,c,d,e,f,first\n", "line 2: Index 'first' is not an integer"),
        (f"{HEADER}\na,b,,d,e,f,0\n", "line 2 has no French prompt"),
    ],
)
def test_bad_multilingual_files(tmp_path, text, message):
    path = tmp_path / "multilingual.csv"
    path.write_text(text)
    with pytest.raises(IGMUError, match=message):
        read_multilingual_csv(path)
