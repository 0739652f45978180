# pacsai: the two commands a newcomer needs.
#   make run    install everything and start the embedded daemon (listener + worker)
#   make test   install everything and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install system-deps services bench clean

run: install
	$(VENV)/bin/pacsai serve $(if $(CONFIG),--config $(CONFIG),)

test: install services
	$(VENV)/bin/pytest $(PYTEST_ARGS)

install: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml tests/ops/browser/package-lock.json tests/viewer/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	npm ci --no-audit --no-fund --silent --prefix tests/ops/browser
	npm ci --no-audit --no-fund --silent --prefix tests/viewer
	touch $(STAMP)

services:
	@scripts/ensure-services.sh

bench: install
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) data .pytest_cache
