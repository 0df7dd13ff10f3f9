"""Flickr tags: normalise them, drop noise, and decide which are English.

The crawler keeps a photo only with at least 2 English tags (the paper's rule); this
module is that decision, so the crawl and the tag features agree on it.

* **Normalise**: lower-case, strip, drop machine tags (``geo:lat=..``), numbers and
  years, and camera/brand/filler noise (a fixed list). Split ``CamelCase`` tags
  (``RedDog`` -> ``red dog``) and joined lower-case words (``reddog``) *only where safe*:
  when every part is a known English word of >= 3 letters and the split is unique.
* **English**: a tag is English when its context-free lemma (``lemminflect``: noun, then
  verb) is in the known vocabulary: the lemmas of the clean captions plus, when given,
  the word-vector vocabulary. Tags in other scripts are never English; Latin-script
  foreign words (``perro``) are not, because they are in neither vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from storage.errors import MissingInputError
from storage.layout import DataRoot
from storage.tables import CLEAN_CAPTIONS, read_table
from tasks.keywords import group_key
from tasks.text_backends import STOP_WORDS, lemma_of_tag
from tasks.word_vectors import VECTORS_FILE, load_keyed_vectors

NOISE_TAGS: frozenset[str] = frozenset(
    "canon nikon sony iphone android samsung fujifilm fuji olympus pentax leica panasonic lumix gopro dslr slr mirrorless "
    "50mm 35mm 85mm 18mm 55mm lens eos eos5d eos5dmarkii d750 nikond750 instagood instagram flickr photo photos "
    "photography picture pictures pic image img dsc untitled".split()
)  # fmt: skip
_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def _known(word: str, vocabulary: frozenset[str] | set[str]) -> bool:
    return len(word) >= 3 and group_key(lemma_of_tag(word)) in vocabulary


def _split_joined(word: str, vocabulary: frozenset[str] | set[str]) -> list[str] | None:
    """``reddog`` -> ``[red, dog]`` when exactly one split into two known words exists."""
    splits = [(word[:i], word[i:]) for i in range(3, len(word) - 2) if _known(word[:i], vocabulary) and _known(word[i:], vocabulary)]
    return list(splits[0]) if len(splits) == 1 else None


def normalise_tag(raw: str, vocabulary: frozenset[str] | set[str]) -> list[str]:
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


def is_english(word: str, vocabulary: frozenset[str] | set[str]) -> bool:
    """See the module doc: known lemma, Latin letters only."""
    return word.isascii() and word.isalpha() and _known(word, vocabulary) if len(word) >= 3 else word in vocabulary


def english_tags(raw_tags: Sequence[str], vocabulary: frozenset[str] | set[str]) -> list[str]:
    """The photo's English tags as grouped lemmas, deduplicated, in the uploader's order."""
    words = (w for raw in raw_tags for w in normalise_tag(raw, vocabulary))
    return list(dict.fromkeys(group_key(lemma_of_tag(w)) for w in words if is_english(w, vocabulary)))


def vocabulary_from(lemma_lists: Iterable[Iterable[str]], extra: Iterable[str] = ()) -> frozenset[str]:
    """The English vocabulary: caption lemmas (grouped) plus e.g. word-vector words."""
    return frozenset(group_key(w) for words in lemma_lists for w in words) | frozenset(group_key(w) for w in extra)


def english_vocabulary(root: DataRoot) -> frozenset[str]:
    """Caption lemmas of ``clean/captions.parquet`` plus the word-vector vocabulary, if any."""
    if not root.clean_captions.is_file():
        raise MissingInputError(f"{root.clean_captions} does not exist: run the keywords step first (webvse keywords)")
    captions = read_table(root.clean_captions, CLEAN_CAPTIONS)
    words = {lemma_of_tag(t) for tokens in captions["tokens"] for t in tokens if t.isalpha() and t not in STOP_WORDS}
    vectors_file = root.vectors_dir / VECTORS_FILE
    extra = list(load_keyed_vectors(vectors_file).key_to_index) if vectors_file.is_file() else []
    return vocabulary_from([words], extra)
