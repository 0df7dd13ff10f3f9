"""The one exception base of webvse, in the lowest layer so every package can raise it.

Three kinds, because callers act on the kind, not on the message:

* :class:`InputError` / :class:`MissingInputError`: the input is wrong (a bad setting, a
  corrupt or missing file). Running again cannot help, so the pipeline never retries them
  and the CLI prints them as one line (exit 2). They also derive from ``ValueError`` /
  ``FileNotFoundError`` so code that already catches those keeps working.
* :class:`TransientError`: a service that may answer later (Flickr unavailable). Retried.
* any other :class:`WebvseError` (an unavailable encoder or NLP model, a refused checkpoint)
  is a known, explained failure: one line, no retry.

Anything that is *not* a ``WebvseError`` is a bug or an unexpected crash: it keeps its
traceback.
"""

from __future__ import annotations

import errno


class WebvseError(Exception):
    """Base of every error webvse raises on purpose; its message says what to do."""


class InputError(WebvseError, ValueError):
    """A setting, file or record that cannot be used as it is."""


class MissingInputError(WebvseError, FileNotFoundError):
    """A file or folder the step needs does not exist."""


class TransientError(WebvseError):
    """A failure that may go away on its own (a service unavailable, a timeout)."""


# Programming errors and inputs that will be just as wrong on the next attempt.
_NEVER_TRANSIENT: tuple[type[BaseException], ...] = (
    TypeError, AttributeError, NameError, KeyError, IndexError, AssertionError, NotImplementedError,
    ZeroDivisionError, PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
)  # fmt: skip
_FULL_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def is_transient(exc: BaseException) -> bool:
    """Whether trying again may succeed: retries are for these only.

    A :class:`TransientError`, a connection or time-out error, or an unexpected crash that is
    neither a known webvse error nor a programming error (a worker process killed by the OS,
    say: the retry resumes from what was committed).
    """
    if isinstance(exc, TransientError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, (WebvseError, *_NEVER_TRANSIENT)):
        return False
    return not (isinstance(exc, OSError) and exc.errno in _FULL_DISK)
