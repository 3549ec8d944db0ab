from igmu_lightning.backbone.tokenizer import byte_symbols, clip_tokenizer


def test_byte_symbols_cover_every_byte_once():
    symbols = byte_symbols()
    assert len(symbols) == 256 and len(set(symbols)) == 256
    assert symbols[0] == "!" and "Ā" in symbols  # printable first, then the shifted control bytes


def test_tokenizer_matches_stable_diffusion_ids():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    ids = tok("a photo of a church", padding="max_length", max_length=77).input_ids
    # The ids SD v1.x's own tokenizer gives for this prompt.
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2735, 49407]
    assert len(ids) == 77 and set(ids[7:]) == {49407}  # padded with <|endoftext|>, as SD


def test_tokenizer_splits_rare_words_into_subwords():
    tok = clip_tokenizer()
    pieces = tok.tokenize("a nude girl by qzxvtrianglewv")
    assert pieces[:3] == ["a</w>", "nude</w>", "girl</w>"]
    assert len(pieces) > 5 and pieces[-1].endswith("</w>")  # the made-up word is split into sub-words
