"""Image downloads: allow-listed hosts only, size-capped, validated, content-addressed.

A download is accepted only when its URL's host is on the allow-list (Flickr's static
hosts by default, plus the loopback for the local server), its body stays under
``max_bytes``, and PIL can decode it fully within ``max_pixels`` (a decompression-bomb
guard). It is then stored once under ``web/images/<sha[:2]>/<sha>.jpg``, atomically.
Every redirect hop is checked against the allow-list. Permanent failures (404, zero bytes,
HTML saved as an image) fail at once; transient ones (5xx, 429, a truncated body) back off
and retry, all within one deadline per image.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from PIL import Image, UnidentifiedImageError

from storage.atomic import atomic_write_bytes
from storage.errors import InputError
from storage.layout import DataRoot

DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = ("live.staticflickr.com", "*.staticflickr.com", "127.0.0.1", "localhost")


@dataclass(frozen=True)
class DownloadPolicy:
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    max_bytes: int = 10 << 20
    max_pixels: int = 40_000_000
    attempts: int = 10
    backoff: float = 0.5
    timeout: float = 30.0  # per connect / read
    deadline: float = 120.0  # for the whole download of one image, every attempt and wait included
    max_redirects: int = 5


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    path: str
    width: int
    height: int


class DownloadRefused(InputError):
    """The image cannot be had: a host not allowed, too large, not an image, gone, or out of time."""


class _Transient(Exception):
    """A failure worth another attempt (5xx, 429, a reset, a truncated body)."""


# 4xx answers other than these mean the image is not there for us: retrying cannot help.
_RETRIED_STATUS = {408, 425, 429}


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and any(fnmatch.fnmatch(parts.hostname or "", pattern) for pattern in allowed)


def _fetch(session: requests.Session, url: str, policy: DownloadPolicy, deadline: float) -> bytes:
    """The body of ``url``, following redirects by hand so that every hop is checked against the allow-list."""
    for _hop in range(policy.max_redirects + 1):
        if not host_allowed(url, policy.allowed_hosts):
            raise DownloadRefused(f"host of {url} is not on the download allow-list")
        timeout = max(0.1, min(policy.timeout, deadline - time.monotonic()))
        try:
            with session.get(url, stream=True, timeout=timeout, allow_redirects=False) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code >= 500 or response.status_code in _RETRIED_STATUS:
                    raise _Transient(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise DownloadRefused(f"{url}: HTTP {response.status_code}")
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > policy.max_bytes:
                    raise DownloadRefused(f"{url}: {declared} bytes exceed the {policy.max_bytes}-byte cap")
                body = bytearray()
                for chunk in response.iter_content(1 << 16):
                    body.extend(chunk)
                    if len(body) > policy.max_bytes:
                        raise DownloadRefused(f"{url}: body exceeds the {policy.max_bytes}-byte cap")
                    if time.monotonic() > deadline:  # a server that trickles bytes never hits the read timeout
                        raise DownloadRefused(f"{url}: not complete within the {policy.deadline:.0f}s deadline")
                if declared and len(body) < declared:
                    raise _Transient(f"truncated body ({len(body)} of {declared} bytes)")
                return bytes(body)
        except requests.RequestException as exc:
            raise _Transient(type(exc).__name__) from None
    raise DownloadRefused(f"{url}: more than {policy.max_redirects} redirects")


def _validate(body: bytes, policy: DownloadPolicy) -> tuple[int, int]:
    """Width and height of a fully decodable image; a body that is no image at all is refused,
    one that breaks off while decoding is transient (a truncated transfer)."""
    if not body:
        raise DownloadRefused("zero bytes")
    try:
        image = Image.open(io.BytesIO(body))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DownloadRefused(f"not an image ({type(exc).__name__}; starts with {body[:16]!r})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # an image header cut short
        raise _Transient(f"undecodable body ({exc})") from None
    with image:
        width, height = image.size
        if width * height > policy.max_pixels:
            raise DownloadRefused(f"{width}x{height} pixels exceed the {policy.max_pixels}-pixel guard")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise _Transient(f"undecodable body ({exc})") from None
    return width, height


def download_image(session: requests.Session, url: str, root: DataRoot, policy: DownloadPolicy = DownloadPolicy()) -> Downloaded:
    """Fetch, validate and store one image.

    Permanent failures (a host not allowed on any redirect hop, a 4xx, zero bytes, a body that
    is no image, too large) fail at once; transient ones (5xx, 429, resets, truncated bodies)
    are retried with exponential backoff, all within one ``policy.deadline`` for the image.
    """
    deadline = time.monotonic() + policy.deadline
    problem = ""
    for attempt in range(policy.attempts):
        try:
            body = _fetch(session, url, policy, deadline)
            width, height = _validate(body, policy)
        except _Transient as exc:
            problem = str(exc)
            wait = policy.backoff * 2 ** min(attempt, 6)
            if time.monotonic() + wait > deadline:
                raise DownloadRefused(f"{url}: no valid image within the {policy.deadline:.0f}s deadline ({problem})") from None
            time.sleep(wait)
            continue
        sha = hashlib.sha256(body).hexdigest()
        target = root.web_image(sha)
        if not target.exists():
            atomic_write_bytes(target, body)
        return Downloaded(sha, str(target.relative_to(root.root)), width, height)
    raise DownloadRefused(f"{url}: no valid image after {policy.attempts} attempts ({problem})")
