"""Flickr tags: normalise them, drop noise, and decide which are English.

The crawler keeps a photo only with at least 2 English tags (the paper's rule); this
module is that decision, so the crawl and the tag features agree on it.

* **Normalise**: lower-case, strip, drop machine tags (``geo:lat=..``), numbers and
  years, and camera/brand/filler noise (a fixed list). Split ``CamelCase`` tags
  (``RedDog`` -> ``red dog``) and joined lower-case words (``reddog``) *only where safe*:
  when every part is a known English word of >= 3 letters and the split is unique.
* **English** (``crawl.english``):
  - ``wordfreq`` (default): a word (as written) is English by ``wordfreq``'s word lists
    (shipped inside its wheel; offline) when its English Zipf frequency is >= 4.0 (10 per
    million words: ``sea``, ``hat``, ``door``, though Spanish, German and Dutch use them
    more), or >= 2.0 (once per 10 million: ``serendipity`` 2.7, ``quixotic`` 2.3) and no
    other big language of Flickr tags (es, it, fr, de, pt, nl) uses it 10x more (Zipf + 1.0).
    So ``cielo`` (en 2.4, it 5.0), ``playa`` (en 3.2, es 4.7), ``casa`` (en 3.5, pt 6.0) and
    ``perro`` (en 2.0) are not English. ``benchmarks/english_rule_report.py`` reports both
    rules on the real MIRFLICKR tags.
  - ``captions``: the word's context-free lemma (``lemminflect``: noun, then verb) is in
    the clean captions' vocabulary plus the word-vector vocabulary (the rule before
    wordfreq; real English words the captions never use count zero).
  Tags in other scripts are never English.
* **Counting**: a tag counts once however it is written: ``cat`` and ``cats`` are one
  English tag, and a joined tag (``bluesky``) split into ``blue`` + ``sky`` for the word
  vectors is still one tag for the paper's >= 2 rule (:func:`english_tag_count`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from storage.errors import InputError, MissingInputError
from storage.layout import VECTORS_FILE, DataRoot
from storage.tables import CLEAN_CAPTIONS, read_table
from tasks.text.backends import lemma_of_tag
from tasks.text.keywords import group_key
from tasks.text.stop_words import STOP_WORDS
from tasks.text.word_vectors import load_keyed_vectors

NOISE_TAGS: frozenset[str] = frozenset(
    "canon nikon sony iphone android samsung fujifilm fuji olympus pentax leica panasonic lumix gopro dslr slr mirrorless "
    "50mm 35mm 85mm 18mm 55mm lens eos eos5d eos5dmarkii d750 nikond750 instagood instagram flickr photo photos "
    "photography picture pictures pic image img dsc untitled".split()
)  # fmt: skip
_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


class Lexicon(Protocol):
    """What decides English: ``knows`` a word as a tag, accepts it as ``joinable`` part of a joined tag."""

    def __contains__(self, word: object) -> bool: ...

    def knows(self, word: str) -> bool: ...

    def joinable(self, word: str) -> bool: ...


class WordfreqEnglish:
    """The common English words by wordfreq (see the module doc for the rule). Its lists hold
    inflected forms, so it judges the word as written (a context-free lemmatiser turns
    ``umbrella`` into ``umbrellum``)."""

    COMMON_ZIPF = 4.0  # >= 10 per million English words: English, whatever else it also is (sea, hat, door)
    MIN_ZIPF = 2.0  # >= 1 per 10 million: English unless another language uses it far more (cielo, playa)
    MARGIN = 1.0
    OTHER_LANGUAGES = ("es", "it", "fr", "de", "pt", "nl")

    def __init__(self) -> None:
        # imported by the one that judges tags: wordfreq finds its data with inspect.stack(),
        # which took 1-2 s of every process's start (every webvse command, every worker)
        from wordfreq import zipf_frequency

        self._zipf: Callable[[str, str], float] = zipf_frequency

    def __contains__(self, word: object) -> bool:
        if not isinstance(word, str) or not word.isalpha():
            return False
        english = self._zipf(word, "en")
        if english >= self.COMMON_ZIPF:
            return True
        return english >= self.MIN_ZIPF and all(english + self.MARGIN > self._zipf(word, other) for other in self.OTHER_LANGUAGES)

    def knows(self, word: str) -> bool:
        return word in self

    def joinable(self, word: str) -> bool:
        """Only common words may be the parts of a joined tag (``bluesky``), else rare fragments
        split anything (``hosres`` -> ``hos`` + ``res``)."""
        return self._zipf(word, "en") >= self.COMMON_ZIPF


class CaptionVocabulary(frozenset[str]):
    """The grouped lemmas of the clean captions (plus word-vector words): the ``captions`` rule."""

    def knows(self, word: str) -> bool:
        return group_key(lemma_of_tag(word)) in self

    def joinable(self, word: str) -> bool:
        return self.knows(word)


ENGLISH_RULES = ("wordfreq", "captions")


def _known(word: str, vocabulary: Lexicon) -> bool:
    return len(word) >= 3 and vocabulary.knows(word)


def _split_joined(word: str, vocabulary: Lexicon) -> list[str] | None:
    """``reddog`` -> ``[red, dog]`` when exactly one split into two joinable words exists."""
    splits = [
        (word[:i], word[i:])
        for i in range(3, len(word) - 2)
        if vocabulary.joinable(word[:i]) and vocabulary.joinable(word[i:])  # both parts >= 3 letters
    ]
    return list(splits[0]) if len(splits) == 1 else None


def normalise_tag(raw: str, vocabulary: Lexicon) -> list[str]:
    """Zero or more clean words for one raw tag (empty: noise)."""
    tag = raw.strip()
    if not tag or (":" in tag and "=" in tag):
        return []  # machine tag
    if tag.isascii() and any(c.isupper() for c in tag[1:]):
        parts = [p.lower() for p in _CAMEL.findall(tag)]
        if len(parts) > 1 and all(_known(p, vocabulary) for p in parts):
            return parts
    word = re.sub(r"[\s\-_.]+", "", tag.lower())
    if not word or word.isdigit() or word in NOISE_TAGS or not any(c.isalpha() for c in word):
        return []
    if word.isascii() and word.isalpha() and not _known(word, vocabulary):
        split = _split_joined(word, vocabulary)
        if split:
            return split
    return [word]


def is_english(word: str, vocabulary: Lexicon) -> bool:
    """See the module doc: known lemma, Latin letters only."""
    return word.isascii() and word.isalpha() and _known(word, vocabulary) if len(word) >= 3 else word in vocabulary


def english_tags(raw_tags: Sequence[str], vocabulary: Lexicon) -> list[str]:
    """The photo's English tags as grouped lemmas, deduplicated, in the uploader's order."""
    words = (w for raw in raw_tags for w in normalise_tag(raw, vocabulary))
    return list(dict.fromkeys(group_key(lemma_of_tag(w)) for w in words if is_english(w, vocabulary)))


def english_tag_count(raw_tags: Sequence[str], vocabulary: Lexicon) -> int:
    """How many of the photo's tags are English, each tag counted once however it is written
    (``cat``/``cats`` once; ``bluesky`` -> ``blue sky`` once)."""
    keys = set()
    for raw in raw_tags:
        words = tuple(group_key(lemma_of_tag(w)) for w in normalise_tag(raw, vocabulary) if is_english(w, vocabulary))
        if words:
            keys.add(words)
    return len(keys)


def english_lexicon(root: DataRoot, rule: str = "wordfreq") -> Lexicon:
    """What counts as English for the crawl: ``wordfreq``'s common English words, or the captions' vocabulary."""
    if rule == "wordfreq":
        return WordfreqEnglish()
    if rule == "captions":
        return english_vocabulary(root)
    raise InputError(f"crawl.english must be one of {ENGLISH_RULES}, got {rule!r}")


def vocabulary_from(lemma_lists: Iterable[Iterable[str]], extra: Iterable[str] = ()) -> CaptionVocabulary:
    """The English vocabulary: caption lemmas (grouped) plus e.g. word-vector words."""
    return CaptionVocabulary({group_key(w) for words in lemma_lists for w in words} | {group_key(w) for w in extra})


def english_vocabulary(root: DataRoot) -> CaptionVocabulary:
    """Caption lemmas of ``clean/captions.parquet`` plus the word-vector vocabulary, if any."""
    if not root.clean_captions.is_file():
        raise MissingInputError(f"{root.clean_captions} does not exist: run the keywords step first (webvse keywords)")
    captions = read_table(root.clean_captions, CLEAN_CAPTIONS)
    words = {lemma_of_tag(t) for tokens in captions["tokens"] for t in tokens if t.isalpha() and t not in STOP_WORDS}
    vectors_file = root.vectors_dir / VECTORS_FILE
    extra = list(load_keyed_vectors(vectors_file).key_to_index) if vectors_file.is_file() else []
    return vocabulary_from([words], extra)
