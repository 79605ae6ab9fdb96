# The two commands of the README. Everything else is a building block of these.
.PHONY: demo test bootstrap lint down test-pure test-emulator test-prefect test-kube test-e2e test-terraform

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
CLUSTERS ?= 2
PYTEST := .venv/bin/pytest -q

demo: bootstrap  ## set up, start the sandbox and run the main job on it
	.venv/bin/meshflow sandbox up --clusters $(CLUSTERS)
	.venv/bin/meshflow install --env sandbox

# Everything, as CI runs it: lint, types, import contracts, the whole suite with branch coverage
# of flows/, tasks/ and blocks/, the raises under tasks/ no test reaches (each must be listed
# with its reason in tests/unreached_raises.txt), and no process left running.
test: bootstrap lint  ## set up and run every check and test
	$(PYTEST) --cov --cov-report=term
	.venv/bin/python scripts/unreached-raises.py
	bash scripts/leak-check.sh

# One tier at a time (tests/conftest.py marks the tiers). Each test is in exactly one target:
# the first of e2e, kube, prefect, emulator, terraform that it is marked with; unmarked tests
# are pure.
test-pure: bootstrap  ## tests that start no process and need no server
	$(PYTEST) -m "not (kube or emulator or prefect or e2e or terraform)"

test-emulator: bootstrap  ## tests of and with the Azure emulator (and openssl)
	$(PYTEST) -m "emulator and not (kube or prefect or e2e)"

test-prefect: bootstrap  ## tests with a real Prefect server
	$(PYTEST) -m "prefect and not (kube or e2e)"

test-terraform: bootstrap  ## the real Terraform binary on infra/ (no server)
	$(PYTEST) -m "terraform and not (kube or emulator or prefect or e2e)"

test-kube: bootstrap  ## tests with the local control planes
	$(PYTEST) -m "kube and not e2e"
	bash scripts/leak-check.sh

test-e2e: bootstrap  ## whole flows, the sandbox and the CLI
	$(PYTEST) -m e2e
	bash scripts/leak-check.sh

bootstrap:
	@bash scripts/bootstrap.sh

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

down:
	.venv/bin/meshflow sandbox down
