# Quick start: `make demo` then `make test`. Both create .venv when missing.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The exact CPU torch wheel; installed first so no dependency pulls a CUDA build.
TORCH ?= torch==2.13.0

.PHONY: venv install install-dev demo test lint format clean chromium serve

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"

venv: $(BIN)/python

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/perceiver-vl demo $(DEMO_ARGS)

# The browser test (tests/serve/test_browser.py) drives the system's Chromium through Playwright,
# which cannot download its own browser offline. Best effort: without Chromium that test skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1; }; \
	  fi; \
	  command -v chromium >/dev/null 2>&1 && echo "installed chromium (Debian package)" || \
	    echo "chromium not installed: the browser test will be skipped (apt-get install chromium)"; \
	}

test: install-dev chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Serve the demo's index (after `make demo`) at http://127.0.0.1:8000/.
serve: install
	$(BIN)/perceiver-vl serve --index runs/demo/index

lint: install-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: install-dev
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
