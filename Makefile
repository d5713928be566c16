# Flotilla — autoscaling CI runner host. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(PATH)

# Code generators, pinned: `make generate` installs exactly these with `go install`.
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/flotilla-ci/flotilla/host/version.Version=$(VERSION) \
           -X github.com/flotilla-ci/flotilla/host/version.Revision=$(REVISION)
TEST_FLAGS ?= -timeout 20m

PLUGINS := $(wildcard plugins/*/cmd/fleeting-plugin-*)

.PHONY: help build plugins test test-go bench generate generate-check lint check-deps tools clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Build the runner binary into bin/runner
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/runner ./host/cmd/runner

plugins: ## Build every plugin binary into bin/
	@for p in $(PLUGINS); do echo "build $$p"; $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/$$(basename $$p) ./$$p || exit 1; done

test: lint check-deps generate-check test-go ## Lint, check boundaries and generated code, run all tests

test-go: ## Run the Go tests only (starts dockerd for the Docker tests when it can)
	@scripts/test-services.sh
	$(GO) test $(TEST_FLAGS) ./...

bench: ## Run the benchmarks (B1-B7 of the reference) and print their reports
	set -o pipefail; $(GO) test -run '^$$' -bench . -benchmem $(BENCH_FLAGS) ./... 2>&1 | tee bench.out

tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc

$(TOOLS)/buf:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

generate: tools ## Regenerate protocol code from proto/ (buf, local plugins only)
	buf lint
	rm -rf sdk/internal/pb
	buf generate

generate-check: generate ## Fail if the committed generated code is out of date
	@git diff --exit-code -- sdk/internal/pb || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- sdk/internal/pb)" || { git status --porcelain -- sdk/internal/pb; echo "untracked generated files: run 'make generate' and commit"; exit 1; }

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^sdk/internal/pb/')); test -z "$$out" || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...

check-deps: ## Enforce package boundaries (sdk imports nothing of ours; host links no cloud SDK)
	@scripts/check-deps.sh

clean:
	rm -rf $(BIN) bench.out
