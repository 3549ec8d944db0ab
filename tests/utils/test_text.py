import pytest

from igmu_lightning.data.prompts import read_prompt_lines as data_reader
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.text import expand_braces, read_prompt_lines, read_texts, replace_words, strip_concept


def test_brace_alternatives_expand_to_every_combination_in_order():
    assert expand_braces("a {red,blue} {circle,square}") == ["a red circle", "a red square", "a blue circle", "a blue square"]
    assert expand_braces("no braces {here}") == ["no braces {here}"]  # one option is not an alternative
    assert expand_braces("") == [""]


def test_whole_words_are_replaced_longest_first_and_punctuation_tidied():
    assert replace_words("In Van Gogh's style, a gogh cat", {"van gogh": "Monet", "gogh": "x"}) == "In Monet's style, a x cat"
    assert replace_words("a hollow red circle", {"hollow": ""}) == "a red circle"
    assert replace_words("a triangles party", {"triangle": "square"}) == "a triangles party"
    assert strip_concept("a nude girl , by the lake", ["nude"]) == "a girl, by the lake"


def test_one_reader_for_text_files(tmp_path):
    """UCE's preserve list, CA's anchor prompts and the evaluation's prompt files read lines alike:
    a quoted line is unquoted, blanks are skipped, a BOM is dropped; a CSV column is read by name."""
    lines = tmp_path / "names.txt"
    lines.write_bytes('\ufeffClaude Monet\n\n"Picasso, Pablo"\n  Frida Kahlo  \n'.encode())
    assert read_texts(str(lines)) == ["Claude Monet", "Picasso, Pablo", "Frida Kahlo"] == read_prompt_lines(lines)
    assert data_reader is read_prompt_lines  # one definition
    table = tmp_path / "artists.csv"
    table.write_text('case_number,artist\n1,Claude Monet\n2,\n3,"Picasso, Pablo"\n')
    assert read_texts(str(table), "artist") == ["Claude Monet", "Picasso, Pablo"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(IGMUError, match="is empty"):
        read_texts(str(empty))
    binary = tmp_path / "utf16.txt"
    binary.write_bytes("Monet".encode("utf-16"))
    with pytest.raises(IGMUError, match="not UTF-8 text"):
        read_texts(str(binary))
