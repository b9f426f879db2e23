# helsegate: Caddy with the helseid handler.
GO      ?= go
BIN     := bin/helsegate
# helsegate's version, printed by `helsegate version` and list-modules.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/helsegate/helsegate/internal/version.version=$(VERSION)
# Static binaries (Go's own resolver, no libc), for the container image as for
# bin/helsegate; and one setting for every target, so that the image, the
# tests and build share the build cache.
CGO_ENABLED ?= 0
export CGO_ENABLED

.PHONY: build image xcaddy run demo test bench bench-instructions bench-micro soak fmt vet clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/helsegate

# The container image (Containerfile): a static binary, the build host's CA
# certificates and Caddyfile.production on scratch, collected in bin/image/
# (the build context). With podman, else docker. IMAGE names the tag;
# BASE=gcr.io/distroless/static-debian12:nonroot where a registry is
# reachable (see docs/deploy.md).
BUILDER ?= $(shell command -v podman || command -v docker)
IMAGE   ?= localhost/helsegate:$(VERSION)
CA_CERTS ?= /etc/ssl/certs/ca-certificates.crt
image:
	@test -n "$(BUILDER)" || { echo "make image: neither podman nor docker found"; exit 1; }
	rm -rf bin/image && mkdir -p bin/image/data bin/image/config
	$(GO) build -ldflags '$(LDFLAGS) -s -w' -o bin/image/helsegate ./cmd/helsegate
	cp $(CA_CERTS) bin/image/ca-certificates.crt
	cp Caddyfile.production bin/image/Caddyfile
	printf 'root:x:0:0:root:/root:/sbin/nologin\nhelsegate:x:65532:65532:helsegate:/data:/sbin/nologin\n' > bin/image/passwd
	printf 'root:x:0:\nhelsegate:x:65532:\n' > bin/image/group
	$(BUILDER) build $(if $(findstring podman,$(BUILDER)),--format docker --layers=false) -f Containerfile \
		--build-arg VERSION=$(VERSION) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
		$(if $(BASE),--build-arg BASE=$(BASE)) \
		-t $(IMAGE) bin/image

# Caddy built by xcaddy from this checkout, the way a Caddy user adds a
# plugin (docs/deploy.md): bin/caddy has Caddy's standard modules and helseid,
# not dev, call or helsegate version. Needs the Go module proxy; not part of
# make test.
XCADDY        ?= $(GO) run github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5
CADDY_VERSION ?= v2.11.9
xcaddy:
	$(XCADDY) build $(CADDY_VERSION) \
		--with github.com/helsegate/helsegate/caddymodule \
		--replace github.com/helsegate/helsegate=$(CURDIR) \
		--output bin/caddy

# Runs the gateway on Caddyfile.example with a HelseID simulator, a registry
# simulator and a stand-in upstream, on loopback (no Redis needed).
run: build
	./$(BIN) dev --config Caddyfile.example

# A scripted tour against `make run` (in another terminal).
demo: build
	BIN=./$(BIN) ./scripts/demo

# Every test: unit, Caddyfile, fuzz seeds and the end-to-end tests against the
# built binary and real Redis (HELSEGATE_TEST_REDIS, default 127.0.0.1:6379).
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

# The gateway against plain reverse_proxy in one helsegate process, on this
# machine: requests/s, latency, CPU per request from /proc and the proof
# verification floor, for ES256, PS256, RS256 and Bearer clients. Needs a
# Redis (HELSEGATE_TEST_REDIS, default 127.0.0.1:6379; else it starts
# redis-server if installed). The last line is the ES256 ratio. Flags via
# BENCH_FLAGS, e.g. BENCH_FLAGS='-cpuprofile es256.pprof' (see
# cmd/hgbench).
bench: build
	$(GO) build -o bin/hgbench ./cmd/hgbench
	./bin/hgbench -bin $(BIN) $(BENCH_FLAGS)

# A soak of two gateway replicas sharing one Redis under faults (Redis
# restarts, registry 503/hang, key rotations, issuer down), about 6 minutes:
# answers per phase, recovery after each Redis restart, RSS and goroutines,
# and last wrong_200s=N (exit status 1 when N > 0). Needs redis-server
# installed; starts its own. Flags via SOAK_FLAGS, e.g. SOAK_FLAGS='-duration
# 10m -rate 200' (see cmd/hgsoak). Not part of make test.
soak: build
	$(GO) build -o bin/hgsoak ./cmd/hgsoak
	./bin/hgsoak -bin $(BIN) $(SOAK_FLAGS)

# The same sites and requests counted in instructions instead of CPU time:
# the gateway process under valgrind --tool=callgrind (GOMAXPROCS=1), the
# instructions of exactly -instr-requests requests per site after a warm-up,
# the verify floor of each algorithm counted the same way, and system calls
# per request from strace -c. Needs valgrind (and strace, optional). The last
# line is the ES256 ratio. About 5 minutes; see docs/performance.md.
bench-instructions: build
	$(GO) build -o bin/hgbench ./cmd/hgbench
	./bin/hgbench -bin $(BIN) -instructions $(BENCH_FLAGS)

# The go-test micro benchmarks beside the hot paths.
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem ./authz/ ./cache/ ./caddymodule/

fmt:
	gofmt -l -w .

clean:
	rm -rf bin
