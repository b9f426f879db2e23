# helsegate: Caddy with the helseid handler.
GO      ?= go
BIN     := bin/helsegate

.PHONY: build run demo test bench bench-instructions bench-micro fmt vet clean

build:
	$(GO) build -o $(BIN) ./cmd/helsegate

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
# integration/cmd/hgbench).
bench: build
	$(GO) build -o bin/hgbench ./integration/cmd/hgbench
	./bin/hgbench -bin $(BIN) $(BENCH_FLAGS)

# The same sites and requests counted in instructions instead of CPU time:
# the gateway process under valgrind --tool=callgrind (GOMAXPROCS=1), the
# instructions of exactly -instr-requests requests per site after a warm-up,
# the verify floor of each algorithm counted the same way, and system calls
# per request from strace -c. Needs valgrind (and strace, optional). The last
# line is the ES256 ratio. About 5 minutes; see docs/performance.md.
bench-instructions: build
	$(GO) build -o bin/hgbench ./integration/cmd/hgbench
	./bin/hgbench -bin $(BIN) -instructions $(BENCH_FLAGS)

# The go-test micro benchmarks beside the hot paths.
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem ./authz/ ./cache/ ./caddymodule/

fmt:
	gofmt -l -w .

clean:
	rm -rf bin
