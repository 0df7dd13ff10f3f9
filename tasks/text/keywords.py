"""Keywords: caption text -> lemmas -> the keyword list; and every caption's dummy tags.

As in the paper: lemmatise the training captions, drop stop-words, punctuation and
numbers, group similar words, count, keep the ``top_n`` most frequent. The keywords
drive the crawl (one Flickr search each) and the curriculum (rank = difficulty).

**Grouping.** Surface forms are grouped under one keyword when they share a lemma
(``dogs, dog -> dog``; ``riding, rides -> ride``), when they differ only by hyphens or
spaces inside (``t-shirt, tshirt``), or when they are British/American spelling
variants of one word (a fixed table: ``colour/color``, ``grey/gray`` ...). Synonyms
(``dog``/``puppy``) are *not* grouped: on Flickr they find different photos, and the
paper's keywords are words, not concepts. ``variants`` records the surface forms seen.

**Dummy tags.** A clean image has no tags, so the paper uses the nouns and verbs of its
captions: per caption the lemmas of NOUN/PROPN/VERB tokens (auxiliaries and
stop-words out), and per image their union in order of first appearance.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from storage.errors import InputError
from storage.layout import DataRoot
from storage.tables import CLEAN_CAPTIONS, KEYWORDS, read_table, write_table
from tasks.pipeline_config import KeywordsConfig
from tasks.text.backends import PosLemmaBackend, Token
from tasks.text.stop_words import STOP_WORDS

CONTENT_POS = frozenset({"NOUN", "PROPN", "VERB", "ADJ", "ADV"})
TAG_POS = frozenset({"NOUN", "PROPN", "VERB"})
SPELLING_VARIANTS: dict[str, str] = {
    "gray": "grey", "color": "colour", "colored": "coloured", "favorite": "favourite", "center": "centre",
    "theater": "theatre", "airplane": "aeroplane", "tire": "tyre", "donut": "doughnut", "jewelry": "jewellery",
    "pajamas": "pyjamas", "mustache": "moustache", "catalog": "catalogue", "neighbor": "neighbour",
    "harbor": "harbour", "barbecue": "barbeque",
}  # fmt: skip
_WORD = re.compile(r"^[a-z][a-z'\-]{0,28}[a-z]$")  # 2..30 letters: longer "words" are junk
_HYPHENATED = re.compile(r"(?<=[A-Za-z])-(?=[A-Za-z])")
MAX_CAPTION_CHARS = 2000  # a longer "caption" is data corruption, not a description: cut, and counted


def group_key(lemma: str) -> str:
    """The keyword a lemma counts towards (hyphens/spaces out, one spelling per word)."""
    key = lemma.lower().replace("-", "").replace(" ", "").replace("'s", "")
    return SPELLING_VARIANTS.get(key, key)


def _is_word(token: Token) -> bool:
    lemma = token.lemma.lower()
    return bool(_WORD.match(lemma)) and lemma not in STOP_WORDS and token.text.lower() not in STOP_WORDS


def content_words(tokens: Sequence[Token]) -> list[tuple[str, str]]:
    """``(keyword, surface form)`` of every content word of one caption."""
    return [(group_key(t.lemma), t.text.lower()) for t in tokens if t.pos in CONTENT_POS and _is_word(t)]


def caption_dummy_tags(tokens: Sequence[Token]) -> list[str]:
    """Nouns and verbs of one caption as grouped lemmas, first appearance first."""
    return list(dict.fromkeys(group_key(t.lemma) for t in tokens if t.pos in TAG_POS and _is_word(t)))


def union_in_order(tag_lists: Iterable[Sequence[str]]) -> list[str]:
    """An image's tag set: the union over its captions, in order of first appearance."""
    return list(dict.fromkeys(tag for tags in tag_lists for tag in tags))


@dataclass
class CaptionAnalysis:
    """What the backend made of a list of captions, with counts of odd input."""

    words: list[list[tuple[str, str]]]
    dummy_tags: list[list[str]]
    counts: Counter[str] = field(default_factory=Counter)


def analyse_captions(captions: Sequence[str], backend: PosLemmaBackend) -> CaptionAnalysis:
    """Content words and dummy tags of every caption (never raises on odd text)."""
    counts: Counter[str] = Counter()
    cleaned = []
    for text in captions:
        text = text if isinstance(text, str) else ""
        if not text.strip():
            counts["empty"] += 1
        if len(text) > MAX_CAPTION_CHARS:
            counts["too_long_cut"] += 1
            text = text[:MAX_CAPTION_CHARS]
        if not text.isascii():
            counts["non_ascii"] += 1
        cleaned.append(_HYPHENATED.sub("", text))  # "t-shirt" -> "tshirt": one word, as in "tshirt"
    words, tags = [], []
    for tokens in backend.analyse(cleaned):
        caption_words = content_words(tokens)
        if not caption_words:
            counts["no_content_word"] += 1
        words.append(caption_words)
        tags.append(caption_dummy_tags(tokens))
    counts["captions"] = len(cleaned)
    return CaptionAnalysis(words, tags, counts)


def keyword_table(words: Iterable[Sequence[tuple[str, str]]], top_n: int) -> pd.DataFrame:
    """``keyword, count, rank, variants`` of the ``top_n`` most frequent keywords (ties: alphabetical)."""
    if top_n < 1:
        raise InputError(f"keywords.top_n must be >= 1, got {top_n}")
    counts: Counter[str] = Counter()
    surfaces: dict[str, Counter[str]] = defaultdict(Counter)
    for caption in words:
        for keyword, surface in caption:
            counts[keyword] += 1
            surfaces[keyword][surface] += 1
    ranked = sorted(counts, key=lambda k: (-counts[k], k))[:top_n]
    return pd.DataFrame(
        {
            "keyword": ranked,
            "count": [counts[k] for k in ranked],
            "rank": list(range(1, len(ranked) + 1)),
            "variants": [sorted(surfaces[k], key=lambda s: (-surfaces[k][s], s)) for k in ranked],
        }
    )


def run_keywords(
    root: DataRoot,
    backend: PosLemmaBackend,
    top_n: int = KeywordsConfig.model_fields["top_n"].default,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Keywords from the training captions -> ``keywords.parquet``; dummy tags for every
    caption -> ``clean/captions.parquet`` (rewritten atomically). Returns the counts."""
    captions = read_table(root.clean_captions, CLEAN_CAPTIONS)
    analysis = analyse_captions(captions["text"].tolist(), backend)
    train = (captions["split"] == "train").to_numpy()
    table = keyword_table((w for w, keep in zip(analysis.words, train) if keep), top_n)
    write_table(root.keywords, table, KEYWORDS)
    captions["dummy_tags"] = analysis.dummy_tags
    write_table(root.clean_captions, captions, CLEAN_CAPTIONS)
    counts = dict(analysis.counts) | {"keywords": len(table)}
    log(f"keywords: {len(table)} keywords from {int(train.sum())} training captions; input notes {dict(analysis.counts)}")
    return counts


def image_dummy_tags(captions: pd.DataFrame) -> dict[str, list[str]]:
    """Each image's tag set from ``clean/captions.parquet`` rows (caption order kept)."""
    ordered = captions.sort_values("caption_id", kind="stable")
    return {image_id: union_in_order(group["dummy_tags"]) for image_id, group in ordered.groupby("image_id", sort=False)}
