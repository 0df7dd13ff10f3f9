"""The stop-words the keywords, the word vectors and the web tags drop: gensim's and spaCy's lists, united.

Its own module because importing those lists costs seconds (gensim pulls in scipy, spaCy its
whole package), which the configuration and ``webvse --help`` must not pay.
"""

from __future__ import annotations

from gensim.parsing.preprocessing import STOPWORDS as GENSIM_STOPWORDS
from spacy.lang.en.stop_words import STOP_WORDS as SPACY_STOPWORDS

STOP_WORDS: frozenset[str] = frozenset(GENSIM_STOPWORDS) | frozenset(SPACY_STOPWORDS)
