"""Serving speed: the HTTP API's text -> images latency and throughput at 1K / 100K / 1M items,
exact search against the faiss IVF index, with index build time and the IVF's recall@10.

The collection is synthetic (the issue allows it for size): L2-normalised vectors around
1,000 random cluster centres, so an IVF's clusters mean something; the model is the paper's
sizes (D=1024, GRU 1024, word 300) with random weights — only its speed matters here. Each
size is served by the real app under uvicorn in a child process on 127.0.0.1; this process
is the client. Baselines of the same run: exact search at the same size (for the IVF's
speed-up and recall), and the app's bare text encoding (``k=1`` over 1K items).

    python benchmarks/bench_serving.py [--sizes 1000 100000 1000000] [--dim 1024] [--queries 200]
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
import pandas as pd

WORDS = "a dog cat man woman child runs jumps sits on the in beach grass snow water street red black white two young ball bike".split()


def clustered(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """``count`` unit vectors around 1,000 centres (noise of norm ~0.5), made in 50K-row blocks (1M x 1024 is 4 GB)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 50_000):
        rows = min(50_000, count - start)
        block = centres[rng.integers(0, 1000, rows)] + (0.5 / dim**0.5) * rng.standard_normal((rows, dim), dtype=np.float32)
        out[start : start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def serve(vectors: np.ndarray, approximate: bool, dim: int, port: int, ready: Any) -> None:
    """Child process: build the index (timed), then the real app under uvicorn."""
    import torch
    import uvicorn

    from tasks.serving.app import create_app
    from tasks.serving.retrieval import LoadedIndex, Retriever
    from tasks.serving.vector_search import VectorSearch
    from webvse_model.encoders import JointEmbedding
    from webvse_model.settings import ModelConfig
    from webvse_model.text import SPECIAL_TOKENS, Vocabulary

    torch.manual_seed(0)
    started = time.perf_counter()
    search = VectorSearch.build(vectors, approximate)
    build = time.perf_counter() - started
    picks = np.linspace(0, len(vectors) - 1, 200).astype(int)
    queries = vectors[picks] + (0.25 / dim**0.5) * np.random.default_rng(1).standard_normal((200, dim), dtype=np.float32)
    recall = search.recall_against_exact(queries / np.linalg.norm(queries, axis=1, keepdims=True), 10)
    count = len(vectors)
    items = pd.DataFrame(
        {"sha256": [f"{i:064x}" for i in range(count)], "path": "", "split": "", "source": "synthetic", "labels": [[]] * count}
    )
    captions = pd.DataFrame(columns=["caption_id", "image_sha256", "split", "text"])
    manifest = {"run": "synthetic", "stage": "stage1", "collection": f"synthetic-{count}", "search": "approximate (faiss IVF)" if approximate else "exact",
                "recall_at_10_vs_exact": recall, "test_metrics": None, "built_at": "-"}  # fmt: skip
    vocab = Vocabulary(SPECIAL_TOKENS + tuple(WORDS))
    model = JointEmbedding(ModelConfig(image_dim=2048, vocab_size=len(vocab), embed_dim=dim))
    retriever = Retriever(LoadedIndex(manifest, items, search, captions, None), model, vocab, torch.device("cpu"), "synthetic")
    ready.put((build, recall))
    uvicorn.run(create_app(retriever), host="127.0.0.1", port=port, log_level="error")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as answer:
        answer.read()
        assert answer.status == 200
    return time.perf_counter() - started


def measure(port: int, queries: int, k: int, clients: int = 4) -> dict[str, float]:
    rng = np.random.default_rng(2)
    urls = [
        f"http://127.0.0.1:{port}/api/text-to-images?" + urllib.parse.urlencode({"q": " ".join(rng.choice(WORDS, 6)), "k": k})
        for _ in range(queries)
    ]
    _get(urls[0])  # warm-up
    latencies = sorted(_get(u) for u in urls)
    done = [0]
    lock = threading.Lock()

    def client(mine: list[str]) -> None:
        for url in mine:
            _get(url)
            with lock:
                done[0] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(urls[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "p50": 1000 * statistics.median(latencies),
        "p95": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "qps": done[0] / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200, help="per configuration (1M exact: a quarter of them)")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    fork = multiprocessing.get_context("fork")  # the child inherits the vectors instead of copying 4 GB through a pipe
    rows = []
    for size in args.sizes:
        vectors = clustered(size, args.dim)
        for approximate in (False, True):
            port, ready = _free_port(), fork.Queue()
            child = fork.Process(target=serve, args=(vectors, approximate, args.dim, port, ready), daemon=True)
            child.start()
            build, recall = ready.get(timeout=3600)
            while True:
                try:
                    _get(f"http://127.0.0.1:{port}/health")
                    break
                except OSError:
                    time.sleep(0.2)
            count = args.queries if not (size >= 1_000_000 and not approximate) else max(20, args.queries // 4)
            result = measure(port, count, args.k)
            child.terminate()
            child.join()
            rows.append(
                {
                    "items": size,
                    "search": "IVF (faiss)" if approximate else "exact",
                    "build s": build,
                    "recall@10": recall,
                    **result,
                }
            )
            print(f"{size:>9,} {rows[-1]['search']:<12} build {build:7.2f}s  recall@10 {recall:.3f}  "
                  f"p50 {result['p50']:8.1f} ms  p95 {result['p95']:8.1f} ms  {result['qps']:7.1f} req/s", flush=True)  # fmt: skip
        del vectors
    table = pd.DataFrame(rows)
    exact = table[table["search"] == "exact"].set_index("items")
    table["p50 vs exact"] = [exact.loc[i, "p50"] / p for i, p in zip(table["items"], table["p50"])]
    base = exact["p50"].iloc[0]
    table["p50 vs exact at smallest"] = table["p50"] / base
    print(f"\ntext -> images through HTTP, D={args.dim}, k={args.k}, 4 concurrent clients for throughput")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}" if v < 10 else f"{v:.1f}"))


if __name__ == "__main__":
    main()
