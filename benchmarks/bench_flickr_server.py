"""Flickr server throughput: searches/s and images/s vs a bare HTTP server of the same stack.

The baseline is a ThreadingHTTPServer answering every request with a fixed body of the
same size as our average answer: the floor cost of Python HTTP on this machine. The
ratio says how much the search itself (index lookup, sorting, paging, JSON) costs on
top. Clients are a thread pool of ``requests`` sessions on 127.0.0.1; bounded count.

    python benchmarks/bench_flickr_server.py [--corpus DIR] [--requests 1500] [--clients 8]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from webvse_world.concepts import OBJECTS
from webvse_world.flickr_server import DEFAULT_KEY, FlickrServer
from webvse_world.web import WebSizes, generate_web_corpus

EXTRAS = "tags,owner_name,license,url_m,date_upload"


def _bare_server(body: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _hammer(url_of, count: int, clients: int, method: str = "post") -> tuple[float, int]:  # type: ignore[no-untyped-def]
    local = threading.local()

    def one(i: int) -> int:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        url, data = url_of(i)
        response = session.post(url, data=data, timeout=10) if method == "post" else session.get(url, timeout=10)
        return len(response.content)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        sizes = list(pool.map(one, range(count)))
    return count / (time.perf_counter() - started), sum(sizes) // count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=None, help="corpus folder (default: a generated one, 40 photos per object)")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp)
        if not args.corpus:
            generate_web_corpus(corpus, WebSizes(photos_per_object=40))
        with FlickrServer(corpus) as server:

            def search(i: int) -> tuple[str, dict[str, object]]:
                keyword = OBJECTS[i % len(OBJECTS)].name
                return server.rest_url, {"method": "flickr.photos.search", "api_key": DEFAULT_KEY, "format": "json",
                                         "nojsoncallback": 1, "text": keyword, "extras": EXTRAS, "per_page": 100, "page": 1 + i % 2}  # fmt: skip

            ours, body_size = _hammer(search, args.requests, args.clients)
            urls = [p["url_m"] for i in range(5) for p in requests.post(*search(i), timeout=10).json()["photos"]["photo"]]
            images, image_size = _hammer(lambda i: (urls[i % len(urls)], None), args.requests, args.clients, "get")
            photos = len(server.corpus.photos)
        bare = _bare_server(b"x" * body_size)
        base, _ = _hammer(
            lambda i: (f"http://127.0.0.1:{bare.server_address[1]}/services/rest/", {"n": i}), args.requests, args.clients
        )
        bare.shutdown()
        bare_img = _bare_server(b"x" * image_size)
        base_img, _ = _hammer(
            lambda i: (f"http://127.0.0.1:{bare_img.server_address[1]}/a.jpg", None), args.requests, args.clients, "get"
        )
        bare_img.shutdown()
    print(f"corpus {photos} photos, {args.requests} requests per row, {args.clients} client threads, 127.0.0.1")
    print(f"{'endpoint':<44}{'req/s':>9}{'vs bare':>9}")
    print(f"{'bare HTTP, same-size JSON body (baseline)':<44}{base:>9.0f}{1.0:>9.2f}")
    print(f"{'flickr.photos.search, per_page 100 + extras':<44}{ours:>9.0f}{ours / base:>9.2f}")
    print(f"{'bare HTTP, same-size image body (baseline)':<44}{base_img:>9.0f}{1.0:>9.2f}")
    print(f"{'url_m image files':<44}{images:>9.0f}{images / base_img:>9.2f}")


if __name__ == "__main__":
    main()
