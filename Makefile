SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# sqlc: on PATH, else where `go install` puts it.
SQLC ?= $(shell command -v sqlc 2>/dev/null || echo "$$(go env GOPATH)/bin/sqlc")
SQLC_INSTALL := CGO_ENABLED=0 go install github.com/sqlc-dev/sqlc/cmd/sqlc@v1.31.1

# Shell snippet: TEST_DATABASE_URL from the environment, else a local database
# from scripts/devdb.sh, else empty so internal/testdb uses testcontainers.
TEST_DB := export TEST_DATABASE_URL="$${TEST_DATABASE_URL:-$$(scripts/devdb.sh agentsessions_test || true)}"; \
	if [ -z "$$TEST_DATABASE_URL" ]; then \
		echo "make: no local PostgreSQL; tests will start one with testcontainers (needs Docker)" >&2; \
	fi;

# Every package of the four modules (the library at the root, cmd,
# mcpsessions and otelsessions), which go.work puts in one workspace.
PKGS := ./... ./cmd/... ./mcpsessions/... ./otelsessions/...
MODULES := . cmd mcpsessions otelsessions

.PHONY: help generate verify check-sqlc test test-race test-containers fuzz migrate lint build up down

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## .*$$' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "\033[36m%-16s\033[0m %s\n", $$1, $$2}'

generate: check-sqlc ## Regenerate db/ from queries/ and migrations/ with sqlc
	$(SQLC) generate

verify: check-sqlc ## Fail if generated code (sqlc) or go.mod/go.sum are stale
	$(SQLC) diff
	@for m in $(MODULES); do (set -x; cd $$m && GOWORK=off go mod tidy -diff); done

check-sqlc:
	@command -v "$(SQLC)" >/dev/null 2>&1 || { \
		echo "sqlc not found (looked for '$(SQLC)'). Install it with:" >&2; \
		echo "  $(SQLC_INSTALL)" >&2; \
		exit 1; }

test: ## Run all tests of every module (., cmd, mcpsessions, otelsessions) with the race detector
	@$(TEST_DB) echo "TEST_DATABASE_URL=$$TEST_DATABASE_URL" >&2; set -x; go test -race -count=1 $(PKGS)

test-race: ## Repeat the concurrency tests (Invariant|Concurrent) 5 times with -race
	@$(TEST_DB) echo "TEST_DATABASE_URL=$$TEST_DATABASE_URL" >&2; set -x; go test -race -count=5 -run 'Invariant|Concurrent' $(PKGS)

test-containers: ## Integration tests on PostgreSQL containers (testcontainers; starts Docker here if needed)
	scripts/containers.sh test -race -count=1

# A count of inputs (Nx), not a duration: a time-boxed run on a loaded machine
# can end in the fuzzer's own "context deadline exceeded" without any finding.
FUZZTIME ?= 30000x
fuzz: ## Run each fuzz target for FUZZTIME (default 30000x inputs, a few seconds); new finds land in the Go cache
	@for target in $$(go test -list '^Fuzz' ./sessions | grep '^Fuzz'); do \
		(set -x; go test ./sessions -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME)); \
	done

migrate: ## Apply migrations to DATABASE_URL, else to a local database from scripts/devdb.sh
	@url="$${DATABASE_URL:-}"; [ -n "$$url" ] || url="$$(scripts/devdb.sh agentsessions)"; \
		set -x; go run ./cmd/agentsessions migrate up --database-url "$$url"

lint: ## Check formatting (gofmt) and run go vet
	@files="$$(gofmt -l .)"; if [ -n "$$files" ]; then \
		echo "gofmt: these files need formatting (run gofmt -w):" >&2; echo "$$files" >&2; exit 1; fi
	go vet $(PKGS)

build: ## Build bin/agentsessions
	CGO_ENABLED=0 go build -o bin/agentsessions ./cmd/agentsessions

.PHONY: compose-smoke
compose-smoke: ## Bring up the compose cluster (3 serve replicas + nginx), test it end to end, remove it
	scripts/compose-smoke.sh

up: ## Start PostgreSQL in Docker (host port AGENTSESSIONS_PG_PORT, default 5432) and apply migrations
	scripts/containers.sh up postgres migrate

down: ## Stop the Docker stack and delete its data volume
	scripts/containers.sh down

# Short default; e.g. make bench BENCH_FLAGS="--duration 10s --compare --plot bench.svg"
BENCH_FLAGS ?= --duration 2s --compare
BENCH ?= go run ./cmd/agentsessions bench
.PHONY: bench
bench: ## Benchmark the store vs pgbench and Redis (BENCH_FLAGS; DATABASE_URL, else a local database from scripts/devdb.sh)
	@url="$${DATABASE_URL:-}"; [ -n "$$url" ] || url="$$(scripts/devdb.sh agentsessions_bench)"; \
		set -x; $(BENCH) --database-url "$$url" $(BENCH_FLAGS)
