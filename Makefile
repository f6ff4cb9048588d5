# Two commands matter: `make demo` (the main job) and `make test` (every check CI runs).
# Both build the environment when it is missing; nothing else needs to be installed by hand.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS   := dcmtk orthanc orthanc-dicomweb dicom3tools chromium postgresql
# Every dependency (runtime and dev) is installed from requirements.lock: exact versions,
# each file checked against its sha256 (--require-hashes), the project itself then without
# dependencies. torch/torchvision are pinned there (requirements.in) to the releases this
# project is tested with; the node also runs on torch 2.11 / torchvision 0.26
# (pyproject.toml allows them).
LOCK   := requirements.lock
TOOLS  := .venv-tools

.PHONY: venv debs test lint demo bench clean lock audit reliability

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# pip-tools and pip-audit, locked with hashes too, in a venv of their own.
$(TOOLS)/.installed: requirements-tools.lock
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --require-hashes -r requirements-tools.lock
	touch $@

# Refresh the locks after a change to pyproject.toml's dependencies or requirements*.in
# (docs/admin.md, "Dependencies"): pip-compile resolves with this machine's pip
# configuration (its local wheel folders included) and records the hash of every file
# of each pinned release. Commit the result with the change; `make venv` then installs it.
lock: $(TOOLS)/.installed
	$(TOOLS)/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --extra dev \
		-o $(LOCK) pyproject.toml requirements.in
	$(TOOLS)/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements-tools.lock requirements-tools.in

# Known vulnerabilities in the locked versions (PyPI's advisory service: needs the network,
# so not part of `make test` or CI). Findings accepted after review are listed with their
# reason in RELIABILITY.md and ignored here by ID.
AUDIT_IGNORE :=
audit: $(TOOLS)/.installed
	$(TOOLS)/bin/pip-audit --strict --disable-pip --desc on -r $(LOCK) \
		$(foreach id,$(AUDIT_IGNORE),--ignore-vuln $(id))

# Debian packages the tests use as real peers: dcmtk (storescu/storescp/dcmcjpeg...),
# Orthanc (a real PACS) with its DICOMweb plugin (STOW-RS destinations), dicom3tools (dciodvfy, the DICOM validator) and chromium (the
# worklist's browser test, driven by Playwright; never `playwright install`) and postgresql
# (a real server for the PostgreSQL index tests, started per run by tests/pg.py).
debs:
	@if [ -x /usr/bin/storescu ] && [ -x /usr/bin/dciodvfy ] && [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] && [ -x /usr/bin/chromium ] && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then :; else \
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
