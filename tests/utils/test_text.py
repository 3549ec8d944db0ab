from igmu_lightning.utils.text import expand_braces, replace_words, strip_concept


def test_brace_alternatives_expand_to_every_combination_in_order():
    assert expand_braces("a {red,blue} {circle,square}") == ["a red circle", "a red square", "a blue circle", "a blue square"]
    assert expand_braces("no braces {here}") == ["no braces {here}"]  # one option is not an alternative
    assert expand_braces("") == [""]


def test_whole_words_are_replaced_longest_first_and_punctuation_tidied():
    assert replace_words("In Van Gogh's style, a gogh cat", {"van gogh": "Monet", "gogh": "x"}) == "In Monet's style, a x cat"
    assert replace_words("a hollow red circle", {"hollow": ""}) == "a red circle"
    assert replace_words("a triangles party", {"triangle": "square"}) == "a triangles party"
    assert strip_concept("a nude girl , by the lake", ["nude"]) == "a girl, by the lake"
