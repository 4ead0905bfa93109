"""Splits Quarry's own documentation into passages for the demo: demo/corpus.jsonl.

Usage: python3 demo/make_corpus.py   (run again after the docs change; the output is committed)
Each passage is one paragraph or list of a section, titled with its section heading path.
"""

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ["README.md", "DESIGN.md"]
MIN_CHARS = 80


def passages(path):
    heading = []
    block = []
    in_code = False
    for line in path.read_text().splitlines() + [""]:
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        match = re.match(r"^(#+)\s+(.*)", line)
        if line.startswith("|"):
            continue
        starts_item = re.match(r"^\s*([-*]|\d+\.)\s+", line) is not None
        if match or not line.strip() or starts_item:
            text = " ".join(part.strip() for part in block).strip()
            if len(text) >= MIN_CHARS:
                yield " / ".join(heading), text
            block = []
            if match:
                level = len(match.group(1))
                heading = heading[: level - 1] + [match.group(2)]
            if starts_item:
                block.append(re.sub(r"^\s*([-*]|\d+\.)\s+", "", line))
            continue
        block.append(line)


def main():
    out = ROOT / "demo" / "corpus.jsonl"
    count = 0
    with out.open("w") as sink:
        for name in SOURCES:
            for number, (title, text) in enumerate(passages(ROOT / name), start=1):
                text = re.sub(r"[`*]", "", text)
                doc = {"_id": f"{name}#{number}", "title": title, "text": text}
                sink.write(json.dumps(doc) + "\n")
                count += 1
    print(f"wrote {count} passages to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
