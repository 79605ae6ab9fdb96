# The two commands of the README. Everything else is a building block of these.
.PHONY: demo test bootstrap lint down

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
CLUSTERS ?= 2

demo: bootstrap  ## set up, start the sandbox and run the main job on it
	.venv/bin/meshflow sandbox up --clusters $(CLUSTERS)
	.venv/bin/meshflow install --env sandbox

test: bootstrap lint  ## set up and run every check and test
	.venv/bin/pytest -q
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
