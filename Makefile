# helical-workflow: the entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

env: ## create/refresh every environment (.venvs/*) and the Debian packages
	scripts/bootstrap.sh runner airflow tools checkov system docker

image: ## build the CPU runner image with a private Docker engine (cached; scripts/docker-image.sh)
	scripts/bootstrap.sh docker && scripts/docker-image.sh

demo: ## run the whole embedding workflow end to end on embedded defaults
	scripts/demo.sh

test: ## install everything and run the whole test suite
	scripts/test.sh

test-runner: ## runner tests only
	scripts/test.sh runner

test-workflow: ## DAG/Airflow tests only
	scripts/test.sh workflow

test-infra: ## terraform/charts/k8s/docker validation only
	scripts/test.sh infra

test-stack: ## local stack + observability tests only
	scripts/test.sh stack

lint: ## ruff over all Python
	.venvs/runner/bin/ruff check . && .venvs/runner/bin/ruff format --check .

.PHONY: help env image demo test test-runner test-workflow test-infra test-stack lint
