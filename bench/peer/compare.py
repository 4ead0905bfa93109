#!/usr/bin/env python3
"""`make bench-peer`: Quarry and the Python stack (bm25s + chromadb + sentence-transformers
on torch) on the same BEIR dataset, on this machine, one after the other in one run; prints
both and the ratios, and writes them to bench/results/peer.json.

Quarry runs through its gateway on 2 shards with the analyzer's caches off
(`quarry bench beir --shards 2 --modes keyword,hybrid --asks N`), once in fp32 and once with
`analyzer.precision = "int8"` (ingest figure). Ratios are Quarry / Python for throughput and
Python / Quarry for latency, so above 1 means Quarry is faster.

Usage: compare.py --quarry target/release/quarry --python .tools/peer-venv/bin/python
                  --dataset ../shared/data/scifact --model-dir models/all-MiniLM-L6-v2
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def run_quarry(quarry, dataset, asks, precision, docs):
    with tempfile.TemporaryDirectory() as scratch:
        out = pathlib.Path(scratch) / "beir.json"
        environment = dict(os.environ, QUARRY_ANALYZER__PRECISION=precision)
        subprocess.run(
            [
                quarry,
                "bench",
                "beir",
                "--dataset",
                str(dataset),
                "--shards",
                "2",
                "--modes",
                "keyword,hybrid",
                "--asks",
                str(asks),
                "--out",
                str(out),
            ]
            + (["--limit-docs", str(docs)] if docs else []),
            check=True,
            env=environment,
            stdout=subprocess.DEVNULL,
        )
        report = json.loads(out.read_text())
    by_setting = {result["setting"]: result for result in report["results"]}
    hybrid = by_setting["hybrid-default-fusion"]
    keyword = by_setting["keyword"]
    return {
        "precision": precision,
        "ingest_docs_per_s": hybrid["ingest_docs_per_s"],
        "search": {
            "keyword": {
                "p50_ms": keyword["latency_ms"]["k10"]["p50"],
                "p99_ms": keyword["latency_ms"]["k10"]["p99"],
                "ndcg_at_10": keyword["ndcg_at_10"],
            },
            "hybrid": {
                "p50_ms": hybrid["latency_ms"]["k10"]["p50"],
                "p99_ms": hybrid["latency_ms"]["k10"]["p99"],
                "ndcg_at_10": hybrid["ndcg_at_10"],
            },
        },
        "ask_ms": by_setting.get("ask", {}).get("latency_ms"),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quarry", required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--dataset", type=pathlib.Path, required=True)
    parser.add_argument("--model-dir", type=pathlib.Path, required=True)
    parser.add_argument("--asks", type=int, default=200)
    parser.add_argument("--docs", type=int, default=0, help="first N documents only (0: all)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results/peer.json"))
    arguments = parser.parse_args()

    print("python stack ...", file=sys.stderr)
    python = json.loads(
        subprocess.run(
            [
                arguments.python,
                str(HERE / "python_stack.py"),
                "--dataset",
                str(arguments.dataset),
                "--model-dir",
                str(arguments.model_dir),
                "--docs",
                str(arguments.docs),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    print("quarry fp32 ...", file=sys.stderr)
    quarry = run_quarry(arguments.quarry, arguments.dataset, arguments.asks, "fp32", arguments.docs)
    print("quarry int8 ...", file=sys.stderr)
    quarry_int8 = run_quarry(arguments.quarry, arguments.dataset, arguments.asks, "int8", arguments.docs)

    def ratio(numerator, denominator):
        return round(numerator / denominator, 2) if denominator else None

    report = {
        "dataset": str(arguments.dataset),
        "docs_limit": arguments.docs or "all",
        "python": python,
        "quarry_fp32": quarry,
        "quarry_int8": quarry_int8,
        "ratios_above_1_quarry_faster": {
            "ingest_fp32": ratio(quarry["ingest_docs_per_s"], python["ingest_docs_per_s"]),
            "ingest_int8": ratio(quarry_int8["ingest_docs_per_s"], python["ingest_docs_per_s"]),
            "keyword_p50": ratio(python["search"]["keyword"]["p50_ms"], quarry["search"]["keyword"]["p50_ms"]),
            "hybrid_p50": ratio(python["search"]["hybrid"]["p50_ms"], quarry["search"]["hybrid"]["p50_ms"]),
            "hybrid_p99": ratio(python["search"]["hybrid"]["p99_ms"], quarry["search"]["hybrid"]["p99_ms"]),
        },
    }
    text = json.dumps(report, indent=2, sort_keys=True)
    print(text)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
