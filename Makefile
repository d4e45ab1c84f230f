# PG-SAM Node — the two set-up commands of the README are `make demo` and `make test`.
# Both install what they need first (Python venv in .venv; Debian packages for the tests).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup sysdeps ohif demo lint test test-unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

sysdeps:
	./deploy/install-system-deps.sh

# The prebuilt OHIF viewer (npm @ohif/app, pinned version and digest) for tests/e2e/test_ohif.py,
# unpacked into .work/ohif/ (git-ignored). Needs node + npm and the npm registry.
ohif:
	./deploy/install-ohif.sh

demo: setup
	$(BIN)/pgsam-node demo

# Boundaries (import-linter contracts), lint (ruff) and types (mypy), all configured in pyproject.toml.
lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check pgsam_node benchmarks tests
	$(BIN)/mypy

test: setup sysdeps ohif lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -rfEs

test-unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

bench: setup sysdeps
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf build dist *.egg-info .pytest_cache
