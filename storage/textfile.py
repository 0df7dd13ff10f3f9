"""Reading a user's text file strictly: a line that is not UTF-8 is an error naming it.

Replacing or skipping undecodable bytes would silently change a caption or a tag list;
the user gets the file and line to fix instead.
"""

from __future__ import annotations

from pathlib import Path

from storage.errors import InputError


def read_utf8(path: str | Path) -> str:
    """The whole text of ``path`` (a leading BOM dropped); raises InputError at the first bad line."""
    source = Path(path)
    raw = source.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{source}: line {line} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
