"""Which tags and photos each English-tag rule accepts, on real Flickr tags (MIRFLICKR) and the world.

    python benchmarks/english_rule_report.py [--mirflickr ../shared/data/mirflickr/tags.csv]
        [--captions ../shared/data/flickr8k/captions.csv] [--world-root webvse-data]

The ``captions`` rule needs a clean vocabulary: the Flickr8k training captions for MIRFLICKR
(the clean set of the real-photo experiment), the data root's own captions for the world.
Prints, per data set: distinct tags accepted by each rule, photos with >= 2 English tags
(the paper's filter) under each, and 20 examples of each disagreement.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import pandas as pd

from storage.layout import DataRoot
from tasks.text.backends import lemma_of_tag
from tasks.text.stop_words import STOP_WORDS
from tasks.text.web_tags import (
    CaptionVocabulary,
    WordfreqEnglish,
    english_tag_count,
    english_vocabulary,
    is_english,
    normalise_tag,
    vocabulary_from,
)
from webvse_model.text import tokenize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def caption_vocabulary(captions_csv: Path) -> CaptionVocabulary:
    """The ``captions`` rule's vocabulary from a Flickr8k-style captions.csv (training split)."""
    table = pd.read_csv(captions_csv)
    if "split" in table:
        table = table[table["split"] == "train"]
    words = {lemma_of_tag(t) for text in table["caption"] for t in tokenize(str(text)) if t.isalpha() and t not in STOP_WORDS}
    return vocabulary_from([words])


def compare(name: str, tag_lists: list[list[str]], vocabulary: CaptionVocabulary) -> None:
    rules = {"wordfreq": WordfreqEnglish(), "captions": vocabulary}
    counts = Counter(tag for tags in tag_lists for tag in tags)
    accepted = {
        rule: {t for t in counts if any(is_english(w, lex) for w in normalise_tag(t, lex))} for rule, lex in rules.items()
    }
    photos = {rule: sum(english_tag_count(tags, lex) >= 2 for tags in tag_lists) for rule, lex in rules.items()}
    print(f"\n## {name}: {len(tag_lists):,} photos, {len(counts):,} distinct tags, {sum(counts.values()):,} tag uses\n")
    print("| rule | distinct tags accepted | tag uses accepted | photos with >= 2 English tags |\n|---|---|---|---|")
    for rule in rules:
        uses = sum(counts[t] for t in accepted[rule])
        print(f"| {rule} | {len(accepted[rule]):,} ({len(accepted[rule]) / len(counts):.0%}) | {uses:,} | "
              f"{photos[rule]:,} ({photos[rule] / len(tag_lists):.0%}) |")  # fmt: skip
    for only, other in (("wordfreq", "captions"), ("captions", "wordfreq")):
        tags = sorted(accepted[only] - accepted[other], key=lambda t: -counts[t])
        print(
            f"\nEnglish by {only} only ({len(tags)} tags; the 20 most used): "
            + ", ".join(f"`{t}` ({counts[t]})" for t in tags[:20])
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirflickr", type=Path, default=SHARED / "mirflickr" / "tags.csv")
    parser.add_argument("--captions", type=Path, default=SHARED / "flickr8k" / "captions.csv")
    parser.add_argument("--world-root", type=Path, default=None, help="a data root with world/corpus and clean/captions.parquet")
    args = parser.parse_args()
    if args.mirflickr.is_file():
        tags = pd.read_csv(args.mirflickr)["tags"].fillna("").map(str.split).tolist()
        compare("MIRFLICKR (real Flickr user tags) vs Flickr8k training captions", tags, caption_vocabulary(args.captions))
    if args.world_root is not None:
        root = DataRoot.resolve(args.world_root)
        corpus = pd.read_parquet(root.world_corpus_dir / "photos.parquet")
        compare("the offline world's corpus vs its captions", [list(t) for t in corpus["tags"]], english_vocabulary(root))


if __name__ == "__main__":
    main()
