# Every target creates the virtual environment on demand: a fresh clone needs Python 3.11+ and make.
SHELL := /bin/bash
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench install up down migration clean

$(UV):
	python3 -m pip install --user --quiet uv || python3 -m pip install --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock shared/pyproject.toml services/*/pyproject.toml | $(UV)
	$(UV) sync --frozen --all-packages
	touch $@

install: $(VENV)/.synced

run: install
	CLINVAULT_PUBLIC_BASE_URL=$${CLINVAULT_PUBLIC_BASE_URL:-http://$(HOST):$(PORT)} \
	  $(VENV)/bin/clinvault serve all --host $(HOST) --port $(PORT) --bootstrap-admin

test: install
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The scrub benchmark compares with exiftool and mat2 (Debian's packages); without them their
# rows say "not measured".
bench: install
	@for tool in exiftool:libimage-exiftool-perl mat2:mat2; do \
	  command -v $${tool%%:*} >/dev/null || apt-get install -y -q $${tool#*:} >/dev/null 2>&1 \
	    || echo "bench: $${tool%%:*} not installed (apt-get install $${tool#*:}); its row is skipped"; \
	done
	$(PY) bench/run.py

# The distributed stack on this machine: local PostgreSQL and Redis, SeaweedFS, ingest, consent
# and $(WORKERS) workers under honcho (deploy/Procfile.local). `WORKERS=4 make up`; `make down`.
up: install
	WORKERS=$(WORKERS) $(PY) deploy/local_stack.py up

down:
	$(PY) deploy/local_stack.py down

migration: install
	scripts/regen-initial-migration

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
