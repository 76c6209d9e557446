# The two set-up commands: `make demo` (the whole loop once) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/cifake-dev.tar.gz
NEWGEN ?= ../shared/data/newgen-dev.tar.gz
PYTEST_ARGS ?=

.PHONY: install demo test lint stop serve lock clean

$(BIN)/aidetect: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

install: $(BIN)/aidetect

demo: install
	$(BIN)/aidetect demo --data "$(DATA)" --newgen "$(NEWGEN)"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

stop:
	$(BIN)/aidetect stop

serve: install
	$(BIN)/aidetect serve

lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^aidetect' > requirements.lock.tmp
	( echo '# Every package, resolved together on Python 3.11 (pip freeze of `pip install -e .[dev]`).'; \
	  echo '# The Makefile installs with `-c requirements.lock`; regenerate with `make lock`.'; \
	  cat requirements.lock.tmp ) > requirements.lock && rm requirements.lock.tmp

clean:
	rm -rf $(VENV) .aidetect .pytest_cache
