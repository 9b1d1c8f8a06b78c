# tanren — the two commands of the README are `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.PHONY: help install tools build stages lint up down status demo test test-unit test-scale schema clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

node_modules/.tanren-installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: node_modules/.tanren-installed tools build ## install Node packages and tools, build

tools: ## install temporal, the test server, tctl, MinIO, mc and uv into the per-user cache
	infra/install-tools

build: node_modules/.tanren-installed ## compile the TypeScript into dist/
	npx tsc -p tsconfig.json

stages: ## create (or reuse) the Python environment of the stage programs
	infra/install-stages >/dev/null

lint: node_modules/.tanren-installed ## ESLint, Prettier, tsc, ruff and pyright over the repository (infra/lint --fix applies the mechanical fixes)
	infra/lint

schema: build ## re-export the JSON Schemas from the zod schemas
	node dist/schemas/export-json-schema.js

up: tools ## start Temporal (with UI) and MinIO
	infra/dev up

down: ## stop workers and services (data is kept under .tanren/)
	infra/dev down

status: ## show what is running
	infra/dev status

demo: install stages ## start everything and run the reference pipeline
	infra/demo

test: node_modules/.tanren-installed tools stages ## build, then every test, fast ones first (TANREN_TEST_GROUPS=... for some of unit python workflow services e2e)
	TANREN_TEST_BUILD=1 infra/test

test-unit: build stages ## the unit tests only: no services, under half a minute
	npm run --silent test:unit

test-scale: install stages ## 5,000-stage fan-out and fan-in, 2,000-stage chains (regular and local), the stage limit, 1,024 swept trials side by side, a report past its timeline budget (own services, like test)
	TANREN_TEST_FILES="$$(echo dist/test/scale/*.test.js)" infra/test

clean: ## remove build output (keeps .tanren/ run data and the tool cache)
	rm -rf dist node_modules/.tanren-installed
