"""Image downloads: allow-listed hosts only, size-capped, validated, content-addressed.

A download is accepted only when its URL's host is on the allow-list (Flickr's static
hosts by default, plus the loopback for the local server), its body stays under
``max_bytes``, and PIL can decode it fully within ``max_pixels`` (a decompression-bomb
guard). It is then stored once under ``web/images/<sha[:2]>/<sha>.jpg``, atomically.
A truncated or otherwise broken body is retried; what never validates is reported.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from PIL import Image

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
    timeout: float = 30.0


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    path: str
    width: int
    height: int


class DownloadRefused(InputError):
    """The URL is not allowed, or the body is too large or not an image."""


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and any(fnmatch.fnmatch(parts.hostname or "", pattern) for pattern in allowed)


def _fetch(session: requests.Session, url: str, policy: DownloadPolicy) -> bytes:
    with session.get(url, stream=True, timeout=policy.timeout) as response:
        response.raise_for_status()
        declared = int(response.headers.get("Content-Length") or 0)
        if declared > policy.max_bytes:
            raise DownloadRefused(f"{url}: {declared} bytes exceed the {policy.max_bytes}-byte cap")
        body = bytearray()
        for chunk in response.iter_content(1 << 16):
            body.extend(chunk)
            if len(body) > policy.max_bytes:
                raise DownloadRefused(f"{url}: body exceeds the {policy.max_bytes}-byte cap")
        return bytes(body)


def _validate(body: bytes, policy: DownloadPolicy) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as image:
        width, height = image.size
        if width * height > policy.max_pixels:
            raise DownloadRefused(f"{width}x{height} pixels exceed the {policy.max_pixels}-pixel guard")
        image.load()  # raises on truncated or corrupt data
    return width, height


def download_image(session: requests.Session, url: str, root: DataRoot, policy: DownloadPolicy = DownloadPolicy()) -> Downloaded:
    """Fetch, validate and store one image; raises after ``policy.attempts`` failures."""
    if not host_allowed(url, policy.allowed_hosts):
        raise DownloadRefused(f"host of {url} is not on the download allow-list")
    problem = ""
    for attempt in range(policy.attempts):
        try:
            body = _fetch(session, url, policy)
            width, height = _validate(body, policy)
        except DownloadRefused:
            raise
        except (requests.RequestException, OSError, Image.DecompressionBombError, SyntaxError) as exc:
            problem = type(exc).__name__
            time.sleep(policy.backoff * (2**attempt if attempt < 6 else 64))
            continue
        sha = hashlib.sha256(body).hexdigest()
        target = root.web_image(sha)
        if not target.exists():
            atomic_write_bytes(target, body)
        return Downloaded(sha, str(target.relative_to(root.root)), width, height)
    raise DownloadRefused(f"{url}: no valid image after {policy.attempts} attempts ({problem})")
