# platewatch: `make demo` to see it run, `make test` to check it. `make help` lists the rest.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# PP-OCRv4 (the baseline, the teacher, and the base of the second-opinion reader) and the
# converter the second reader's fine-tuning needs; installed without their dependencies
# (docs/decisions.md).
RAPIDOCR := rapidocr-openvino==1.4.4
ONNX2TORCH := onnx2torch==1.5.15
PYTEST_ARGS ?=

.PHONY: help venv services check lint format test unit integration e2e demo train baseline docs clean

help:
	@echo "make demo         set up .venv and run the single-machine demo (Ctrl-C stops it)"
	@echo "make test         install and start what the tests need, lint, type-check, run all tests"
	@echo "make check        ruff, ruff format --check, mypy --strict, import contracts"
	@echo "make unit         fast tests without services"
	@echo "make services     install/start PostgreSQL, Redis and Mosquitto (root: via apt)"
	@echo "make train        retrain the plate models from ../shared/data (needs the [train] extra)"
	@echo "make baseline     install the PP-OCRv4 baseline (rapidocr-openvino) for eval comparisons"
	@echo "make docs         regenerate docs/mqtt.md and docs/schemas/ from the code"

$(STAMP): pyproject.toml
	@test -n "$(PY)" || { echo "Python 3.11 is required"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || { \
	  echo "python venv is missing: apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,demo]'
	@touch $(STAMP)

venv: $(STAMP)

services:
	@bash deploy/dev/services.sh

lint: $(STAMP)
	$(BIN)/ruff check shared services tests
	$(BIN)/ruff format --check shared services tests

format: $(STAMP)
	$(BIN)/ruff format shared services tests
	$(BIN)/ruff check --fix shared services tests

check: lint
	$(BIN)/mypy shared services
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

test: $(STAMP) services check
	$(BIN)/pytest tests -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/platewatch demo

train: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq fonts-liberation fonts-freefont-ttf fonts-roboto-unhinted \
	    fonts-open-sans >/dev/null || echo "fonts not installed: synthetic plates use OpenCV's font"; fi
	$(BIN)/python -m pip install -q -e '.[train]'
	$(BIN)/python -m pip install -q --no-deps $(RAPIDOCR) $(ONNX2TORCH)  # teacher, second reader
	$(BIN)/python -m services.edge.training all --data ../shared/data --out services/edge/models

baseline: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps $(RAPIDOCR) pyclipper shapely
	@echo "PP-OCRv4 baseline installed: platewatch eval DIR --engine rapidocr"

docs: $(STAMP)
	$(BIN)/platewatch docs

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var
