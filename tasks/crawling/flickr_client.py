"""A polite Flickr API client: rate limit, retries with backoff, Retry-After, clear key errors.

Wraps ``flickrapi.FlickrAPI(key, secret, format="parsed-json")`` with its REST URL set
to ``api_url`` (the real Flickr by default; the local server in tests and the demo).

* **Rate limit**: a sliding one-hour window of at most ``calls_per_hour`` calls per key
  (Flickr's rule: 3,600). Shared by every client of a process that uses the same key.
* **Retries**: 5xx, 429, timeouts, connection errors and unparseable (truncated) JSON are
  retried with exponential backoff and jitter; a 429's ``Retry-After`` is honoured
  (flickrapi drops response headers, so a requests response hook captures it).
* **Flickr's error answers** (``stat=fail``) are classified by :data:`FLICKR_ERROR_CODES`:
  temporary ones (105 "service currently unavailable", 106, 10) are retried like a 503;
  permanent ones stop at once with one clear line (:class:`FlickrRefused`; code 100, a bad
  key, as :class:`BadApiKey`).
* **Secrets**: the key and secret live only inside the flickrapi object; nothing here
  formats them into a message, and ``repr`` hides them.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flickrapi
import requests

from storage.errors import InputError, TransientError, WebvseError

FLICKR_REST_URL = "https://api.flickr.com/services/rest/"
KEY_ENV, SECRET_ENV = "FLICKR_API_KEY", "FLICKR_API_SECRET"
# The key a Flickr-compatible server on this machine accepts when none is set (the offline world's
# server is started with it): public, never a secret, and never sent to another host.
FLICKR_CALLS_PER_HOUR = 3600  # Flickr's limit per API key
OFFLINE_KEY = "webvse-offline-key"


class BadApiKey(WebvseError, RuntimeError):
    """Flickr refused the key (code 100): retrying cannot help."""


class FlickrUnavailable(TransientError, RuntimeError):
    """A call kept failing after every retry."""


class FlickrRefused(WebvseError, RuntimeError):
    """Flickr answered ``stat=fail`` with a code that retrying cannot change."""


# Flickr's error codes (https://www.flickr.com/services/api/flickr.photos.search.html and the
# API's common errors): True = temporary, retried with backoff; False = permanent, one clear
# error at once. A code not listed is treated as permanent: retrying an unknown refusal for
# hours is worse than stopping with its message.
FLICKR_ERROR_CODES: dict[int, tuple[bool, str]] = {
    1: (False, "too many tags in an ALL query"),
    2: (False, "unknown user"),
    3: (False, "parameterless searches are disabled"),
    4: (False, "no permission to view this pool"),
    10: (True, "the search API is not available right now"),
    11: (False, "no valid machine tags"),
    12: (False, "too many machine tags"),
    17: (False, "can only search within your own contacts"),
    18: (False, "illogical arguments"),
    95: (False, "SSL is required"),
    96: (False, "invalid signature"),
    97: (False, "missing signature"),
    98: (False, "login failed / invalid auth token"),
    99: (False, "user not logged in / insufficient permissions"),
    100: (False, "invalid API key"),
    105: (True, "service currently unavailable"),
    106: (True, "write operation failed (a temporary fault on Flickr's side)"),
    111: (False, "format not found"),
    112: (False, "method not found"),
    114: (False, "invalid SOAP envelope"),
    115: (False, "invalid XML-RPC method call"),
    116: (False, "bad URL found"),
}


def flickr_error_is_temporary(code: int) -> bool:
    return FLICKR_ERROR_CODES.get(code, (False, ""))[0]


@dataclass(frozen=True)
class Credentials:
    key: str
    secret: str

    def __repr__(self) -> str:
        return "Credentials(key=***, secret=***)"

    @property
    def key_id(self) -> str:
        """A non-reversible name for the key (rate-limit bucket, logs)."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:8]

    @classmethod
    def from_environment(cls, api_url: str) -> Credentials:
        key, secret = os.environ.get(KEY_ENV, ""), os.environ.get(SECRET_ENV, "")
        if key:
            return cls(key, secret or "unused")
        if api_url.startswith(("http://127.0.0.1", "http://localhost")):
            return cls(OFFLINE_KEY, "unused")
        raise BadApiKey(f"set {KEY_ENV} and {SECRET_ENV} (or a Prefect Secret block) to crawl {api_url}")


class HourlyRateLimit:
    """At most ``calls_per_hour`` calls in any sliding hour per key; ``acquire`` blocks until allowed.

    With ``state_file`` the window lives in that file under an exclusive ``flock``, so
    every process crawling with the same key (CLI runs, workers on one machine) shares
    one budget; without it, the threads of this process share one in memory.
    """

    _buckets: dict[tuple[str, int], collections.deque[float]] = {}
    _lock = threading.Lock()

    def __init__(
        self, key_id: str, calls_per_hour: int, state_file: Path | None = None, sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        if calls_per_hour < 1:
            raise InputError(f"flickr.calls_per_hour must be >= 1, got {calls_per_hour}")
        self.calls_per_hour, self.state_file, self.sleep, self.clock = calls_per_hour, state_file, sleep, clock
        with self._lock:
            self.window = self._buckets.setdefault((key_id, calls_per_hour), collections.deque())

    def _try(self, window: collections.deque[float]) -> float:
        """Take a slot (0.0) or say how long to wait."""
        now = self.clock()
        while window and now - window[0] >= 3600:
            window.popleft()
        if len(window) < self.calls_per_hour:
            window.append(now)
            return 0.0
        return 3600 - (now - window[0])

    def _try_shared(self, state_file: Path) -> float:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        with open(state_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            window = collections.deque(float(x) for x in handle.read().split())
            wait = self._try(window)
            handle.seek(0)
            handle.truncate()
            handle.write("\n".join(f"{t:.3f}" for t in window))
            return wait

    def acquire(self) -> None:
        while True:
            if self.state_file is not None:
                wait = self._try_shared(self.state_file)
            else:
                with self._lock:
                    wait = self._try(self.window)
            if wait <= 0:
                return
            self.sleep(wait)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 60.0
    timeout: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = min(self.max_delay, self.base_delay * 2**attempt) * rng.uniform(0.5, 1.5)
        return max(backoff, retry_after or 0.0)


class FlickrClient:
    """``search(**params)`` and ``call(method, **params)`` with the politeness above."""

    def __init__(
        self,
        credentials: Credentials,
        api_url: str = FLICKR_REST_URL,
        calls_per_hour: int = FLICKR_CALLS_PER_HOUR,
        retry: RetryPolicy = RetryPolicy(),
        log: Callable[[str], None] = print,
        seed: int = 0,
        rate_state_dir: Path | None = None,
        before_call: Callable[[], None] | None = None,
    ) -> None:
        self.api = flickrapi.FlickrAPI(credentials.key, credentials.secret, format="parsed-json", store_token=False)
        self.api.REST_URL = api_url
        state = rate_state_dir / f"api-calls-{credentials.key_id}.log" if rate_state_dir is not None else None
        self.limit = HourlyRateLimit(credentials.key_id, calls_per_hour, state)
        self.retry, self.log = retry, log
        self.before_call = before_call  # e.g. a Prefect global rate limit shared by every worker
        self.calls = 0
        self._retry_after = threading.local()
        self._rng = random.Random(seed)
        self.api.flickr_oauth.session.hooks["response"].append(self._remember_retry_after)

    def _remember_retry_after(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        value = response.headers.get("Retry-After")
        self._retry_after.value = float(value) if value and value.replace(".", "", 1).isdigit() else None

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        last_problem = ""
        for attempt in range(self.retry.attempts):
            self.limit.acquire()
            if self.before_call is not None:
                self.before_call()
            self.calls += 1
            self._retry_after.value = None
            try:
                return self.api.do_flickr_call(method, timeout=self.retry.timeout, **params)
            except flickrapi.FlickrError as err:
                if err.code == 100:
                    raise BadApiKey("Flickr refused the API key (code 100: invalid key); check FLICKR_API_KEY") from None
                if err.code is not None and not flickr_error_is_temporary(err.code):
                    meaning = FLICKR_ERROR_CODES.get(err.code, (False, "an error code webvse does not know"))[1]
                    raise FlickrRefused(f"Flickr refused {method} with code {err.code} ({meaning}): {err}") from None
                last_problem = str(err)  # 'Status code 503 received', 'Error: 105: Service currently unavailable', ...
            except (requests.RequestException, ValueError) as err:  # timeouts, resets, truncated JSON
                last_problem = type(err).__name__
            wait = self.retry.delay(attempt, getattr(self._retry_after, "value", None), self._rng)
            self.log(f"flickr: {method} failed ({last_problem}); retry {attempt + 1}/{self.retry.attempts - 1} in {wait:.2f}s")
            time.sleep(wait)
        raise FlickrUnavailable(f"{method} failed {self.retry.attempts} times; last: {last_problem}")

    def search(self, **params: Any) -> dict[str, Any]:
        """One page of ``flickr.photos.search`` (``photos`` part, counts as ints)."""
        photos = self.call("flickr.photos.search", **params)["photos"]
        return {**photos, "page": int(photos["page"]), "pages": int(photos["pages"]), "total": int(photos["total"])}
