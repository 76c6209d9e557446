# The two set-up commands: `make demo` (the whole loop once) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/cifake-dev.tar.gz
NEWGEN ?= ../shared/data/newgen-dev.tar.gz
PYTEST_ARGS ?=

.PHONY: install demo test lint audit stop serve up lock clean browser tools

$(BIN)/aidetect: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

install: $(BIN)/aidetect

demo: install
	$(BIN)/aidetect demo --data "$(DATA)" --newgen "$(NEWGEN)"

test: install browser tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The web page tests drive Debian's chromium (Playwright's own browser download is not used).
browser:
	@test -x /usr/bin/chromium || { \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# promtool, amtool and haproxy for tests/deploy (Debian's prometheus, prometheus-alertmanager and
# haproxy packages; hadolint and actionlint come from the dev extra). Only the binaries are used.
tools:
	@command -v promtool >/dev/null && command -v amtool >/dev/null && command -v haproxy >/dev/null || { \
	  echo "installing promtool, amtool and haproxy for the deploy tests (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager haproxy >/dev/null; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Known vulnerabilities in the locked dependencies (pip-audit, in its own .venv-audit; accepted
# findings: deploy/accepted-vulnerabilities.txt). Needs the package index's vulnerability data,
# so it is not part of `make test`: a new advisory must not turn an unchanged commit red.
audit:
	$(PYTHON) deploy/audit.py

stop:
	$(BIN)/aidetect stop

serve: install
	$(BIN)/aidetect serve

# The long-running local stack: Prefect server + UI, the deployments, a worker per pool,
# serving. Ctrl-C stops all of it.
up: install
	$(BIN)/aidetect up

lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^aidetect' > requirements.lock.tmp
	( echo '# Every package, resolved together on Python 3.11 (pip freeze of `pip install -e .[dev]`).'; \
	  echo '# The Makefile installs with `-c requirements.lock`; regenerate with `make lock`.'; \
	  cat requirements.lock.tmp ) > requirements.lock && rm requirements.lock.tmp

clean:
	rm -rf $(VENV) .venv-audit .aidetect .pytest_cache
