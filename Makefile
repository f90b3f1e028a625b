# The two set-up commands of the README. Each creates (or reuses) .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: it is the CPU build on this disk, and it satisfies the project's range,
# so the install below adds nothing heavy. Elsewhere pip fetches a matching build.
# The app extra too (Gradio, for `lldiff app` and its tests); a plain `pip install lldiff` has none.
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.2,<3"
	$(BIN)/pip install -q -e ".[test,app]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lldiff enhance sample_images out/demo --overwrite

# Debian's Chromium for the app's browser test, when missing (a no-op once it is there).
test: $(STAMP)
	sh scripts/install_chromium.sh
	$(BIN)/python -m pytest
