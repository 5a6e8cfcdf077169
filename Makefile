# The two commands of the README. Each creates .venv if needed and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: serve test bench clean prometheus redis

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

# The observability tests scrape with a real Prometheus server (Debian's package).
prometheus:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "install Prometheus (Debian: sudo apt-get install prometheus) for the observability tests"; exit 1; fi; }

# The job store tests run against a real Redis server (Debian's package), started by the tests.
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
	  else echo "install Redis (Debian: sudo apt-get install redis-server) for the job store tests"; exit 1; fi; }

test: $(VENV)/.installed-test prometheus redis
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-test
	$(BIN)/python bench/engine_batching.py

clean:
	rm -rf $(VENV) media
