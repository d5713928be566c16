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
VERSITYGW_VERSION := v1.8.0
FAKE_GCS_SERVER_VERSION := v1.56.1
AZURITE_VERSION := 3.37.0

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BRANCH ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
BUILT_AT ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -X github.com/flotilla-ci/flotilla/host/version.Version=$(VERSION) \
           -X github.com/flotilla-ci/flotilla/host/version.Revision=$(REVISION) \
           -X github.com/flotilla-ci/flotilla/host/version.Branch=$(BRANCH) \
           -X github.com/flotilla-ci/flotilla/host/version.BuiltAt=$(BUILT_AT)
TEST_FLAGS ?= -timeout 20m

PLUGINS := $(wildcard plugins/*/cmd/fleeting-plugin-*)

.PHONY: help build plugins test test-go bench generate generate-check lint check-deps tidy-check tools clean publish-plugins screenshots

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Build the runner and nesting binaries into bin/
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/runner ./host/cmd/runner
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/nesting ./nesting/cmd/nesting

plugins: ## Build every plugin binary into bin/
	@for p in $(PLUGINS); do echo "build $$p"; $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/$$(basename $$p) ./$$p || exit 1; done

test: lint check-deps tidy-check generate-check test-go ## Lint, check boundaries, go.mod and generated code, run all tests

test-go: test-tools ## Run the Go tests only (starts dockerd for the Docker tests when it can)
	@scripts/test-services.sh
	$(GO) test $(TEST_FLAGS) ./...

# The screenshots in docs/img are what the browser tests (TestBrowser…, in host/runcmd and
# host/simulate) see in headless Chromium (Debian's chromium): the operator page against a
# running `runner run`, and the simulate report. The tests save them through
# host/internal/browsertest, into FLOTILLA_SCREENSHOTS when it is set (else a temporary
# directory), so regenerating them is running those tests; commit the changed PNGs.
# FLOTILLA_REQUIRE_BROWSER=1 makes a missing Chromium fail instead of skip, so this
# target never "succeeds" without writing the images.
screenshots: ## Regenerate the screenshots in docs/img from the browser tests
	FLOTILLA_REQUIRE_BROWSER=1 FLOTILLA_SCREENSHOTS=$(CURDIR)/docs/img $(GO) test -run 'Browser' -count=1 ./host/runcmd/ ./host/simulate/

# The chaos suite (plugins/internal/chaos): 50 seeded trials per plugin × fault, the table
# written into docs/reliability.md. The test binary runs directly, so progress and failed
# trials show as they come. CHAOS_SEED=n replays a run; CHAOS_FLAGS adds flags (e.g.
# -chaos.parallel=4, -chaos.trials=5). `make test` runs its short mode.
.PHONY: chaos
chaos: ## Run the chaos suite (50 trials per plugin × fault) and write its table into docs/reliability.md
	$(GO) test -c -o $(BIN)/chaos.test ./plugins/internal/chaos
	@status=0; $(BIN)/chaos.test -test.count=1 -test.timeout=120m -test.run '^TestChaos$$' \
	  -chaos.full -chaos.report=$(CURDIR)/docs/reliability.md $(if $(CHAOS_SEED),-chaos.seed=$(CHAOS_SEED)) $(CHAOS_FLAGS) || status=$$?; \
	  sed -n '/<!-- chaos:begin -->/,/<!-- chaos:end -->/p' docs/reliability.md; exit $$status

# Every fuzz target, one after the other, FUZZTIME each (go test runs one -fuzz target
# per package at a time). New crashers land in the package's testdata/fuzz/ and then
# fail `make test` until fixed.
FUZZTIME ?= 1m
FUZZ_TARGETS := ./host/config:FuzzLoad ./host/jobs/pipeline:FuzzParse ./host/state:FuzzOpenState \
	./host/plugins:FuzzParseReference ./sdk/internal/wire:FuzzDecodeResponses ./host/executors/dockerauth:FuzzParse
.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 1m; issue-grade runs use FUZZTIME=10m)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg; done

# Benchmarks that replay a whole scenario per iteration (cloud ramps, trace replays)
# run once; the rest take 100 samples, enough for their p50/p99 figures.
SCENARIO_BENCH_PKGS := ./host/executors/instance ./plugins/aws ./plugins/azure ./plugins/googlecloud ./host/simulate ./connector/rttbench ./nesting/qemu ./host/pool ./host/coord
BENCH_PKGS = $(filter-out $(SCENARIO_BENCH_PKGS:./%=github.com/flotilla-ci/flotilla/%),$(shell $(GO) list ./...))

bench: ## Run the benchmarks (B1-B13 of the README's performance table) and print their reports into bench.out
	-@scripts/test-services.sh # B8 needs a Docker Engine; it skips without one
	set -o pipefail; { $(GO) test -run '^$$' -bench . -benchmem -benchtime 100x $(BENCH_FLAGS) $(BENCH_PKGS) && \
	  $(GO) test -run '^$$' -bench . -benchmem -benchtime 1x $(BENCH_FLAGS) $(wildcard $(SCENARIO_BENCH_PKGS)); } 2>&1 | tee bench.out

# The qemu backend's guest image (nesting/guestimage): built offline from the host's Debian
# packages (needs root, mmdebstrap, e2fsprogs), cached by the hash of its recipe in
# ${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/vm-images and linked as VM_IMAGE into VM_IMAGES_DIR.
# `make test` needs no separate step: nesting/vmtest builds (or reuses) the same image.
VM_IMAGE ?= debian
VM_IMAGES_DIR ?=
.PHONY: vm-image
vm-image: ## Build the qemu backend's guest image (VM_IMAGE=debian, VM_IMAGES_DIR=…)
	$(GO) run ./nesting/cmd/nesting image build --name $(VM_IMAGE) $(if $(VM_IMAGES_DIR),--images-dir $(VM_IMAGES_DIR))

# Publishing: `make publish-plugins REGISTRY=registry.example.com/team/plugins
# SIGNING_KEY=key.pem [PLUGIN_VERSION=1.2.3] [PUSH_FLAGS=--plain-http]` cross-builds each
# plugin for PLATFORMS, packages it as a signed multi-platform OCI artifact with
# `runner fleeting package`, and uploads it with `runner fleeting push`.
PLATFORMS ?= linux/amd64 linux/arm64 darwin/arm64
PLUGIN_VERSION ?= 0.1.0

publish-plugins: build ## Package, sign and push every plugin (REGISTRY=…, SIGNING_KEY=…)
	@test -n "$(REGISTRY)" -a -n "$(SIGNING_KEY)" || { echo "set REGISTRY=<registry>/<repository> and SIGNING_KEY=<ed25519 PEM> (runner fleeting keygen)"; exit 1; }
	@set -e; for p in $(PLUGINS); do n=$${p##*/fleeting-plugin-}; rm -rf dist/$$n; \
	  for plat in $(PLATFORMS); do os=$${plat%/*}; arch=$${plat#*/}; \
	    GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o dist/$$n/$$os/$$arch/plugin ./$$p; done; \
	  $(BIN)/runner fleeting package --name $$n --version $(PLUGIN_VERSION) --dist dist/$$n --key $(SIGNING_KEY) -o dist/$$n.tar; \
	  $(BIN)/runner fleeting $(PUSH_FLAGS) push dist/$$n.tar $(REGISTRY)/$$n:$(PLUGIN_VERSION); done

tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc

# The object stores the cache tests run on loopback (host/cachestore/storetest): an
# S3-compatible gateway, a GCS emulator and Azure's own emulator, Azurite. Pinned,
# installed once into .tools.
.PHONY: test-tools
test-tools: $(TOOLS)/versitygw $(TOOLS)/fake-gcs-server $(TOOLS)/azurite-blob
$(TOOLS)/versitygw:
	GOBIN=$(TOOLS) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)
$(TOOLS)/fake-gcs-server:
	GOBIN=$(TOOLS) $(GO) install github.com/fsouza/fake-gcs-server@$(FAKE_GCS_SERVER_VERSION)
$(TOOLS)/azurite-blob:
	npm install --silent --no-audit --no-fund --prefix $(CURDIR)/.tools/node azurite@$(AZURITE_VERSION)
	mkdir -p $(TOOLS) && ln -sf ../node/node_modules/.bin/azurite-blob $@

$(TOOLS)/buf:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

generate: tools ## Regenerate protocol code from proto/ (buf, local plugins only)
	buf lint
	rm -rf sdk/internal/pb nesting/internal/pb
	buf generate
	buf generate --template buf.gen.nesting.yaml

generate-check: generate ## Fail if the committed generated code is out of date
	@git diff --exit-code -- sdk/internal/pb nesting/internal/pb || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- sdk/internal/pb nesting/internal/pb)" || { git status --porcelain -- sdk/internal/pb nesting/internal/pb; echo "untracked generated files: run 'make generate' and commit"; exit 1; }

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^sdk/internal/pb/\|^nesting/internal/pb/')); test -z "$$out" || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...

tidy-check: ## Fail if go.mod or go.sum is not what `go mod tidy` makes of it
	@$(GO) mod tidy -diff || { echo "tidy-check: go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

check-deps: ## Enforce package boundaries (sdk imports nothing of ours; host links no cloud SDK and no test code; plugins stay apart)
	@scripts/check-deps.sh

clean:
	rm -rf $(BIN) bench.out dist
