# Two commands matter: `make demo` (the main job) and `make test` (every check CI runs).
# Both build the environment when it is missing; nothing else needs to be installed by hand.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS   := dcmtk orthanc orthanc-dicomweb dicom3tools chromium
# torch/torchvision are pinned to the releases this project is tested with; the node also
# runs on torch 2.11 / torchvision 0.26 (pyproject.toml allows them).
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: venv debs test lint demo bench clean reliability

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use as real peers: dcmtk (storescu/storescp/dcmcjpeg...),
# Orthanc (a real PACS) with its DICOMweb plugin (STOW-RS destinations), dicom3tools (dciodvfy, the DICOM validator) and chromium (the
# worklist's browser test, driven by Playwright; never `playwright install`).
debs:
	@if [ -x /usr/bin/storescu ] && [ -x /usr/bin/dciodvfy ] && [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] && [ -x /usr/bin/chromium ]; then :; else \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEBS); \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: venv debs lint
	$(BIN)/pytest

# The reliability campaign (tests/reliability: kill -9, index loss, ...). RELIABILITY_KILLS
# makes the kill campaign longer (default 20 kills per journal setting, what CI runs),
# RELIABILITY_SEED picks other random moments: RELIABILITY_KILLS=200 make reliability
reliability: venv debs
	$(BIN)/pytest -s tests/reliability

demo: venv debs
	$(BIN)/python scripts/demo.py

clean:
	rm -rf var/demo
