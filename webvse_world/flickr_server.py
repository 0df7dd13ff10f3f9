"""A Flickr-compatible REST server over a generated corpus, on 127.0.0.1 only.

It answers what ``flickrapi.FlickrAPI(key, secret, format="parsed-json")`` sends to
``/services/rest/`` (form-encoded POST or GET, key as ``api_key`` or in the OAuth
header's ``oauth_consumer_key``):

* ``flickr.photos.search``: ``text`` / ``tags`` + ``tag_mode``, ``sort``, ``page``,
  ``per_page`` (clamped to 500), ``license``, ``min_upload_date`` / ``max_upload_date``,
  ``extras`` (``tags, owner_name, license, url_m, date_upload``). As on Flickr, at most
  4,000 results are reachable: pages past the cap repeat the last reachable page, while
  ``total`` still tells the true count; ``pages``/``total`` come as strings in part of
  the answers, as Flickr sometimes sends them;
* ``flickr.photos.licenses.getInfo`` and ``flickr.test.echo``;
* Flickr's error envelope ``{"stat": "fail", "code", "message"}`` with its codes (100
  bad key, 112 unknown method, 3 parameterless search, 18 illogical arguments, 111
  unknown format) -- never a 500 with a traceback;
* the image files behind ``url_m``: ``/<server>/<id>_<secret>_<size>.jpg``.

A corpus with a clock (``clock.json``, see :mod:`webvse_world.web`) is served as it stands
at its simulated "now": photos uploaded later are not found (and :attr:`Corpus.now` is the
crawler's clock for a local crawl). The clock is read when the server starts.

Fault injection (:class:`Faults`) for tests and benchmarks: 500/503 answers, 429 with
``Retry-After``, slow answers, truncated JSON and truncated images, each at its own
rate. Each draw is a hash of (seed, request, how many times that same request was
seen), so a fault-laden run is reproducible and a retried request gets a fresh draw.
API keys never reach a log line: the access log prints paths without query strings.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow.parquet as pq

from storage.errors import InputError
from webvse_world.web import LICENSES, PHOTOS_FILE, read_clock

MAX_PER_PAGE = 500
RESULT_CAP = 4000
DEFAULT_KEY = "webvse-offline-key"
SORTS = ("date-posted-desc", "date-posted-asc", "relevance", "interestingness-desc", "interestingness-asc")
IMAGE_PATH = re.compile(r"^/(\w+)/(\w+?)_([0-9a-f]+)_([a-z])\.jpg$")
_OAUTH_KEY = re.compile(r'oauth_consumer_key="([^"]*)"')


class CorpusError(InputError):
    """The corpus folder is missing or malformed."""


@dataclass(frozen=True)
class Faults:
    """Rates (0..1) of each injected fault; they are drawn from disjoint ranges of one draw."""

    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: int = 1
    slow_rate: float = 0.0
    slow_seconds: float = 0.5
    truncated_json_rate: float = 0.0
    truncated_image_rate: float = 0.0
    unavailable_rate: float = 0.0  # API answers ``stat=fail``, code 105 "Service currently unavailable" (HTTP 200)
    string_counts_rate: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        rates = (
            self.error_rate,
            self.throttle_rate,
            self.slow_rate,
            self.truncated_json_rate,
            self.truncated_image_rate,
            self.unavailable_rate,
        )
        if any(not 0 <= r <= 1 for r in rates) or sum(rates) > 1:
            raise InputError(f"fault rates must lie in [0, 1] and sum to at most 1, got {rates}")


def flickr_clean_tag(tag: str) -> str:
    """Flickr's clean tag form: lower-case, without spaces and most punctuation (machine tags kept)."""
    tag = tag.strip().lower()
    return tag if ":" in tag and "=" in tag else re.sub(r"[\s\"'.,;!?()\[\]{}]+", "", tag)


class Corpus:
    """The photos of a corpus folder with inverted indexes for tag and text search."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        table_path = self.folder / PHOTOS_FILE
        if not self.folder.is_dir():
            raise CorpusError(f"corpus folder {self.folder} does not exist (generate one with 'webvse world')")
        if not table_path.is_file():
            raise CorpusError(f"corpus folder {self.folder} has no {PHOTOS_FILE}")
        try:
            rows = pq.read_table(table_path).to_pylist()
        except Exception as exc:  # any unreadable Parquet is the same error to the user
            raise CorpusError(f"{table_path} is not a readable corpus table: {exc}") from exc
        needed = {"photo_id", "owner", "title", "tags", "license", "date_upload", "server", "secret", "file"}
        if rows and not needed <= set(rows[0]):
            raise CorpusError(f"{table_path} lacks columns {sorted(needed - set(rows[0]))}")
        self.now = read_clock(self.folder)
        if self.now is not None:  # the future is not online yet
            rows = [r for r in rows if int(r["date_upload"]) <= self.now]
        self.photos = sorted(rows, key=lambda r: (-int(r["date_upload"]), r["photo_id"]))
        self.by_id = {p["photo_id"]: p for p in self.photos}
        self.tag_index: dict[str, set[int]] = defaultdict(set)
        self.word_index: dict[str, set[int]] = defaultdict(set)
        for i, photo in enumerate(self.photos):
            photo["clean_tags"] = [flickr_clean_tag(t) for t in photo["tags"]]
            for tag in photo["clean_tags"]:
                self.tag_index[tag].add(i)
                self.word_index[tag].add(i)
            for word in re.findall(r"\w+", photo["title"].lower()):
                self.word_index[word].add(i)

    def search(self, text: str, tags: list[str], tag_mode: str) -> list[int]:
        """Indices (newest first) of the photos matching the text and/or tags."""
        found: set[int] | None = None
        if tags:
            sets = [self.tag_index.get(flickr_clean_tag(t), set()) for t in tags]
            found = set.intersection(*sets) if tag_mode == "all" else set().union(*sets)
        if text.strip():
            words = [flickr_clean_tag(w) for w in text.split()]
            hits = set.intersection(*(self.word_index.get(w, set()) for w in words))
            found = hits if found is None else found & hits
        return sorted(found or ())


class FlickrError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class FaultDice:
    """Deterministic per-request draws: hash(seed, request, attempt number)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def draw(self, request_key: str) -> float:
        with self.lock:
            attempt = self.seen[request_key]
            self.seen[request_key] += 1
        digest = hashlib.sha256(f"{self.seed}|{request_key}|{attempt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64


class FlickrServer:
    """The server; ``with FlickrServer(corpus) as server: server.rest_url``."""

    def __init__(
        self,
        corpus: str | Path | Corpus,
        port: int = 0,
        host: str = "127.0.0.1",
        api_keys: set[str] | frozenset[str] = frozenset({DEFAULT_KEY}),
        faults: Faults = Faults(),
        access_log: bool = False,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise InputError(f"the offline Flickr server binds to the loopback interface only, not {host!r}")
        self.corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
        self.api_keys, self.faults, self.access_log = frozenset(api_keys), faults, access_log
        self.dice = FaultDice(faults.seed)
        self.stats: Counter[str] = Counter()
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}/services/rest/"

    def start(self) -> FlickrServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FlickrServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ methods
    def call(self, params: dict[str, str], key: str | None) -> dict[str, Any]:
        if params.get("format", "json") != "json":
            raise FlickrError(111, f'Format "{params["format"]}" not found')
        if key not in self.api_keys:
            raise FlickrError(100, "Invalid API Key (Key has invalid format)")
        method = params.get("method", "")
        if method == "flickr.photos.search":
            return {"photos": self._search(params), "stat": "ok"}
        if method == "flickr.photos.licenses.getInfo":
            licences = [{"id": i, "name": name, "url": ""} for i, name in LICENSES.items()]
            return {"licenses": {"license": licences}, "stat": "ok"}
        if method == "flickr.test.echo":
            echoed = {k: {"_content": v} for k, v in params.items() if k not in ("api_key",) and not k.startswith("oauth_")}
            return {**echoed, "stat": "ok"}
        raise FlickrError(112, f'Method "{method}" not found')

    def _int(self, params: dict[str, str], name: str, default: int) -> int:
        try:
            return int(params.get(name, default))
        except ValueError:
            raise FlickrError(18, f"Illogical arguments: {name} must be an integer") from None

    def _search(self, params: dict[str, str]) -> dict[str, Any]:
        text = params.get("text", "")
        tags = [t for t in params.get("tags", "").split(",") if t.strip()]
        if not text.strip() and not tags:
            raise FlickrError(3, "Parameterless searches have been disabled. Please use flickr.photos.getRecent instead.")
        tag_mode = params.get("tag_mode", "any")
        if tag_mode not in ("any", "all"):
            raise FlickrError(18, "Illogical arguments: tag_mode must be 'any' or 'all'")
        if tag_mode == "all" and len(tags) > 20:
            raise FlickrError(1, "Too many tags in ALL query")
        sort = params.get("sort", "date-posted-desc")
        if sort not in SORTS:
            raise FlickrError(18, f"Illogical arguments: unknown sort {sort!r}")
        page = max(1, self._int(params, "page", 1))
        per_page = min(MAX_PER_PAGE, max(1, self._int(params, "per_page", 100)))
        lo, hi = self._int(params, "min_upload_date", 0), self._int(params, "max_upload_date", 2**62)
        licences = {int(x) for x in params["license"].split(",") if x.strip().isdigit()} if params.get("license") else None

        photos = self.corpus.photos
        hits = [
            i
            for i in self.corpus.search(text, tags, tag_mode)
            if lo <= int(photos[i]["date_upload"]) <= hi and (licences is None or int(photos[i]["license"]) in licences)
        ]
        if sort == "date-posted-asc":
            hits.reverse()
        elif sort == "relevance":
            wanted = {flickr_clean_tag(t) for t in tags + text.split()}
            hits.sort(key=lambda i: -len(wanted & set(photos[i]["clean_tags"])))  # stable: newest first among equals
        elif sort.startswith("interestingness"):
            hits.sort(key=lambda i: hashlib.md5(photos[i]["photo_id"].encode()).digest(), reverse=sort.endswith("desc"))
        total = len(hits)
        pages = math.ceil(total / per_page)
        reachable = min(total, RESULT_CAP)
        last_page = max(1, math.ceil(reachable / per_page))
        start = (min(page, last_page) - 1) * per_page  # past the cap Flickr repeats results
        chosen = hits[start : min(start + per_page, reachable)]
        extras = {e.strip() for e in params.get("extras", "").split(",")}
        as_str = self.dice.draw("counts|" + json.dumps(sorted(params.items()))) < self.faults.string_counts_rate
        count: Any = str if as_str else int
        return {
            "page": page, "pages": count(pages), "perpage": per_page, "total": count(total),
            "photo": [self._photo_json(photos[i], extras) for i in chosen],
        }  # fmt: skip

    def _photo_json(self, photo: dict[str, Any], extras: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": photo["photo_id"], "owner": photo["owner"], "secret": photo["secret"], "server": photo["server"],
            "farm": 66, "title": photo["title"], "ispublic": 1, "isfriend": 0, "isfamily": 0,
        }  # fmt: skip
        if not photo["owner"]:  # a corpus row without an owner becomes a malformed record, as a flaky API sends
            del out["owner"]
        if "tags" in extras:
            out["tags"] = " ".join(photo["clean_tags"])
        if "owner_name" in extras:
            out["ownername"] = photo.get("ownername", "")
        if "license" in extras:
            out["license"] = str(photo["license"])
        if "date_upload" in extras:
            out["dateupload"] = str(photo["date_upload"])
        if "url_m" in extras:
            out["url_m"] = f"{self.base_url}/{photo['server']}/{photo['photo_id']}_{photo['secret']}_m.jpg"
            out["height_m"], out["width_m"] = int(photo.get("height", 256)), int(photo.get("width", 256))
        return out


def _handler_for(server: FlickrServer) -> type[BaseHTTPRequestHandler]:
    faults = server.faults

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "webvse-flickr/1.0"
        disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms delayed-ACK stalls

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            if server.access_log:  # the path only: a query string may carry the key
                print(f"{self.command} {urlsplit(self.path).path} {args[1] if len(args) > 1 else ''}", flush=True)

        def _send(
            self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None, truncate: bool = False
        ) -> None:
            payload = body[: max(1, len(body) // 2)] if truncate else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _fault(self, request_key: str, truncated_rate: float, unavailable_rate: float = 0.0) -> str | None:
            """Apply the drawn fault; returns 'truncate' when the answer must be cut, 'unavailable' for a code 105."""
            u = server.dice.draw(request_key)
            edges = [
                ("error", faults.error_rate), ("throttle", faults.throttle_rate),
                ("slow", faults.slow_rate), ("truncate", truncated_rate), ("unavailable", unavailable_rate),
            ]  # fmt: skip
            for name, rate in edges:
                if u < rate:
                    server.stats[name] += 1
                    if name == "error":
                        status = 503 if (u / rate) < 0.5 else 500
                        self._send(status, b"Service Unavailable" if status == 503 else b"Internal Server Error", "text/plain")
                    elif name == "throttle":
                        self._send(429, b"Too Many Requests", "text/plain", {"Retry-After": str(faults.retry_after)})
                    elif name == "slow":
                        time.sleep(faults.slow_seconds)
                    return name
                u -= rate
            return None

        def _rest(self, params: dict[str, str]) -> None:
            server.stats["rest"] += 1
            header_key = _OAUTH_KEY.search(self.headers.get("Authorization", ""))
            key = params.get("api_key") or (header_key.group(1) if header_key else None)
            stable = {k: v for k, v in params.items() if not k.startswith("oauth_") and k != "api_key"}
            fault = self._fault("rest|" + json.dumps(sorted(stable.items())), faults.truncated_json_rate, faults.unavailable_rate)
            if fault in ("error", "throttle"):
                return
            try:
                if fault == "unavailable":
                    raise FlickrError(105, "Service currently unavailable")
                answer = server.call(params, key)
            except FlickrError as err:
                answer = {"stat": "fail", "code": err.code, "message": err.message}
            except Exception:  # a bug of ours must still answer in Flickr's envelope, not a traceback
                answer = {"stat": "fail", "code": 105, "message": "Service currently unavailable"}
            self._send(200, json.dumps(answer).encode(), "application/json; charset=utf-8", truncate=fault == "truncate")

        def _image(self, path: str) -> None:
            server.stats["image"] += 1
            match = IMAGE_PATH.match(path)
            photo = server.corpus.by_id.get(match.group(2)) if match else None
            if photo is None or match is None or photo["secret"] != match.group(3):
                self._send(404, b"Not Found", "text/plain")
                return
            fault = self._fault("image|" + path, faults.truncated_image_rate)
            if fault in ("error", "throttle"):
                return
            if photo["file"].startswith("redirect:"):  # a corpus may send a photo elsewhere (an allow-list test)
                self._send(302, b"", "text/plain", {"Location": photo["file"].removeprefix("redirect:")})
                return
            file = server.corpus.folder / photo["file"]
            if not file.is_file():  # a photo whose file is gone: what a deleted Flickr photo answers
                self._send(404, b"Not Found", "text/plain")
                return
            self._send(200, file.read_bytes(), "image/jpeg", truncate=fault == "truncate")

        def _dispatch(self, body: str) -> None:
            parts = urlsplit(self.path)
            params = dict(parse_qsl(parts.query, keep_blank_values=True))
            params.update(parse_qsl(body, keep_blank_values=True))
            if parts.path.rstrip("/") == "/services/rest":
                self._rest(params)
            elif self.command == "GET":
                self._image(parts.path)
            else:
                self._send(404, b"Not Found", "text/plain")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._dispatch("")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self._dispatch(self.rfile.read(length).decode("utf-8", "replace"))

    return Handler
