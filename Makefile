# Every target works on a fresh machine and is idempotent.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.corral-installed
NODE_INTEROP := tests/interop/node
BENCHMARKS := live_queries transfers storage scheduler sandboxes reapers console_page

.PHONY: install up test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(NODE_INTEROP)/package-lock.json scripts/install-system-packages scripts/e2b-sdk-venvs
	bash scripts/install-system-packages
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	cd $(NODE_INTEROP) && npm ci --no-audit --no-fund --loglevel=error
	PYTHON=$(PY) bash scripts/e2b-sdk-venvs .cache/e2b-sdk
	touch $(STAMP)

up: install
	$(VENV)/bin/corral up

test: install
	bash scripts/install-system-packages --tests
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check corral tests bench examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: install
	@set -e; for name in $(BENCHMARKS); do \
		echo "== python -m bench.$$name --quick"; \
		$(PY) -m bench.$$name --quick; \
	done

clean:
	rm -rf $(VENV) .cache/e2b-sdk $(NODE_INTEROP)/node_modules .pytest_cache .mypy_cache .ruff_cache
