"""spaCy's attribute ruler applied by table look-up instead of spaCy's ``Matcher``: the same
attributes on the same tokens, at a fraction of the cost.

``en_core_web_sm``'s ``attribute_ruler`` turns the tagger's fine tags into POS, morphology
and some lemmas with 180 token patterns, most of them "this tag and one of these words". Run
through spaCy's ``Matcher``, whose set predicates (``{"IN": [...]}``) are Python calls per
token and pattern, it took 1.3 s of the 3.3 s that the pipeline spends on 5,000 captions
(23 µs a token), more than the tagger's neural network. Every pattern here constrains single
tokens by their lower-cased text, tag, dependency label and whether they are whitespace (by
value, set or regular expression), so
which patterns fit a token is a function of those four values: computed once per distinct
token and kept. Patterns of several tokens are checked only where their first token fits.
Matches are then applied exactly as the ruler applies them, sorted by pattern so that later
patterns win, with spaCy's own attribute setter.

:func:`lookup_attribute_ruler` returns None for a ruler whose patterns use anything else (a
quantifier, another attribute or operator): the caller keeps spaCy's own ruler.
``tests/test_text.py`` checks that both give every token of real Flickr8k captions the same
POS, tag, morphology and lemma.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

TokenKey = tuple[str, str, str, bool]  # lower-cased text, fine tag, dependency label, is whitespace
_ATTRIBUTES = {"LOWER": 0, "TAG": 1, "DEP": 2, "IS_SPACE": 3}

Predicate = Callable[[TokenKey], bool]


def _equal(at: int, value: object) -> Predicate:
    return lambda key: key[at] == value


def _member(at: int, members: frozenset[str], inside: bool) -> Predicate:
    return lambda key: (key[at] in members) == inside


def _search(at: int, pattern: str) -> Predicate:
    search = re.compile(pattern).search
    return lambda key: search(str(key[at])) is not None


def _predicate(spec: dict[str, Any]) -> Predicate | None:
    """A token pattern as a test on a :data:`TokenKey`, with the ``Matcher``'s meaning of each
    operator (``IN``, ``NOT_IN``, ``REGEX`` searched anywhere); None for anything else."""
    checks: list[Predicate] = []
    for name, value in spec.items():
        if name not in _ATTRIBUTES:
            return None
        at = _ATTRIBUTES[name]
        if isinstance(value, bool if name == "IS_SPACE" else str):
            checks.append(_equal(at, value))
        elif name != "IS_SPACE" and isinstance(value, dict) and len(value) == 1:
            ((operator, operand),) = value.items()
            if operator == "REGEX":
                checks.append(_search(at, operand))
            elif operator in ("IN", "NOT_IN"):
                checks.append(_member(at, frozenset(operand), operator == "IN"))
            else:
                return None
        else:
            return None
    return lambda key: all(check(key) for check in checks)


class AttributeLookup:
    """Applies a spaCy ``AttributeRuler``'s patterns to a ``Doc`` without its ``Matcher``."""

    def __init__(self, ruler: Any, single: list[tuple[int, Predicate]], multi: list[tuple[int, Sequence[Predicate]]]) -> None:
        self.ruler = ruler  # its normalised attributes and token indices, applied as it applies them
        self.single, self.multi = single, multi
        self._fitting: dict[TokenKey, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def _patterns_fitting(self, key: TokenKey) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(single-token patterns that fit this token, multi-token patterns whose first token it fits)."""
        found = self._fitting.get(key)
        if found is None:
            single = tuple(attr_id for attr_id, fits in self.single if fits(key))
            starts = tuple(n for n, (_, tokens) in enumerate(self.multi) if tokens[0](key))
            found = self._fitting[key] = (single, starts)
        return found

    def __call__(self, doc: Any) -> Any:
        from spacy.tokens._retokenize import set_token_attrs

        keys = [(t.lower_, t.tag_, t.dep_, t.is_space) for t in doc]
        matches: list[tuple[int, int, int]] = []
        for i, key in enumerate(keys):
            single, starts = self._patterns_fitting(key)
            matches.extend((attr_id, i, i + 1) for attr_id in single)
            for n in starts:
                attr_id, tokens = self.multi[n]
                end = i + len(tokens)
                if end <= len(keys) and all(fits(keys[i + j]) for j, fits in enumerate(tokens[1:], 1)):
                    matches.append((attr_id, i, end))
        matches.sort()  # by pattern, as the ruler sorts them: a later pattern's attributes win
        for attr_id, start, end in matches:
            set_token_attrs(doc[start:end][self.ruler.indices[attr_id]], self.ruler.attrs[attr_id])
        return doc


def lookup_attribute_ruler(ruler: Any) -> AttributeLookup | None:
    """The look-up version of ``ruler`` (a spaCy ``AttributeRuler``), or None when its patterns use
    what :func:`_predicate` does not handle."""
    single: list[tuple[int, Predicate]] = []
    multi: list[tuple[int, Sequence[Predicate]]] = []
    for attr_id, entry in enumerate(ruler.patterns):  # in attribute id order: the ruler's own numbering
        for pattern in entry["patterns"]:
            tokens = [_predicate(spec) for spec in pattern]
            if not tokens or any(t is None for t in tokens):
                return None
            checks = [t for t in tokens if t is not None]
            if len(checks) == 1:
                single.append((attr_id, checks[0]))
            else:
                multi.append((attr_id, checks))
    return AttributeLookup(ruler, single, multi)
