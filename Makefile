# The two commands of the README. Each creates .venv if needed and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# Real components the tests run against (none is mocked): Prometheus (metrics), Redis (job queue,
# cluster registry), Tesseract with its English data and the DejaVu fonts (on-screen text),
# iproute2 (network namespaces for the multi-host tests), Chromium (the web console's browser tests, driven
# headless by Playwright through /usr/bin/chromium).
DEBIAN_PACKAGES := prometheus redis-server tesseract-ocr tesseract-ocr-eng fonts-dejavu-core iproute2 chromium

.PHONY: serve test bench clean system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

serve: $(VENV)/.installed
	$(BIN)/fastvlm sample-media media
	FASTVLM_MEDIA_ROOTS="$${FASTVLM_MEDIA_ROOTS:-$(CURDIR)/media}" $(BIN)/fastvlm serve

# Installs the missing ones with one apt-get update (as root), or says which are missing.
system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages for the tests:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      $$missing >/dev/null; \
	  else echo "the tests need these Debian packages: sudo apt-get install" $$missing; exit 1; fi; \
	fi

# Three test processes on two cores: most tests wait on real services (model loads, HTTP, Redis,
# namespaces) rather than compute; one file per process keeps module-scoped services unshared.
TEST_PROCESSES ?= 3

test: $(VENV)/.installed-test system-packages
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile

bench: $(VENV)/.installed-test
	$(BIN)/python bench/engine_batching.py

clean:
	rm -rf $(VENV) media
