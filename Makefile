# The project's verbs. Each target creates .venv/ and installs into it on first use, so a
# fresh machine needs only Python >= 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench bench-waiting soak lint format docs clean lock

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its dev tools

demo: $(STAMP)  ## run one campaign end to end on embedded services and a local SMTP sink
	APP_ENV=demo $(BIN)/survey-worker demo

test: $(STAMP)  ## run the whole test suite on real Postgres, Redis and SMTP
	$(BIN)/pytest

# Postfix's smtp-sink and smtp-source live in sbin, which is not on every user's PATH.
SBIN_PATH := $(PATH):/usr/sbin:/usr/local/sbin

bench: $(STAMP)  ## measure throughput end to end (BENCH_ARGS="--recipients 1000000 --json")
	@if ! PATH="$(SBIN_PATH)" command -v smtp-sink >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections || true; \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix \
	      || echo "bench: installing postfix failed; using the built-in sink"; \
	  else \
	    echo "bench: smtp-sink not found (Debian package postfix); using the built-in sink"; \
	  fi; \
	fi
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-waiting: $(STAMP)  ## a worker's CPU while half a campaign waits for its window (BENCH_ARGS="--recipients N --seconds S")
	$(BIN)/python -m bench.waiting $(BENCH_ARGS)

# The randomized fault campaign of the test suite, for 30 minutes (FAULT_SEED=N replays a
# run); it prints the seed, every fault as it is injected and a summary line of figures.
FAULT_SECONDS ?= 1800
soak: $(STAMP)  ## the fault campaign for 30 minutes (FAULT_SECONDS=N, FAULT_SEED=N)
	FAULT_SECONDS=$(FAULT_SECONDS) $(BIN)/pytest tests/faults/test_fault_campaign.py \
	  -s -q -p no:cacheprovider

# The image installs exactly these versions, by hash (requirements.lock); refresh it after a
# change to the dependencies in pyproject.toml (tests/test_lock.py checks the two agree).
lock: $(STAMP)  ## pin every runtime dependency, with hashes, into requirements.lock
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url \
	  --no-emit-find-links --output-file requirements.lock pyproject.toml

lint: $(STAMP)  ## ruff, formatting, mypy --strict and the import layers (import-linter)
	$(BIN)/ruff check worker tests
	$(BIN)/ruff format --check worker tests
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix worker tests
	$(BIN)/ruff format worker tests

docs: $(STAMP)  ## build the documentation site into .site/ (strict: a broken link fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir .site

clean:  ## stop embedded services and delete .venv, .data and demo output
	-$(BIN)/python -c 'from pathlib import Path; from worker.dev import embedded; [embedded.discard(Path(d)) for d in (".data", ".data/test", ".data/bench")]'
	rm -rf $(VENV) .data demo-mail .site *.egg-info
