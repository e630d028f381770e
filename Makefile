# paxmr developer and demo entry points. Everything runs from the project's .venv.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv lint test test-fast demo bench testbed-up testbed-down clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check paxmr tests testbed ansible/roles
	$(BIN)/ruff format --check paxmr tests testbed ansible/roles
	$(BIN)/mypy  # paxmr and tests (files in pyproject.toml)
	$(BIN)/mypy --strict ansible/roles/paxmr/files/wheelhouse.py
	cd ansible && ../$(BIN)/ansible-lint --profile production

## Every tier: unit, simulator, integration, cluster (local processes) and deploy (systemd hosts,
## needs root). The tiers on the test hosts (tests/deploy, tests/testbed) spend most of their time
## waiting on the hosts (ssh, systemd, Ansible's retries), so every other tier runs beside them in
## one pytest run, their output kept in build/ and shown after. The two runs are every test once.
HOST_TIERS  := tests/deploy tests/testbed
test: venv
	@mkdir -p build; \
	  pytest_run() { $(BIN)/pytest "$$@" $(PYTEST_ARGS); rc=$$?; \
	    if [ $$rc = 5 ]; then echo "make test: pytest $$* collected no tests" >&2; fi; return $$rc; }; \
	  pytest_run $(HOST_TIERS) >build/test-hosts.log 2>&1 & hosts=$$!; \
	  pytest_run tests $(foreach t,$(HOST_TIERS),--ignore=$(t)); rest=$$?; \
	  wait $$hosts; hosts=$$?; echo "==== $(HOST_TIERS) (ran beside the above) ===="; \
	  cat build/test-hosts.log; \
	  echo "make test: exit $$rest (unit, simulator, integration, cluster), $$hosts ($(HOST_TIERS))"; \
	  [ $$rest = 0 ] && [ $$hosts = 0 ]

## Unit and integration tiers only: no root needed.
test-fast: venv
	$(BIN)/pytest -m "not deploy" $(PYTEST_ARGS)

demo: venv
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/demo

bench: venv
	$(BIN)/paxmr bench wordcount --size 256MiB
	$(BIN)/paxmr bench replicate

testbed-up: venv
	$(BIN)/python testbed/testbed.py up

testbed-down: venv
	$(BIN)/python testbed/testbed.py down

clean:
	rm -rf build dist .demo .local-cluster
