# Two commands on a fresh machine:
#   make run    set up .venv and run the demo grid on the CPU (Prefect's ephemeral API)
#   make test   set up .venv and run the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test browser-deps dry-run bench image-test clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; a no-op otherwise.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[flow,test]'
	touch $(STAMP)

run: setup
	$(BIN)/python -m flows.grid grid-search/demo.yaml

dry-run: setup
	$(BIN)/python -m flows.grid grid-search/benson2025.yaml --dry-run

# pytest exits 5 when it collects no test; CI must fail then, and it does (any non-zero).
# Three workers (pytest-xdist) on the 2-core target machine, each training with one thread: the
# third runs while the others wait on their servers and subprocesses (6 min 19 s against 6 min 42 s
# with two, 2026-12-06, half an hour apart, both under a per-test profiler). tests/conftest.py
# orders the tests into one lane per worker.
test: setup browser-deps
	$(BIN)/python -m pytest -q -n 3 --dist worksteal

# Debian's chromium and chromium-driver for the browser test (tests/test_ui.py); a no-op when present.
browser-deps:
	tests/browser-deps.sh

bench: setup
	$(BIN)/python benchmarks/dry_run.py
	$(BIN)/python benchmarks/orchestration.py
	$(BIN)/python benchmarks/summarize.py

# Builds the training image with buildah (no Docker daemon) and trains a tiny cell in it;
# see README "Building and testing the image without Docker". BASE_IMAGE=... replaces the
# stand-in base built from Debian packages and the pinned wheels.
image-test: setup
	$(BIN)/python -m deployments.image_test

clean:
	rm -rf $(VENV) .pytest_cache
