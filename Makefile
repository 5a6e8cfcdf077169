# The two commands of the README. Each creates .venv if needed and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: serve test bench clean prometheus tesseract

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

# On-screen text uses Debian's Tesseract; its tests draw text with the DejaVu fonts.
tesseract:
	@{ command -v tesseract >/dev/null && tesseract --list-langs 2>/dev/null | grep -qx eng \
	   && [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ]; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	      tesseract-ocr tesseract-ocr-eng fonts-dejavu-core >/dev/null; \
	  else echo "install Tesseract (Debian: sudo apt-get install tesseract-ocr tesseract-ocr-eng fonts-dejavu-core)" \
	    "for the on-screen text tests"; exit 1; fi; }

test: $(VENV)/.installed-test prometheus tesseract
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-test
	$(BIN)/python bench/engine_batching.py

clean:
	rm -rf $(VENV) media
