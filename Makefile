# Quarry's front door. `make demo` shows it answering questions; `make test` is what CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PYTHON := $(VENV)/bin/python
QUARRY := target/debug/quarry

.PHONY: help demo test lint fmt-check clippy unit build toolchain system-deps python-deps proto-check clean

help:
	@echo "make demo    build, start 'quarry up', ingest the sample corpus, ask questions"
	@echo "make test    format check, clippy -D warnings, every test (installs what it needs)"
	@echo "make lint    format check and clippy only"

## Installs what a fresh Debian machine with only the Rust toolchain lacks.
toolchain:
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

system-deps:
	@if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null || ! command -v gcc >/dev/null; then \
		echo "installing python3, venv and a C compiler"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip build-essential; \
	fi

$(PYTHON): tests/python/requirements.txt
	$(MAKE) system-deps
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
	@touch $(PYTHON)

python-deps: $(PYTHON)

build: toolchain system-deps
	cargo build -p quarry

fmt-check: toolchain
	cargo fmt --all -- --check

clippy: toolchain
	cargo clippy --workspace --all-targets -- -D warnings

lint: fmt-check clippy

test: lint python-deps
	QUARRY_PYTHON="$(abspath $(PYTHON))" cargo test --workspace

demo: build
	QUARRY=$(QUARRY) scripts/demo.sh

## Checks that the protobuf contract compiles (codegen runs protoc from protoc-bin-vendored).
proto-check:
	cargo build -p quarry-proto

clean:
	cargo clean
	rm -rf $(VENV) target/demo-data
