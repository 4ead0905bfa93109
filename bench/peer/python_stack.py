#!/usr/bin/env python3
"""The Python RAG stack Quarry is measured against, on the same BEIR dataset and machine:
bm25s (BM25, English stemmer) + chromadb (HNSW, cosine) + sentence-transformers running
all-MiniLM-L6-v2 on torch, all in one process, as a DSPy-style script would build it.

Measures ingest (embed every document, index it in bm25s and chromadb) in documents per
second, then keyword and hybrid search latency per query (hybrid: embed the query, BM25 top
k and vector top k, reciprocal-rank fusion), and nDCG@10 of each for a sanity check.
Prints one JSON object. Used by bench/peer/compare.py (`make bench-peer`).

Usage: python_stack.py --dataset DIR --model-dir DIR [--docs N] [--queries N]
"""

import argparse
import json
import math
import os
import pathlib
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import bm25s  # noqa: E402
import chromadb  # noqa: E402
import numpy as np  # noqa: E402
import Stemmer  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

RRF_K = 60
CHROMA_BATCH = 1000


def read_jsonl(path):
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def read_qrels(path):
    qrels = {}
    with open(path, encoding="utf-8") as lines:
        next(lines)
        for line in lines:
            query_id, doc_id, score = line.rstrip("\r\n").split("\t")
            qrels.setdefault(query_id, {})[doc_id] = int(score)
    return qrels


def ndcg_at_10(ranked, relevant):
    dcg = sum(
        relevant.get(doc_id, 0) / math.log2(rank + 2) for rank, doc_id in enumerate(ranked[:10])
    )
    ideal = sorted(relevant.values(), reverse=True)[:10]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=pathlib.Path, required=True)
    parser.add_argument("--model-dir", type=pathlib.Path, required=True)
    parser.add_argument("--docs", type=int, default=0, help="first N documents (0: all)")
    parser.add_argument("--queries", type=int, default=0, help="first N queries (0: all)")
    parser.add_argument("--k", type=int, default=10)
    arguments = parser.parse_args()

    corpus = read_jsonl(arguments.dataset / "corpus.jsonl")
    if arguments.docs:
        corpus = corpus[: arguments.docs]
    queries = read_jsonl(arguments.dataset / "queries.jsonl")
    if arguments.queries:
        queries = queries[: arguments.queries]
    qrels = read_qrels(arguments.dataset / "qrels-test.tsv")
    ids = [document["_id"] for document in corpus]
    texts = [f"{document['title']} {document['text']}" for document in corpus]

    model = SentenceTransformer(str(arguments.model_dir), device="cpu")
    model.max_seq_length = 256
    stemmer = Stemmer.Stemmer("english")
    model.encode(["warm up"], normalize_embeddings=True)

    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    keyword_index = bm25s.BM25()
    keyword_index.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    client = chromadb.EphemeralClient()
    collection = client.create_collection("scifact", metadata={"hnsw:space": "cosine"})
    for start in range(0, len(ids), CHROMA_BATCH):
        collection.add(
            ids=ids[start : start + CHROMA_BATCH],
            embeddings=vectors[start : start + CHROMA_BATCH].tolist(),
            documents=texts[start : start + CHROMA_BATCH],
        )
    ingest_seconds = time.perf_counter() - started

    k = arguments.k

    def keyword(text):
        tokens = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, show_progress=False)
        found, _ = keyword_index.retrieve(tokens, k=k, show_progress=False)
        return [ids[index] for index in found[0]]

    def hybrid(text):
        query_vector = model.encode([text], normalize_embeddings=True)
        tokens = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, show_progress=False)
        found, _ = keyword_index.retrieve(tokens, k=k, show_progress=False)
        dense = collection.query(query_embeddings=query_vector.tolist(), n_results=k)
        fused = {}
        for rank, index in enumerate(found[0]):
            fused[ids[index]] = fused.get(ids[index], 0.0) + 1.0 / (RRF_K + rank + 1)
        for rank, doc_id in enumerate(dense["ids"][0]):
            fused[doc_id] = fused.get(doc_id, 0.0) + 1.0 / (RRF_K + rank + 1)
        return sorted(fused, key=lambda doc_id: -fused[doc_id])[:k]

    results = {}
    for name, search in (("keyword", keyword), ("hybrid", hybrid)):
        for query in queries[:10]:
            search(query["text"])
        latencies = []
        ndcg = []
        for query in queries:
            started = time.perf_counter()
            ranked = search(query["text"])
            latencies.append((time.perf_counter() - started) * 1000.0)
            ndcg.append(ndcg_at_10(ranked, qrels.get(query["_id"], {})))
        results[name] = {
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "ndcg_at_10": round(sum(ndcg) / len(ndcg), 4),
        }

    print(
        json.dumps(
            {
                "stack": "bm25s + chromadb + sentence-transformers (torch)",
                "versions": {
                    "torch": torch.__version__,
                    "bm25s": getattr(bm25s, "__version__", ""),
                    "chromadb": chromadb.__version__,
                    "numpy": np.__version__,
                },
                "torch_threads": torch.get_num_threads(),
                "docs": len(corpus),
                "queries": len(queries),
                "ingest_docs_per_s": round(len(corpus) / ingest_seconds, 1),
                "ingest_seconds": round(ingest_seconds, 1),
                "search": results,
            },
            indent=2,
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
